#!/usr/bin/env bash
# Unmodified real clients through the gateway against the mock upstream:
#   - openai-python `client.responses.connect()`: a warm-up and chained store=false turns;
#   - Codex CLI `codex exec` with a provider entry `supports_websockets = true`, then
#     `codex exec resume --last` for a second turn.
# Each check asserts on the mock's own counters (no previous_response_not_found, warm-ups seen,
# the client key never reached upstream). Installs the clients if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

if ! python3 -c 'import openai' 2>/dev/null; then
  pip install -q 'openai[realtime]' >&2
fi
codex_dir="${CODEX_INSTALL_DIR:-$HOME/.cache/shardgate-codex}"
codex="$codex_dir/node_modules/.bin/codex"
if [[ ! -x "$codex" ]]; then
  mkdir -p "$codex_dir"
  (cd "$codex_dir" && npm install --silent --no-audit --no-fund @openai/codex >&2)
fi

cargo build --quiet
bin="${CARGO_TARGET_DIR:-target}/debug/shardgate"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mock_port=$(free_port)
gw_port=$(free_port)

"$bin" mock-upstream --listen "127.0.0.1:$mock_port" --require-key sk-upstream-real >"$work/mock.log" 2>&1 &
pids+=($!)
cat >"$work/gw.toml" <<TOML
[server]
listen = "127.0.0.1:$gw_port"
shards = 2
[[client_keys]]
key = "sk-gw-real"
id = "real-clients"
[[accounts]]
id = "mock"
base_url = "http://127.0.0.1:$mock_port/v1"
api_key = "sk-upstream-real"
max_conns = 8
TOML
"$bin" serve --config "$work/gw.toml" >"$work/gw.log" 2>&1 &
pids+=($!)
up=0
for _ in $(seq 1 100); do
  if curl -fsS "http://127.0.0.1:$gw_port/healthz" >/dev/null 2>&1 &&
     curl -fsS "http://127.0.0.1:$mock_port/_mock/stats" >/dev/null 2>&1; then up=1; break; fi
  sleep 0.1
done
if [[ $up != 1 ]]; then
  echo "gateway or mock did not come up"; cat "$work/mock.log" "$work/gw.log"; exit 1
fi

stats() { curl -fsS "http://127.0.0.1:$mock_port/_mock/stats"; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

echo "== openai-python responses.connect()"
python3 scripts/real_clients/python_ws.py "http://127.0.0.1:$gw_port/v1" sk-gw-real

echo "== Codex CLI codex exec (supports_websockets = true)"
export CODEX_HOME="$work/codex-home"
mkdir -p "$CODEX_HOME"
cat >"$CODEX_HOME/config.toml" <<TOML
model = "gpt-5"
model_provider = "shardgate"
[model_providers.shardgate]
name = "shardgate"
base_url = "http://127.0.0.1:$gw_port/v1"
env_key = "SHARDGATE_KEY"
wire_api = "responses"
supports_websockets = true
TOML
export SHARDGATE_KEY=sk-gw-real
mkdir -p "$work/proj"
before=$(stats | field "['ws_turns_total']")
(cd "$work/proj" && timeout 120 "$codex" exec --skip-git-repo-check "say hi" </dev/null >"$work/codex1.log" 2>&1) ||
  { cat "$work/codex1.log"; echo "codex exec failed"; exit 1; }
(cd "$work/proj" && timeout 120 "$codex" exec --skip-git-repo-check resume --last "and again" </dev/null >"$work/codex2.log" 2>&1) ||
  { cat "$work/codex2.log"; echo "codex exec resume failed"; exit 1; }
grep -q "lorem" "$work/codex1.log" || { cat "$work/codex1.log"; echo "codex printed no model text"; exit 1; }
after=$(stats | field "['ws_turns_total']")
echo "codex turns over WebSocket: $((after - before))"

s=$(stats)
echo "$s" | python3 -c '
import json, sys
s = json.load(sys.stdin)
assert s["previous_response_not_found_total"] == 0, s
assert s["generate_false_total"] >= 2, "warm-ups (python + codex) not seen: %r" % s
assert s["ws_turns_total"] >= 8, s
assert all("sk-gw-real" not in a for a in s["authorizations_seen"]), "client key leaked upstream"
assert s["auth_failures"] == 0, s
print("mock saw %d WebSocket turns, %d warm-ups, 0 previous_response_not_found" % (s["ws_turns_total"], s["generate_false_total"]))
'
if grep -q "sk-upstream-real\|sk-gw-real" "$work/gw.log"; then echo "a key appeared in the gateway log"; exit 1; fi
echo "real-clients: 2 passed, 0 failed"
