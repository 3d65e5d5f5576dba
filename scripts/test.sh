#!/usr/bin/env bash
# The whole test suite: unit tests, end-to-end tests over loopback (mock upstream, real TLS,
# real Redis), and the real-client checks (openai-python, Codex CLI), which install those clients
# into target/real-clients/ (project-local, ignored by git), never into the system Python or ~;
# and a short smoke run of every fuzz target (scripts/fuzz-smoke.sh, which installs cargo-fuzz
# into target/tools; SHARDGATE_SKIP_FUZZ=1 skips it).
#
# Redis: uses 127.0.0.1:6379 if it answers, otherwise starts Debian's redis-server (installing it
# if needed) on a private port for the length of the run. REDIS_URL is exported for the tests.
# nginx: Debian's, installed if missing, for the multi-host tests (they start their own).
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/lib/redis.sh
source scripts/lib/nginx.sh
ensure_redis
trap stop_private_redis EXIT
ensure_nginx

# The end-to-end tests' scratch folders (tests/common scratch_file) from earlier runs.
rm -rf target/tmp/shardgate-test-*
cargo test --all-targets "$@"

# A few seconds of every fuzz target (fuzz/README.md); fails on a crash.
if [[ "${SHARDGATE_SKIP_FUZZ:-0}" != 1 ]]; then
  scripts/fuzz-smoke.sh
fi

if [[ "${SHARDGATE_SKIP_REAL_CLIENTS:-0}" != 1 ]]; then
  scripts/real-clients.sh
fi
