#!/usr/bin/env bash
# pgo-build: the release binary built with profile-guided optimisation and laid out by BOLT, the
# build to ship (README "The build to ship"; measured against the plain release build in
# perf/README.md, "Session 17" and "Session 19"; `PERF_BIN=target/pgo/release/shardgate` runs a
# perf scenario on it). Five steps:
#   1. an instrumented release build (target/pgo-generate);
#   2. a training run of it behind the bundled mock upstream, in the shapes of the perf
#      scenarios: chained WebSocket turns at a low rate (8 KB frames, upstream connections
#      rotated), 30 KB frames at a high rate, many sessions at once, connection churn, HTTP + SSE,
#      and WebSocket turns to a TLS upstream. Only the gateway's profile is kept;
#   3. the release build again with the merged profile (target/pgo, linked with its relocations
#      kept so that BOLT can move functions);
#   4. the same training on that binary instrumented by BOLT (llvm-bolt -instrument);
#   5. BOLT lays out the step-3 binary by that profile: hot functions together, each function's
#      hot blocks first and its cold ones split off. Then a few seconds of WebSocket and HTTP
#      turns through the result.
# Both profiles steer code layout (and, for the compiler's, inlining) only: the binary behaves as
# the plain release build does. Needs llvm-profdata of the LLVM version rustc is built on
# (rustup's llvm-tools component if installed, else Debian's llvm-<major>) and Debian's
# bolt-<major>; either is installed if missing. About 11 minutes on 2 cores.
#   scripts/pgo-build.sh     →  target/pgo/release/shardgate
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT_DIR=$TARGET/pgo
GEN_DIR=$TARGET/pgo-generate
LLVM_MAJOR=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')

# Installs a Debian package of this LLVM version.
apt_install() { # package
  echo "installing Debian's $1" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1") >&2
}

# llvm-profdata that reads the profiles rustc's LLVM writes.
profdata_tool() {
  local sysroot
  sysroot=$(rustc --print sysroot)
  for t in "$sysroot"/lib/rustlib/*/bin/llvm-profdata "llvm-profdata-$LLVM_MAJOR"; do
    if command -v "$t" >/dev/null; then echo "$t"; return; fi
  done
  apt_install "llvm-$LLVM_MAJOR"
  echo "llvm-profdata-$LLVM_MAJOR"
}

# The directory of llvm-bolt and merge-fdata.
bolt_dir() {
  local dir=/usr/lib/llvm-$LLVM_MAJOR/bin
  [[ -x $dir/llvm-bolt ]] || apt_install "bolt-$LLVM_MAJOR"
  echo "$dir"
}
PROFDATA=$(profdata_tool)
BOLT_DIR=$(bolt_dir)
# The perf harness: its mock, gateway config, loopback ports and cleanup (of $WORK too, on exit).
source "$ROOT/perf/lib.sh"
PROFILES=$WORK/profiles

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

# The training: the gateway $BIN behind the bundled mock ($TOOLS, which drives the load too).
# The gateways run with LLVM_PROFILE_FILE=$GW_PROFILE, and are stopped at the end, so that they
# have written their profiles.
train() {
  start_mock
  local plain_mock=$MOCK_PID
  LLVM_PROFILE_FILE=$GW_PROFILE GW_UPSTREAM_EXTRA="max_conn_age_secs = 3" start_gateway 2
  local plain_gw=$GW_PID
  run_load "$GW_URL" "$KEY" --duration-secs 8 --connections 16 --rate 400 --payload-bytes 8000 --store-false-chain
  run_load "$GW_URL" "$KEY" --duration-secs 4 --connections 16 --rate 2000 --payload-bytes 30000
  run_load "$GW_URL" "$KEY" --duration-secs 4 --connections 64 --payload-bytes 30000
  run_load "$GW_URL" "$KEY" --duration-secs 3 --connections 32 --reconnect-every 1
  run_load "$GW_HTTP_URL" "$KEY" --duration-secs 4 --connections 32 --payload-bytes 30000

  # The same gateway binary behind a TLS upstream (every real account is one).
  local tls_port tls_mock
  tls_port=$(free_port)
  "$TOOLS" mock-upstream --listen "127.0.0.1:$tls_port" --tls-self-signed --ca-out "$WORK/ca.pem" \
    >"$WORK/mock-tls.log" 2>&1 &
  PIDS+=($!)
  tls_mock=$!
  wait_http "https://127.0.0.1:$tls_port/_mock/stats" --cacert "$WORK/ca.pem"
  MOCK_PORT=$tls_port MOCK_SCHEME=https GW_ACCOUNT_EXTRA="ca_file = \"$WORK/ca.pem\"" \
    LLVM_PROFILE_FILE=$GW_PROFILE start_gateway 2
  run_load "$GW_URL" "$KEY" --duration-secs 4 --connections 16 --rate 1000 --payload-bytes 8000 --store-false-chain

  for pid in "$plain_gw" "$GW_PID"; do
    kill -TERM "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  done
  kill "$plain_mock" "$tls_mock" 2>/dev/null || true
}

echo "== 1/5 instrumented build ($GEN_DIR)"
RUSTFLAGS="-Cprofile-generate=$PROFILES/build" CARGO_TARGET_DIR=$GEN_DIR \
  cargo build --release --quiet --bin shardgate

echo "== 2/5 training it behind the bundled mock"
# The mock and the load generator are the instrumented binary too; their profiles go to a
# directory that is thrown away.
PERF_BIN=$GEN_DIR/release/shardgate
build
export LLVM_PROFILE_FILE=$WORK/discard/%p.profraw
GW_PROFILE=$PROFILES/gateway-%p.profraw
train
"$PROFDATA" merge -o "$PROFILES/shardgate.profdata" "$PROFILES"/gateway-*.profraw

echo "== 3/5 release build with the profile ($OUT_DIR)"
# Removed first so that cargo links it again: BOLT rewrites it in place below, and cannot
# process its own output.
rm -f "$OUT_DIR/release/shardgate"
RUSTFLAGS="-Cprofile-use=$PROFILES/shardgate.profdata -Clink-arg=-Wl,--emit-relocs" \
  CARGO_TARGET_DIR=$OUT_DIR cargo build --release --quiet --bin shardgate
PGO_BIN=$OUT_DIR/release/shardgate

echo "== 4/5 training it instrumented by BOLT"
# BOLT takes every symbol with `.cold` or `.warm` anywhere in its name for a fragment split off
# a function (its pattern is unanchored), and fails when it finds no parent: in Rust's mangling a
# path segment that starts with `cold` or `warm` (a module, type or function) does that.
fragments=$(nm "$PGO_BIN" | awk '$3 ~ /^_ZN/ && $3 ~ /\.(cold|warm)/ {print $3}' | head -5)
if [[ -n $fragments ]]; then
  echo "these Rust symbols look like split-off fragments to BOLT; rename the path segment that" >&2
  echo "starts with cold or warm:" >&2
  echo "$fragments" >&2
  exit 1
fi
# Only the gateway is instrumented; the mock and the load generator are the step-3 binary.
"$BOLT_DIR/llvm-bolt" "$PGO_BIN" -instrument -o "$WORK/shardgate.bolt-instrumented" \
  --instrumentation-file="$PROFILES/bolt" --instrumentation-file-append-pid >"$WORK/bolt.log" 2>&1 \
  || { cat "$WORK/bolt.log" >&2; exit 1; }
unset LLVM_PROFILE_FILE
BIN=$WORK/shardgate.bolt-instrumented
TOOLS=$PGO_BIN
GW_PROFILE=/dev/null # BOLT's instrumentation writes $PROFILES/bolt.<pid>.fdata; no LLVM profile
train
"$BOLT_DIR/merge-fdata" "$PROFILES"/bolt.*.fdata >"$PROFILES/bolt.fdata"

echo "== 5/5 laid out by BOLT"
laid_out=$OUT_DIR/shardgate.bolt
"$BOLT_DIR/llvm-bolt" "$PGO_BIN" -o "$laid_out" --data="$PROFILES/bolt.fdata" \
  --reorder-blocks=ext-tsp --reorder-functions=cdsort --split-functions --split-all-cold \
  --split-eh --update-debug-sections --dyno-stats >"$WORK/bolt.log" 2>&1 || { cat "$WORK/bolt.log" >&2; exit 1; }
grep -E 'BOLT-INFO: (processing|[0-9]+ out of)|taken branches|executed instructions' "$WORK/bolt.log" || true
mv "$laid_out" "$PGO_BIN"
BIN=$PGO_BIN

echo "== the built binary serves turns"
TOOLS=$BIN
start_mock
start_gateway 2
run_load "$GW_URL" "$KEY" --duration-secs 2 --connections 8 --rate 200 --payload-bytes 8000 --store-false-chain
run_load "$GW_HTTP_URL" "$KEY" --duration-secs 1 --connections 4 --rate 100
echo "built $BIN"
