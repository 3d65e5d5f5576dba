#!/usr/bin/env bash
# Unmodified real clients through the gateway against the mock upstream. Two gateways share one
# mock: "ws" uses the upstream WebSocket pool (the default), "http" has `force_http = true`.
#   1. openai-python `client.responses.connect()`: a warm-up and chained store=false turns (ws);
#   2. openai-python `responses.create(stream=True)` and non-stream over POST (ws);
#   3. Codex CLI `codex exec` with `supports_websockets = true`, then `exec resume --last` (ws);
#   4. Codex CLI `codex exec` with a provider WITHOUT `supports_websockets` (POST + SSE) (ws);
#   5. Codex CLI over WebSocket to the "http" gateway: its warm-ups are answered by the gateway
#      and never reach the HTTP upstream (which refuses `generate`);
#   6. openai-python stream and non-stream to the "http" gateway (HTTP upstream end to end);
#   7. Codex CLI running a real tool call (`exec_command`, emitted by the mock's `tool=`
#      directive), then `exec resume --last` (ws);
#   8. openai-python: a store=false tool-call round trip, then new WebSocket connections that
#      continue the chain by previous_response_id, each on the same upstream connection (ws);
#   9. the README's quick-start Python snippet and its Codex provider entry, as written (only the
#      address is this run's): the text between the `real-clients: ... begin/end` markers;
#  10. openai-python `client.realtime.connect()`: a text turn and an audio turn over
#      `/v1/realtime`, each billed by one `realtime` usage record with upstream's counts (ws).
# Each check asserts on the mock's own counters. Installs the clients if missing, into
# target/real-clients/ (pip --target and an npm prefix; nothing global: not the system Python,
# not ~/.cache or ~/.npm). The last line is `real-clients: N passed, M failed`.
set -uo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [[ -n "${KEEP_WORK:-}" ]] || rm -rf "$work"
}
trap cleanup EXIT

clients="${SHARDGATE_CLIENTS_DIR:-$PWD/target/real-clients}"
pydir="$clients/python"
export PYTHONPATH="$pydir${PYTHONPATH:+:$PYTHONPATH}"
if [[ ! -d "$pydir/openai" ]]; then
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --no-cache-dir --disable-pip-version-check \
    --target "$pydir" \
    'openai[realtime]' >&2
fi
codex="$clients/node/node_modules/.bin/codex"
if [[ ! -x "$codex" ]]; then
  mkdir -p "$clients/node"
  npm install --silent --no-audit --no-fund --no-update-notifier --prefix "$clients/node" \
    --cache "$clients/npm-cache" @openai/codex >&2
fi

cargo build --quiet || exit 1
bin="${CARGO_TARGET_DIR:-target}/debug/shardgate"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mock_port=$(free_port)
gw_port=$(free_port)
gw_http_port=$(free_port)
admin_port=$(free_port)

"$bin" mock-upstream --listen "127.0.0.1:$mock_port" --require-key sk-upstream-real >"$work/mock.log" 2>&1 &
pids+=($!)
gateway_config() { # port, extra [upstream] lines, extra [server] lines
  cat <<TOML
[server]
listen = "127.0.0.1:$1"
shards = 2
${3:-}
[upstream]
$2
[[client_keys]]
key = "sk-gw-real"
id = "real-clients"
[[client_keys]]
key = "sk-gw-local"
id = "readme"
[[accounts]]
id = "mock"
base_url = "http://127.0.0.1:$mock_port/v1"
api_key = "sk-upstream-real"
max_conns = 8
models = ["gpt-5"]
[usage]
path = "$work/usage-$1.jsonl"
spool_dir = "$work/usage-spool-$1"
TOML
}
gateway_config "$gw_port" "" "admin_listen = \"127.0.0.1:$admin_port\"
stats_interval_ms = 100" >"$work/gw.toml"
gateway_config "$gw_http_port" "force_http = true" >"$work/gw-http.toml"
"$bin" serve --config "$work/gw.toml" >"$work/gw.log" 2>&1 &
pids+=($!)
"$bin" serve --config "$work/gw-http.toml" >"$work/gw-http.log" 2>&1 &
pids+=($!)
up=0
for _ in $(seq 1 100); do
  if curl -fsS "http://127.0.0.1:$gw_port/healthz" >/dev/null 2>&1 &&
     curl -fsS "http://127.0.0.1:$gw_http_port/healthz" >/dev/null 2>&1 &&
     curl -fsS "http://127.0.0.1:$mock_port/_mock/stats" >/dev/null 2>&1; then up=1; break; fi
  sleep 0.1
done
if [[ $up != 1 ]]; then
  echo "gateways or mock did not come up"; cat "$work/mock.log" "$work/gw.log" "$work/gw-http.log"
  echo "real-clients: 0 passed, 1 failed"; exit 1
fi

stats() { curl -fsS "http://127.0.0.1:$mock_port/_mock/stats"; }
field() { stats | python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

passed=0
failed=0
check() { # name, command...
  local name=$1; shift
  echo "== $name"
  if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAILED: $name"; fi
}

# Asserts on the mock counters: `expect FIELD OP VALUE` (OP: -eq -ge -gt).
expect() {
  local v; v=$(field "$1")
  if [ "$v" "$2" "$3" ]; then return 0; fi
  echo "mock $1 = $v, expected $2 $3"; return 1
}

export CODEX_HOME="$work/codex-home"
mkdir -p "$CODEX_HOME" "$work/proj"
# The README's text between `real-clients: NAME begin` and `real-clients: NAME end`, with the
# README's address replaced by port $2 (code fences dropped).
readme_block() { # name, port
  sed -n "/real-clients: $1 begin/,/real-clients: $1 end/p" README.md | sed '1d;$d' |
    grep -v '^```' | sed "s#127.0.0.1:8080#127.0.0.1:$2#g"
}
export SHARDGATE_API_KEY=sk-gw-local
codex_config() { # port, supports_websockets (the README's provider entry, as written)
  readme_block codex-provider "$1" |
    sed "s/^supports_websockets = .*/supports_websockets = $2/" >"$CODEX_HOME/config.toml"
  grep -q "^supports_websockets = $2" "$CODEX_HOME/config.toml" &&
    grep -q "127.0.0.1:$1/v1" "$CODEX_HOME/config.toml" ||
    { echo "the README has no Codex provider entry to run"; return 1; }
}
codex_exec() { # log, args...
  local log=$1; shift
  (cd "$work/proj" && timeout 120 "$codex" exec --skip-git-repo-check "$@" </dev/null >"$log" 2>&1) ||
    { cat "$log"; echo "codex exec failed"; return 1; }
  grep -q "lorem" "$log" || { cat "$log"; echo "codex printed no model text"; return 1; }
}

readme_python() {
  local before; before=$(field ws_turns_total)
  local out; out=$(readme_block python-snippet "$gw_port" | bash 2>&1) || { echo "$out"; return 1; }
  echo "$out"
  grep -q "^resp_" <<<"$out" && grep -q "\['gpt-5'\]" <<<"$out" ||
    { echo "the README snippet printed no response id or model list"; return 1; }
  expect ws_turns_total -eq $((before + 1))
}

python_ws() {
  local before; before=$(field ws_turns_total)
  python3 scripts/real_clients/python_ws.py "http://127.0.0.1:$gw_port/v1" sk-gw-real &&
    expect ws_turns_total -ge $((before + 4)) && expect previous_response_not_found_total -eq 0
}

python_http_ws_pool() {
  local ws http; ws=$(field ws_turns_total); http=$(field http_requests_total)
  python3 scripts/real_clients/python_http.py "http://127.0.0.1:$gw_port/v1" sk-gw-real &&
    expect ws_turns_total -eq $((ws + 2)) && expect http_requests_total -eq "$http"
}

codex_ws() {
  local before; before=$(field ws_turns_total)
  codex_config "$gw_port" true || return 1
  codex_exec "$work/codex1.log" "say hi" &&
    codex_exec "$work/codex2.log" resume --last "and again" &&
    expect ws_turns_total -gt "$before" && expect previous_response_not_found_total -eq 0
}

codex_tool_then_resume() {
  local before; before=$(field ws_turns_total)
  codex_config "$gw_port" true || return 1
  codex_exec "$work/codex5.log" "run it [[mock:tool=exec_command]]" || return 1
  grep -q "echo mock" "$work/codex5.log" || { cat "$work/codex5.log"; echo "codex ran no tool call"; return 1; }
  codex_exec "$work/codex6.log" resume --last "and again" &&
    expect ws_turns_total -ge $((before + 4)) && expect previous_response_not_found_total -eq 0 &&
    expect tool_output_not_found_total -eq 0
}

python_ws_reconnect() {
  python3 scripts/real_clients/python_ws_reconnect.py "http://127.0.0.1:$gw_port/v1" sk-gw-real &&
    expect previous_response_not_found_total -eq 0 && expect tool_output_not_found_total -eq 0 || return 1
  # Where the reconnections landed is the kernel's choice: the counters say it, for the record.
  sleep 0.3
  curl -fsS "http://127.0.0.1:$admin_port/metrics" | grep -E '^shardgate_(handoff|affinity)_total' || true
}

codex_sse() {
  local before; before=$(field ws_turns_total)
  codex_config "$gw_port" false || return 1
  local posts; posts=$(grep -c 'request[^ ]*"stream"' "$work/gw.log")
  codex_exec "$work/codex3.log" "say hi over http" &&
    expect ws_turns_total -gt "$before" && expect previous_response_not_found_total -eq 0 || return 1
  local now; now=$(grep -c 'request[^ ]*"stream"' "$work/gw.log")
  [[ $now -gt $posts ]] || { echo "the gateway logged no streaming POST turn for codex"; return 1; }
}

codex_ws_to_http_upstream() {
  local http; http=$(field http_turns_total)
  codex_config "$gw_http_port" true || return 1
  codex_exec "$work/codex4.log" "say hi via http upstream" &&
    expect http_turns_total -gt "$http" && expect http_generate_rejected_total -eq 0 &&
    expect previous_response_not_found_total -eq 0 || return 1
  grep -q "warm-up answered by the gateway" "$work/gw-http.log" ||
    { echo "codex sent no warm-up for the gateway to answer"; return 1; }
}

python_http_upstream() {
  local http; http=$(field http_turns_total)
  python3 scripts/real_clients/python_http.py "http://127.0.0.1:$gw_http_port/v1" sk-gw-real &&
    expect http_turns_total -eq $((http + 2)) && expect http_generate_rejected_total -eq 0
}

python_realtime() {
  local sessions; sessions=$(field realtime_sessions_total)
  local records; records=$(grep -c '"request_type":"realtime"' "$work/usage-$gw_port.jsonl" 2>/dev/null)
  python3 scripts/real_clients/python_realtime.py "http://127.0.0.1:$gw_port/v1" sk-gw-real &&
    expect realtime_sessions_total -eq $((sessions + 1)) && expect realtime_responses_total -ge 2 || return 1
  # Both responses are billed (the file sink fsyncs within 200 ms).
  for _ in $(seq 1 50); do
    [[ $(grep -c '"request_type":"realtime"' "$work/usage-$gw_port.jsonl" 2>/dev/null) -ge $((records + 2)) ]] && return 0
    sleep 0.1
  done
  echo "no realtime usage records for the two responses"; return 1
}

check "README quick-start Python snippet, as written" readme_python
check "openai-python responses.connect() (WebSocket)" python_ws
check "openai-python responses.create stream and non-stream (POST, WS pool)" python_http_ws_pool
check "Codex CLI with supports_websockets = true" codex_ws
check "Codex CLI without supports_websockets (POST + SSE)" codex_sse
check "Codex CLI over WebSocket, HTTP upstream (warm-ups answered by the gateway)" codex_ws_to_http_upstream
check "openai-python stream and non-stream, HTTP upstream" python_http_upstream
check "Codex CLI tool call, then exec resume --last" codex_tool_then_resume
check "openai-python store=false tool round trip, then reconnects continuing the chain" python_ws_reconnect
check "openai-python realtime.connect(): a text turn and an audio turn" python_realtime

check "no key in the mock's view or the gateway logs" bash -c "
  curl -fsS http://127.0.0.1:$mock_port/_mock/stats | python3 -c '
import json, sys
s = json.load(sys.stdin)
assert all(\"sk-gw-real\" not in a and \"sk-gw-local\" not in a for a in s[\"authorizations_seen\"]), \"client key leaked upstream\"
assert s[\"auth_failures\"] == 0, s
print(\"mock saw %d WebSocket turns, %d HTTP turns, %d warm-ups\" % (s[\"ws_turns_total\"], s[\"http_turns_total\"], s[\"generate_false_total\"]))
' && ! grep -q 'sk-upstream-real\|sk-gw-real\|sk-gw-local' '$work/gw.log' '$work/gw-http.log'"

echo "real-clients: $passed passed, $failed failed"
[[ $failed == 0 ]]
