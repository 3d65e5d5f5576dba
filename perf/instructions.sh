#!/usr/bin/env bash
# instructions: user-space instructions per turn, shardgate against nginx, each under valgrind's
# callgrind while the same low-rate load runs through it. Instruction counts do not move with
# the machine's load the way CPU seconds do, so two builds (or shardgate and nginx) compare on a
# noisy 2-core box; they do not see cache misses, which is what a cold wake pays on top.
#   perf/instructions.sh [--wire ws|http] [--rate N] [--secs S] [--connections N]
#                        [--payload BYTES] [--shards N] [--targets "nginx shardgate"] [--top N]
#                        [--cache-sim]
#                        [-- more `shardgate load` options]
# PERF_BIN / PERF_TOOLS_BIN as in lib.sh. Needs valgrind (Debian's package is installed if missing).
# Prints instructions per turn per target, the shardgate/nginx ratio, and the top functions by
# their own instructions per turn; the raw callgrind files stay in the output directory.
# --cache-sim also simulates the caches (callgrind's model of this CPU's, the traced process
# alone in them) and prints first-level instruction-cache misses per turn: how much code a turn
# touches beyond what stays cached, which is what code layout changes.
set -euo pipefail
NAME=instructions WIRE=ws RATE=40 SECS=10 CONNS=16 PAYLOAD=8000 SHARDS=1 TOP=30
TARGETS="nginx shardgate"
LOAD_ARGS=()
CACHE_SIM=no
source "$(dirname "$0")/lib.sh"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --wire) WIRE=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --secs) SECS=$2; shift 2 ;;
    --connections) CONNS=$2; shift 2 ;;
    --payload) PAYLOAD=$2; shift 2 ;;
    --shards) SHARDS=$2; shift 2 ;;
    --targets) TARGETS=$2; shift 2 ;;
    --top) TOP=$2; shift 2 ;;
    --cache-sim) CACHE_SIM=yes; shift ;;
    --) shift; LOAD_ARGS=("$@"); break ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
command -v valgrind >/dev/null ||
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind) >&2
build
OUT="$ROOT/perf/out/$NAME-$(date -u +%Y%m%dT%H%M%S)"
mkdir -p "$OUT"
start_mock

# Runs the load against a URL for `secs`, and prints the turns it completed.
drive() { # url key secs
  "$TOOLS" load --url "$1" --key "$2" --connections "$CONNS" --duration-secs "$3" \
    --payload-bytes "$PAYLOAD" --rate "$RATE" ${LOAD_ARGS[@]+"${LOAD_ARGS[@]}"} >"$WORK/load.txt" 2>&1
  turns_ok "$WORK/load.txt"
}

# Warms a target up, zeroes its counters, drives the measured load, dumps: `$OUT/<target>.cg`.
measure() { # target pid url key
  local target=$1 pid=$2 url=$3 key=$4 turns
  drive "$url" "$key" 3 >/dev/null
  callgrind_control -z "$pid" >/dev/null
  turns=$(drive "$url" "$key" "$SECS")
  callgrind_control -d measured "$pid" >/dev/null
  for _ in $(seq 1 50); do
    ls "$OUT/$target".*.cg.* >/dev/null 2>&1 && break
    sleep 0.2
  done
  echo "$turns" >"$OUT/$target.turns"
}

CG=(valgrind --tool=callgrind --dump-instr=no --separate-threads=no --cache-sim=$CACHE_SIM)
scheme=ws
[[ $WIRE == http ]] && scheme=http
for target in $TARGETS; do
  case "$target" in
    shardgate)
      GW_PORT=$(free_port)
      ADMIN_PORT=$(free_port)
      gateway_toml "$SHARDS" >"$WORK/gw.toml"
      "${CG[@]}" --callgrind-out-file="$OUT/shardgate.%p.cg" "$BIN" serve --config "$WORK/gw.toml" \
        >"$WORK/gw.log" 2>&1 &
      pid=$!
      PIDS+=("$pid")
      for _ in $(seq 1 300); do curl -fsS "http://127.0.0.1:$GW_PORT/healthz" >/dev/null 2>&1 && break; sleep 0.2; done
      measure shardgate "$pid" "$scheme://127.0.0.1:$GW_PORT/v1/responses" sk-perf
      ;;
    nginx)
      command -v nginx >/dev/null ||
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx) >&2
      NGINX_PORT=$(free_port)
      mkdir -p "$WORK"/{body,proxy,fastcgi,uwsgi,scgi}
      # One process in the foreground (no master, no daemon), so callgrind follows the worker.
      { echo "daemon off; master_process off;"
        sed -e "s#@WORK@#$WORK#g" -e "s#@MOCK_PORT@#$MOCK_PORT#g" -e "s#@NGINX_PORT@#$NGINX_PORT#g" -e "s#@WORKERS@#1#g" \
          "$PERF_DIR/nginx.conf.tmpl"; } >"$WORK/nginx.conf"
      "${CG[@]}" --callgrind-out-file="$OUT/nginx.%p.cg" nginx -c "$WORK/nginx.conf" -p "$WORK" \
        >"$WORK/nginx.log" 2>&1 &
      pid=$!
      PIDS+=("$pid")
      for _ in $(seq 1 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$NGINX_PORT") 2>/dev/null && break
        sleep 0.2
      done
      measure nginx "$pid" "$scheme://127.0.0.1:$NGINX_PORT/v1/responses" sk-mock
      ;;
    *) echo "unknown target $target" >&2; exit 2 ;;
  esac
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
done

python3 "$PERF_DIR/callgrind_per_turn.py" "$OUT" "$TOP" $TARGETS | tee "$OUT/summary.txt"
echo "callgrind files: $OUT"
