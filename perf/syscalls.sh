#!/usr/bin/env bash
# syscalls: what each relay asks of the kernel per turn, nginx against shardgate over the same
# load: every syscall by name (`strace -f -c`, attached for the middle of the run; failed calls,
# such as a recv answering EAGAIN, counted apart) and context switches per turn (voluntary and
# not, every thread, from /proc). strace slows the relay it is attached to, so the load is
# open-loop (--rate) and the counts, not the times, are the result; the context switches and
# minor page faults (a first touch of a fresh page; `minflt`, field 10 of every thread's stat)
# come from a second run without strace, the relay's first (a young gateway).
#   perf/syscalls.sh [--wire ws|http] [--rate N] [--secs S] [--connections N] [--payload BYTES]
#                    [--shards N] [--max-conn-age S] [-- more `shardgate load` options]
# Defaults: the long-sessions shape (16 sessions, 400 turns/s, 8 KB frames, chained turns),
# --secs 8 (at least 4).
# PERF_BIN / PERF_TOOLS_BIN as in lib.sh. Needs strace (Debian's package is installed if missing).
set -euo pipefail
SC_WIRE=ws SC_RATE=400 SC_SECS=8 SC_CONNS=16 SC_PAYLOAD=8000 SC_SHARDS=2
LOAD_ARGS=(--store-false-chain)
source "$(dirname "$0")/lib.sh"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --wire) SC_WIRE=$2; shift 2 ;;
    --rate) SC_RATE=$2; shift 2 ;;
    --secs) SC_SECS=$2; shift 2 ;;
    --connections) SC_CONNS=$2; shift 2 ;;
    --payload) SC_PAYLOAD=$2; shift 2 ;;
    --shards) SC_SHARDS=$2; shift 2 ;;
    --max-conn-age) GW_UPSTREAM_EXTRA="max_conn_age_secs = $2"; shift 2 ;;
    --) shift; LOAD_ARGS=("$@"); break ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
# strace attaches 1 s into the second run and detaches 2 s before its end.
if ! [[ $SC_SECS =~ ^[0-9]+$ ]] || ((SC_SECS < 4)); then
  echo "--secs must be a whole number of seconds, at least 4 (strace runs for secs - 3)" >&2
  exit 2
fi
[[ $SC_WIRE == http ]] && LOAD_ARGS=()
command -v strace >/dev/null ||
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq strace) >&2
build
start_mock
start_gateway "$SC_SHARDS"
start_nginx

# Runs the load against a target for SC_SECS, in the background; its pid in LOAD_PID.
drive() { # url key
  "$TOOLS" load --url "$1" --key "$2" --connections "$SC_CONNS" --duration-secs "$SC_SECS" \
    --payload-bytes "$SC_PAYLOAD" --rate "$SC_RATE" ${LOAD_ARGS[@]+"${LOAD_ARGS[@]}"} >"$WORK/load.txt" 2>&1 &
  LOAD_PID=$!
}
# Context switches so far, every thread of the given processes.
switches() {
  local p t=0
  for p in "$@"; do
    t=$((t + $(cat /proc/"$p"/task/*/status | awk '/ctxt_switches/ {s += $2} END {print s}')))
  done
  echo "$t"
}
# Minor page faults so far, every thread of the given processes (a thread that exited since is
# not counted; the relays keep theirs).
minor_faults() {
  local p t=0
  for p in "$@"; do
    t=$((t + $(cat /proc/"$p"/task/*/stat | sed 's/.*) //' | awk '{s += $8} END {print s}')))
  done
  echo "$t"
}

window=$((SC_SECS - 3))
echo "load: $SC_CONNS sessions over $SC_WIRE, $SC_RATE turns/s, $SC_PAYLOAD B frames; strace for ${window} s"
for target in nginx shardgate; do
  if [[ $target == nginx ]]; then url=$NGINX_URL key=sk-mock pids=$(nginx_workers | tr '\n' ' ')
  else url=$GW_URL key=$KEY pids=$GW_PID; fi
  [[ $SC_WIRE == http ]] && url=${url/ws:/http:}
  # shellcheck disable=SC2086
  c0=$(switches $pids)
  # shellcheck disable=SC2086
  f0=$(minor_faults $pids)
  drive "$url" "$key"
  wait "$LOAD_PID" || true
  # shellcheck disable=SC2086
  c1=$(switches $pids)
  # shellcheck disable=SC2086
  f1=$(minor_faults $pids)
  turns=$(turns_ok "$WORK/load.txt")
  drive "$url" "$key"
  sleep 1
  attach=()
  for p in $pids; do attach+=(-p "$p"); done
  timeout -s INT "$window" strace -f -c -o "$WORK/strace-$target.txt" "${attach[@]}" 2>/dev/null || true
  wait "$LOAD_PID" || true
  python3 - "$target" "$WORK/strace-$target.txt" "$((SC_RATE * window))" "$turns" "$((c1 - c0))" "$((f1 - f0))" <<'PY'
import sys
target, path, window_turns, turns, switches, faults = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
rows = []
for line in open(path):
    f = line.split()
    if len(f) < 5 or not f[0][0].isdigit() or f[-1] == "total":
        continue
    calls, errors = int(f[3]), (int(f[4]) if len(f) == 6 else 0)
    rows.append((calls / window_turns, errors / window_turns, f[-1]))
rows.sort(reverse=True)
total = sum(r[0] for r in rows)
per_turn = lambda n: n / max(turns, 1)
print(f"\n{target}: {total:.2f} syscalls per turn, {per_turn(switches):.2f} context switches per turn, "
      f"{per_turn(faults):.3f} minor faults per turn")
for calls, errors, name in rows:
    if calls >= 0.005:
        failed = f"  ({errors:.2f} failed)" if errors else ""
        print(f"  {name:<20} {calls:6.2f}{failed}")
PY
done
