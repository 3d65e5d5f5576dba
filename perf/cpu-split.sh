#!/usr/bin/env bash
# cpu-split: where a relay's CPU per turn goes, user space against kernel, for nginx and
# shardgate over the same load (per-thread utime/stime from /proc, no perf needed). Kernel time
# is mostly the socket work both relays share; the difference in user time is the relay's own.
#   perf/cpu-split.sh [--bin PATH] [--rounds N] [--secs S] [--wire ws|http] [--max-conn-age S]
#                     -- [shardgate load options]
#   e.g. perf/cpu-split.sh --max-conn-age 3 -- --connections 16 --rate 400 --payload-bytes 8000 --store-false-chain
# Prints per target and round: turns, user µs/turn, sys µs/turn, TTFT and event p50/p99.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN="" ROUNDS=1 SECS=6 WIRE=ws AGE=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --bin) BIN=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --secs) SECS=$2; shift 2 ;;
    --wire) WIRE=$2; shift 2 ;;
    --max-conn-age) AGE=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
if [[ -z $BIN ]]; then
  (cd "$ROOT" && cargo build --release --quiet)
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/shardgate"
fi
command -v nginx >/dev/null || { echo "needs nginx (apt-get install nginx)" >&2; exit 2; }
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [[ -f $WORK/nginx.pid ]] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
MOCK=$(free_port) GW=$(free_port) ADMIN=$(free_port) NGINX=$(free_port)
"$BIN" mock-upstream --listen "127.0.0.1:$MOCK" >"$WORK/mock.log" 2>&1 &
PIDS+=($!)
cat >"$WORK/gw.toml" <<TOML
[server]
listen = "127.0.0.1:$GW"
shards = 2
admin_listen = "127.0.0.1:$ADMIN"
stats_interval_ms = 200
[upstream]
queue_per_conn = 64
${AGE:+max_conn_age_secs = $AGE}
[[client_keys]]
key = "sk-perf"
id = "perf"
[[accounts]]
id = "mock"
base_url = "http://127.0.0.1:$MOCK/v1"
api_key = "sk-mock"
max_conns = 4096
[log]
level = "warn"
[usage]
path = "$WORK/usage.jsonl"
TOML
"$BIN" serve --config "$WORK/gw.toml" >"$WORK/gw.log" 2>&1 &
GW_PID=$!
PIDS+=("$GW_PID")
mkdir -p "$WORK"/{body,proxy,fastcgi,uwsgi,scgi}
sed -e "s#@WORK@#$WORK#g" -e "s#@MOCK_PORT@#$MOCK#g" -e "s#@NGINX_PORT@#$NGINX#g" \
  "$ROOT/perf/nginx.conf.tmpl" >"$WORK/nginx.conf"
nginx -c "$WORK/nginx.conf" -p "$WORK"
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$GW/healthz" >/dev/null 2>&1 && [[ -f $WORK/nginx.pid ]] && break
  sleep 0.1
done
# Clock ticks (user, sys) summed over every thread of the given processes.
ticks() {
  local u=0 s=0 a b
  for p in "$@"; do
    for t in /proc/"$p"/task/*; do
      read -r a b < <(awk '{print $14, $15}' "$t/stat")
      u=$((u + a)) s=$((s + b))
    done
  done
  echo "$u $s"
}
hz=$(getconf CLK_TCK)
for round in $(seq "$ROUNDS"); do
  for target in nginx shardgate; do
    if [[ $target == nginx ]]; then port=$NGINX key=sk-mock procs=$(pgrep -f "nginx: worker" | tr '\n' ' ')
    else port=$GW key=sk-perf procs=$GW_PID; fi
    url="ws://127.0.0.1:$port/v1/responses"
    [[ $WIRE == http ]] && url="http://127.0.0.1:$port/v1/responses"
    # shellcheck disable=SC2086
    read -r u0 s0 < <(ticks $procs)
    "$BIN" load --url "$url" --key "$key" --duration-secs "$SECS" "$@" >"$WORK/load.txt" 2>&1
    # shellcheck disable=SC2086
    read -r u1 s1 < <(ticks $procs)
    turns=$(grep -oE "turns ok [0-9]+" "$WORK/load.txt" | grep -oE "[0-9]+$")
    lat=$(awk '$1 == "ttft" {printf "ttft p50 %s p99 %s  ", $3, $6}
      $1 == "event" {printf "event p50 %s p99 %s", $4, $7}' "$WORK/load.txt")
    awk -v t="$target" -v r="$round" -v n="$turns" -v du=$((u1 - u0)) -v ds=$((s1 - s0)) -v hz="$hz" -v l="$lat" \
      'BEGIN { printf "%-9s round %s  turns %6d  user %6.1f us/turn  sys %6.1f us/turn  %s\n", t, r, n, du * 1e6 / hz / n, ds * 1e6 / hz / n, l }'
  done
done
