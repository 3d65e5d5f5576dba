# Shared plumbing for perf scenarios: builds the release binary, starts the mock upstream, the
# gateway and nginx (installing Debian's nginx if missing) on free loopback ports, and stops
# everything it started on exit. Source it; then use $MOCK_URL, $NGINX_URL, $GW_URL, $KEY.
set -euo pipefail
PERF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$PERF_DIR/.." && pwd)
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  if [[ -f "$WORK/nginx.pid" ]]; then kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

build() {
  (cd "$ROOT" && cargo build --release --quiet)
  BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/shardgate"
}

wait_http() { # url
  for _ in $(seq 1 100); do curl -fsS "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "did not come up: $1" >&2; return 1
}

start_mock() { # extra mock args...
  MOCK_PORT=$(free_port)
  "$BIN" mock-upstream --listen "127.0.0.1:$MOCK_PORT" "$@" >"$WORK/mock.log" 2>&1 &
  PIDS+=($!)
  MOCK_PID=$!
  wait_http "http://127.0.0.1:$MOCK_PORT/_mock/stats"
  MOCK_URL="ws://127.0.0.1:$MOCK_PORT/v1/responses"
}

start_gateway() { # shards
  GW_PORT=$(free_port)
  KEY=sk-perf
  cat >"$WORK/gw.toml" <<TOML
[server]
listen = "127.0.0.1:$GW_PORT"
shards = ${1:-2}
[upstream]
queue_per_conn = 64
[[client_keys]]
key = "$KEY"
id = "perf"
[[accounts]]
id = "mock"
base_url = "http://127.0.0.1:$MOCK_PORT/v1"
api_key = "sk-mock"
max_conns = 4096
[log]
level = "warn"
[usage]
path = "$WORK/usage.jsonl"
TOML
  "$BIN" serve --config "$WORK/gw.toml" >"$WORK/gw.log" 2>&1 &
  PIDS+=($!)
  GW_PID=$!
  wait_http "http://127.0.0.1:$GW_PORT/healthz"
  GW_URL="ws://127.0.0.1:$GW_PORT/v1/responses"
}

start_nginx() {
  if ! command -v nginx >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx) >&2
  fi
  NGINX_PORT=$(free_port)
  mkdir -p "$WORK"/{body,proxy,fastcgi,uwsgi,scgi}
  sed -e "s#@WORK@#$WORK#g" -e "s#@MOCK_PORT@#$MOCK_PORT#g" -e "s#@NGINX_PORT@#$NGINX_PORT#g" \
    "$PERF_DIR/nginx.conf.tmpl" >"$WORK/nginx.conf"
  nginx -c "$WORK/nginx.conf" -p "$WORK"
  for _ in $(seq 1 50); do [[ -f "$WORK/nginx.pid" ]] && break; sleep 0.1; done
  NGINX_URL="ws://127.0.0.1:$NGINX_PORT/v1/responses"
}

# CPU seconds (user+sys) a process has used so far.
cpu_secs() { awk '{print ($14 + $15) / 100}' "/proc/$1/stat"; }
# Peak RSS in KiB.
peak_rss_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
