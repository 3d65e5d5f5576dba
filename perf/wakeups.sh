#!/usr/bin/env bash
# wakeups: where a turn's latency goes between the processes, nginx against shardgate. With the
# same open-loop load running through each relay in turn, `perf record -a` takes the scheduler's
# switches and wakeups and every sendto entry and recvfrom exit on every CPU for a few seconds;
# perf/wake_chain.py then follows each turn from the client's send of its request to the
# client's read of the answer (client -> relay -> mock -> relay -> client) and prints each hop's
# latency, and how often the relay read the request on the CPU the client sent it from. A hop
# that crosses CPUs wakes the other CPU; on a VM whose idle vCPU halts (no guest halt-polling)
# that wake is an interrupt the host delivers, tens of microseconds. The tracepoints cost a few
# microseconds a turn themselves, the same for both relays: compare, do not read absolutes.
# Turns are told apart by time only (the load is open-loop and sparse), so a hop now and then
# belongs to a neighbouring session's turn.
# RELAY_CPUS / PEER_CPUS place the processes as in lib.sh.
#   perf/wakeups.sh [--rate N] [--connections N] [--payload BYTES] [--secs S] [--shards N]
#                   [--max-conn-age S] [--pin] [--targets "nginx shardgate"] [--kernel-path]
# Defaults: the long-sessions shape (16 sessions, 400 turns/s, 8 KB frames, chained turns,
# max_conn_age 3 s); --pin sets `[server] pin_shards = true`; --kernel-path splits the way to
# the relay's wakeup at the packet and at io_uring's task work. PERF_BIN / PERF_TOOLS_BIN as in
# lib.sh. Needs perf (Debian's linux-perf is installed if missing).
set -euo pipefail
WK_RATE=400 WK_CONNS=16 WK_PAYLOAD=8000 WK_SECS=2 WK_SHARDS="" WK_TARGETS="nginx shardgate"
GW_UPSTREAM_EXTRA="max_conn_age_secs = 3"
source "$(dirname "$0")/lib.sh"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rate) WK_RATE=$2; shift 2 ;;
    --connections) WK_CONNS=$2; shift 2 ;;
    --payload) WK_PAYLOAD=$2; shift 2 ;;
    --secs) WK_SECS=$2; shift 2 ;;
    --shards) WK_SHARDS=$2; shift 2 ;;
    --max-conn-age) GW_UPSTREAM_EXTRA="max_conn_age_secs = $2"; shift 2 ;;
    --pin) GW_SERVER_EXTRA="pin_shards = true"; shift ;;
    --targets) WK_TARGETS=$2; shift 2 ;;
    --kernel-path) WK_KERNEL_PATH=1; shift ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
# Two shards, or one per CPU of RELAY_CPUS (lib.sh), as nginx's workers.
WK_SHARDS=${WK_SHARDS:-$SHARDS}
command -v perf >/dev/null ||
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf) >&2
build
start_mock
start_gateway "$WK_SHARDS"
start_nginx
EVENTS="syscalls:sys_enter_sendto,syscalls:sys_exit_recvfrom,sched:sched_switch,sched:sched_wakeup"
# --kernel-path: also the receiving socket's packet and io_uring's task work queued for it, to
# split the way to a relay's wakeup (one more tracepoint on shardgate's path than on nginx's).
if [[ -n ${WK_KERNEL_PATH:-} ]]; then EVENTS+=",net:netif_receive_skb,io_uring:io_uring_task_add"; fi

# Runs the load against a URL, long enough to trace its middle; its pid in LOAD_PID.
drive() { # url key
  "${ON_PEER_CPUS[@]}" "$TOOLS" load --url "$1" --key "$2" --connections "$WK_CONNS" --duration-secs $((WK_SECS + 4)) \
    --payload-bytes "$WK_PAYLOAD" --rate "$WK_RATE" --store-false-chain >"$WORK/load.txt" 2>&1 &
  LOAD_PID=$!
}
drive "$GW_URL" "$KEY"
wait "$LOAD_PID" || true
echo "load: $WK_CONNS sessions, $WK_RATE turns/s, $WK_PAYLOAD B frames; ${WK_SECS} s traced per relay"
echo "gateway: $WK_SHARDS shards${GW_SERVER_EXTRA:+, $GW_SERVER_EXTRA}"
for target in $WK_TARGETS; do
  if [[ $target == nginx ]]; then url=$NGINX_URL key=sk-mock; else url=$GW_URL key=$KEY; fi
  drive "$url" "$key"
  sleep 2
  perf record -a -e "$EVENTS" --exclude-perf -o "$WORK/$target.data" -- sleep "$WK_SECS" \
    >/dev/null 2>&1 || true
  wait "$LOAD_PID" || true
  perf script -i "$WORK/$target.data" >"$WORK/$target.txt" 2>/dev/null
  echo "== $target ($(grep -E '^ttft' "$WORK/load.txt" | awk '{print "load ttft p50 " $3 " us"}'))"
  python3 "$PERF_DIR/wake_chain.py" "$WORK/$target.txt" "$WK_PAYLOAD"
done
