#!/usr/bin/env bash
# The whole test suite: unit tests, end-to-end tests over loopback (mock upstream, real TLS,
# real Redis), and the real-client checks (openai-python, Codex CLI), which install those clients
# into target/real-clients/ (project-local, ignored by git), never into the system Python or ~.
#
# Redis: uses 127.0.0.1:6379 if it answers, otherwise starts Debian's redis-server (installing it
# if needed) on a private port for the length of the run. REDIS_URL is exported for the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/lib/redis.sh
ensure_redis
trap stop_private_redis EXIT

cargo test --all-targets "$@"

if [[ "${SHARDGATE_SKIP_REAL_CLIENTS:-0}" != 1 ]]; then
  scripts/real-clients.sh
fi
