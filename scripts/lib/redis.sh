# Helpers to find or start a Redis for tests and load scripts. Source, then call ensure_redis.

PRIVATE_REDIS_PID=""
PRIVATE_REDIS_DIR=""

redis_answers() { # host port
  { exec 3<>"/dev/tcp/$1/$2"; } 2>/dev/null || return 1
  printf 'PING\r\n' >&3
  local reply
  read -r -t 2 reply <&3 || true
  exec 3>&- 3<&-
  [[ "$reply" == +PONG* ]]
}

ensure_redis() {
  if [[ -n "${REDIS_URL:-}" ]]; then return 0; fi
  if redis_answers 127.0.0.1 6379; then
    export REDIS_URL="redis://127.0.0.1:6379/"
    return 0
  fi
  if ! command -v redis-server >/dev/null; then
    echo "redis-server not found: installing Debian's redis-server" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >&2
  fi
  local port=$(( 20000 + RANDOM % 20000 ))
  PRIVATE_REDIS_DIR=$(mktemp -d)
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$PRIVATE_REDIS_DIR" --daemonize no >"$PRIVATE_REDIS_DIR/log" 2>&1 &
  PRIVATE_REDIS_PID=$!
  for _ in $(seq 1 50); do
    if redis_answers 127.0.0.1 "$port"; then
      export REDIS_URL="redis://127.0.0.1:$port/"
      echo "started private redis on port $port" >&2
      return 0
    fi
    sleep 0.1
  done
  echo "redis-server did not come up" >&2
  cat "$PRIVATE_REDIS_DIR/log" >&2
  return 1
}

stop_private_redis() {
  if [[ -n "$PRIVATE_REDIS_PID" ]]; then kill "$PRIVATE_REDIS_PID" 2>/dev/null || true; wait "$PRIVATE_REDIS_PID" 2>/dev/null || true; fi
  if [[ -n "$PRIVATE_REDIS_DIR" ]]; then rm -rf "$PRIVATE_REDIS_DIR"; fi
}
