#!/usr/bin/env bash
# realtime: Realtime API sessions (`/v1/realtime`) with audio-sized events both ways. Each turn
# appends --payload bytes of input audio in 4800-byte chunks (100 ms of 24 kHz PCM16 each, 6.4 KB
# of base64 per event), commits, asks for an audio response, and the mock answers with as many
# 4800-byte audio deltas (plus their transcript deltas) up to `response.done`. The same load runs
# direct to the mock, through nginx (a raw WebSocket relay) and through shardgate (which reads
# every event's type, counts audio durations and bills each response.done), alternating rounds.
# TTFT is response.create sent → first delta; evt is the one-way latency of every upstream event.
# Stops by itself.
#
#   perf/realtime.sh [--rounds 3] [--connections 16] [--secs 5] [--payload 48000] [--shards 2]
#                    [--targets "direct nginx shardgate"]
set -euo pipefail
NAME=${NAME:-realtime}
WIRE=realtime CHAIN="" PAYLOAD=${PAYLOAD:-48000} CONNS=${CONNS:-16} IDLE=0
source "$(dirname "$0")/lib.sh"
parse_common "$@"
compare_main
