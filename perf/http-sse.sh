#!/usr/bin/env bash
# http-sse: the HTTP twin — one `POST /v1/responses` with "stream": true per turn on keep-alive
# connections, events read as SSE — direct to the mock vs nginx (plain HTTP proxy, unbuffered) vs
# shardgate's HTTP front door. No chaining (store=false responses cannot be chained over HTTP) and
# no warm-ups (HTTP refuses generate:false). If shardgate answers 404/405 the summary says its
# build has no HTTP front door yet and leaves its row out.
#   perf/http-sse.sh [steady.sh options]
set -euo pipefail
NAME=http-sse WIRE=http CHAIN="" CONNS=32 SECS=4 PAYLOAD=30000 IDLE=0
source "$(dirname "$0")/lib.sh"
parse_common "$@"
if [[ -n $WARMUP || -n $CHAIN ]]; then echo "http-sse takes no --warmup and no chaining" >&2; exit 2; fi
compare_main
