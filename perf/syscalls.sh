#!/usr/bin/env bash
# syscalls: the gateway's system calls per turn (strace -c attached to it), with the load of
# perf/instructions.sh (WebSocket, 16 sessions, 8 KB frames, 40 turns/s): warm-up, attach,
# 10 s of load, detach. strace slows what it traces; at this rate every turn still completes.
#   perf/syscalls.sh [--secs S] [--rate N] [--payload BYTES]
# PERF_BIN / PERF_TOOLS_BIN as in lib.sh. Needs strace (Debian's package is installed if missing).
# Prints each syscall's calls (and errors, e.g. a recv's EAGAIN) in all and per turn.
set -euo pipefail
SECS=10 RATE=40 PAYLOAD=8000
source "$(dirname "$0")/lib.sh"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --secs) SECS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --payload) PAYLOAD=$2; shift 2 ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
command -v strace >/dev/null ||
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq strace) >&2
build
start_mock
start_gateway 1
drive() { # secs
  "$TOOLS" load --url "$GW_URL" --key "$KEY" --connections 16 --duration-secs "$1" \
    --payload-bytes "$PAYLOAD" --rate "$RATE" >"$WORK/load.txt" 2>&1
}
drive 3
strace -f -c -o "$WORK/strace.txt" -p "$GW_PID" 2>/dev/null &
STRACE=$!
sleep 1
drive "$SECS"
turns=$(grep -oE "turns ok [0-9]+" "$WORK/load.txt" | grep -oE "[0-9]+")
sleep 0.5
kill -INT "$STRACE"
wait "$STRACE" 2>/dev/null || true
echo "turns $turns"
# strace -c rows: % time, seconds, usecs/call, calls, [errors,] syscall.
awk -v t="$turns" '
  $4 ~ /^[0-9]+$/ && $NF != "total" {
    printf "%-16s %7d calls %6.2f per turn  errors %d\n", $NF, $4, $4 / t, (NF == 6 ? $5 : 0)
  }
  $NF == "total" { printf "%-16s %7d calls %6.2f per turn\n", "total", $4, $4 / t }' "$WORK/strace.txt"
