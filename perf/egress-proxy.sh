#!/usr/bin/env bash
# egress-proxy: what an account's egress proxy adds to a turn. Three gateways over one mock
# upstream: "direct", "connect" (the account's proxy is pproxy serving HTTP CONNECT with
# user/password) and "socks5h" (pproxy serving SOCKS5 with user/password, the proxy resolving the
# host); the same load, one WebSocket client running TURNS turns, against each in alternating
# rounds, in two modes:
#   pooled: the upstream connection (and its tunnel) is reused by every turn, as in production;
#   dial:   max_conn_age_secs = 0.001, so every turn dials a new upstream connection (TCP to the
#           proxy, the proxy handshake, the proxy's TCP to upstream, the WebSocket upgrade).
# Prints TTFT p50/p90/p99 (request sent -> first delta, µs; medians over rounds) per target and
# mode, and what each proxy adds over direct at p50. pproxy (PyPI) is installed into
# target/test-tools/pproxy when missing. Stops by itself.
#
#   perf/egress-proxy.sh [--rounds 3] [--turns 200] [--debug]   (--debug: the debug binary, no
#                                                               release build)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=3
TURNS=200
PROFILE=release
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --turns) TURNS=$2; shift 2 ;;
    --debug) PROFILE=debug; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # url
  for _ in $(seq 1 100); do curl -fsS "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "did not come up: $1" >&2; return 1
}
wait_port() { # port
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "did not come up: port $1" >&2; return 1
}

if [[ $PROFILE == release ]]; then
  (cd "$ROOT" && cargo build --release --quiet)
else
  (cd "$ROOT" && cargo build --quiet)
fi
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE/shardgate"

PPROXY_DIR="$ROOT/target/test-tools/pproxy"
if [[ ! -f "$PPROXY_DIR/pproxy/__init__.py" ]]; then
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --no-cache-dir --disable-pip-version-check \
    --target "$PPROXY_DIR" 'pproxy==2.7.9' >&2
fi

MOCK_PORT=$(free_port)
"$BIN" mock-upstream --listen "127.0.0.1:$MOCK_PORT" >"$WORK/mock.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$MOCK_PORT/_mock/stats"

start_pproxy() { # scheme -> port on stdout
  local port
  port=$(free_port)
  PYTHONPATH="$PPROXY_DIR" python3 -m pproxy --auth 0 -l "$1://127.0.0.1:$port#perf:perf-pw" \
    >"$WORK/pproxy-$1.log" 2>&1 &
  PIDS+=($!)
  wait_port "$port"
  echo "$port"
}
HTTP_PROXY_PORT=$(start_pproxy http)
SOCKS_PROXY_PORT=$(start_pproxy socks5)

declare -A GW_PORTS
start_gateway() { # name mode proxy-line
  local port admin
  port=$(free_port)
  admin=$(free_port)
  local age=""
  [[ $2 == dial ]] && age="max_conn_age_secs = 0.001"
  cat >"$WORK/gw-$1-$2.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
shards = 1
admin_listen = "127.0.0.1:$admin"
[upstream]
$age
[[client_keys]]
key = "sk-perf"
id = "perf"
[[accounts]]
id = "mock"
base_url = "http://localhost:$MOCK_PORT/v1"
api_key = "sk-mock"
max_conns = 64
$3
[log]
level = "warn"
[usage]
path = "$WORK/usage-$1-$2.jsonl"
TOML
  "$BIN" serve --config "$WORK/gw-$1-$2.toml" >"$WORK/gw-$1-$2.log" 2>&1 &
  PIDS+=($!)
  wait_http "http://127.0.0.1:$port/healthz"
  GW_PORTS[$1-$2]=$port
}

TARGETS=(direct connect socks5h)
MODES=(pooled dial)
for mode in "${MODES[@]}"; do
  start_gateway direct "$mode" ""
  start_gateway connect "$mode" "proxy = \"http://perf:perf-pw@127.0.0.1:$HTTP_PROXY_PORT\""
  start_gateway socks5h "$mode" "proxy = \"socks5h://perf:perf-pw@127.0.0.1:$SOCKS_PROXY_PORT\""
done

for round in $(seq 1 "$ROUNDS"); do
  for mode in "${MODES[@]}"; do
    for target in "${TARGETS[@]}"; do
      "$BIN" load --url "ws://127.0.0.1:${GW_PORTS[$target-$mode]}/v1/responses" --key sk-perf \
        --connections 1 --turns "$TURNS" --json-out "$WORK/$mode-$target-$round.json" >/dev/null
    done
  done
done

python3 - "$WORK" "$ROUNDS" "$TURNS" "$PROFILE" <<'PY'
import json, statistics, sys
work, rounds, turns, profile = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
print(f"egress-proxy: {turns} turns x {rounds} rounds per target, 1 connection, {profile} build")
print(f"{'mode':7} {'target':8} {'ttft p50':>9} {'p90':>8} {'p99':>8} {'failed':>6} {'+p50 vs direct':>15}")
for mode in ("pooled", "dial"):
    base = None
    for target in ("direct", "connect", "socks5h"):
        reps = [json.load(open(f"{work}/{mode}-{target}-{r}.json")) for r in range(1, rounds + 1)]
        med = lambda k: statistics.median(r["ttft_us"][k] for r in reps)
        failed = sum(r["turns_failed"] for r in reps)
        p50 = med("p50")
        if base is None:
            base = p50
        added = "" if target == "direct" else f"{p50 - base:+.0f} us"
        print(f"{mode:7} {target:8} {p50:9.0f} {med('p90'):8.0f} {med('p99'):8.0f} {failed:6} {added:>15}")
PY
