#!/usr/bin/env bash
# pgo-build: the release binary built with profile-guided optimisation, the build to ship
# (README "The build to ship"; measured against the plain release build in perf/README.md,
# "Session 17"; `PERF_BIN=target/pgo/release/shardgate` runs a perf scenario on it). Three steps:
#   1. an instrumented release build (target/pgo-generate);
#   2. a training run of it behind the bundled mock upstream, in the shapes of the perf
#      scenarios: chained WebSocket turns at a low rate (8 KB frames, upstream connections
#      rotated), 30 KB frames at a high rate, many sessions at once, connection churn, HTTP + SSE,
#      and WebSocket turns to a TLS upstream. Only the gateway's profile is kept;
#   3. the release build again with the merged profile (target/pgo), then a few seconds of
#      WebSocket and HTTP turns through it.
# The profile steers inlining and code layout only: the binary behaves as the plain release
# build does, and code the training did not run is compiled as it would be without a profile.
# Needs llvm-profdata of the LLVM version rustc is built on: rustup's llvm-tools component if
# installed, else Debian's llvm-<major> (installed if missing). About 7 minutes on 2 cores.
#   scripts/pgo-build.sh     →  target/pgo/release/shardgate
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT_DIR=$TARGET/pgo
GEN_DIR=$TARGET/pgo-generate

# llvm-profdata that reads the profiles rustc's LLVM writes.
profdata_tool() {
  local major sysroot
  major=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
  sysroot=$(rustc --print sysroot)
  for t in "$sysroot"/lib/rustlib/*/bin/llvm-profdata "llvm-profdata-$major"; do
    if command -v "$t" >/dev/null; then echo "$t"; return; fi
  done
  echo "installing Debian's llvm-$major for llvm-profdata" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "llvm-$major") >&2
  echo "llvm-profdata-$major"
}
PROFDATA=$(profdata_tool)
# The perf harness: its mock, gateway config, loopback ports and cleanup (of $WORK too, on exit).
source "$ROOT/perf/lib.sh"
PROFILES=$WORK/profiles
echo "== 1/3 instrumented build ($GEN_DIR)"
RUSTFLAGS="-Cprofile-generate=$PROFILES/build" CARGO_TARGET_DIR=$GEN_DIR \
  cargo build --release --quiet --bin shardgate

echo "== 2/3 training behind the bundled mock"
# The mock and the load generator are the instrumented binary too; their profiles go to a
# directory that is thrown away.
PERF_BIN=$GEN_DIR/release/shardgate
build
export LLVM_PROFILE_FILE=$WORK/discard/%p.profraw
GW_PROFILE=$PROFILES/gateway-%p.profraw
start_mock
LLVM_PROFILE_FILE=$GW_PROFILE GW_UPSTREAM_EXTRA="max_conn_age_secs = 3" start_gateway 2
run_load() { # url key load options...
  local url=$1 key=$2
  shift 2
  "$TOOLS" load --url "$url" --key "$key" "$@" >"$WORK/load.txt" 2>&1 || true
  local ok
  ok=$(turns_ok "$WORK/load.txt" || echo 0)
  if [[ $ok -eq 0 ]]; then
    cat "$WORK/load.txt" >&2
    echo "load ran no turn: $*" >&2
    exit 1
  fi
  echo "   $ok turns: ${url%%:*} $*"
}
run_load "$GW_URL" "$KEY" --duration-secs 8 --connections 16 --rate 400 --payload-bytes 8000 --store-false-chain
run_load "$GW_URL" "$KEY" --duration-secs 4 --connections 16 --rate 2000 --payload-bytes 30000
run_load "$GW_URL" "$KEY" --duration-secs 4 --connections 64 --payload-bytes 30000
run_load "$GW_URL" "$KEY" --duration-secs 3 --connections 32 --reconnect-every 1
run_load "$GW_HTTP_URL" "$KEY" --duration-secs 4 --connections 32 --payload-bytes 30000

# The same gateway binary behind a TLS upstream (every real account is one).
TLS_PORT=$(free_port)
"$TOOLS" mock-upstream --listen "127.0.0.1:$TLS_PORT" --tls-self-signed --ca-out "$WORK/ca.pem" \
  >"$WORK/mock-tls.log" 2>&1 &
PIDS+=($!)
wait_http "https://127.0.0.1:$TLS_PORT/_mock/stats" --cacert "$WORK/ca.pem"
PLAIN_GW_PID=$GW_PID
MOCK_PORT=$TLS_PORT MOCK_SCHEME=https GW_ACCOUNT_EXTRA="ca_file = \"$WORK/ca.pem\"" \
  LLVM_PROFILE_FILE=$GW_PROFILE start_gateway 2
run_load "$GW_URL" "$KEY" --duration-secs 4 --connections 16 --rate 1000 --payload-bytes 8000 --store-false-chain

# A gateway writes its profile when it exits: stop both and wait for them.
for pid in "$PLAIN_GW_PID" "$GW_PID"; do
  kill -TERM "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
done
"$PROFDATA" merge -o "$PROFILES/shardgate.profdata" "$PROFILES"/gateway-*.profraw

echo "== 3/3 release build with the profile ($OUT_DIR)"
RUSTFLAGS="-Cprofile-use=$PROFILES/shardgate.profdata" CARGO_TARGET_DIR=$OUT_DIR \
  cargo build --release --quiet --bin shardgate

echo "== the built binary serves turns"
BIN=$OUT_DIR/release/shardgate
start_gateway 2
run_load "$GW_URL" "$KEY" --duration-secs 2 --connections 8 --rate 200 --payload-bytes 8000 --store-false-chain
run_load "$GW_HTTP_URL" "$KEY" --duration-secs 1 --connections 4 --rate 100
echo "built $BIN"
