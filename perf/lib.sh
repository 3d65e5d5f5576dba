# Shared plumbing for perf scenarios: builds the release binary, starts the mock upstream, the
# gateway and nginx (installing Debian's nginx if missing) on free loopback ports, runs the same
# load against direct / nginx / shardgate in alternating rounds, and stops everything it started
# on exit. Source it, set the scenario's defaults, then call `parse_common "$@"` and
# `compare_main`; see steady.sh.
set -euo pipefail
PERF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$PERF_DIR/.." && pwd)
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  local n pidfile
  for n in nginx nginx-b; do
    pidfile=$(nginx_dir "$n")/nginx.pid
    if [[ -f $pidfile ]]; then kill "$(cat "$pidfile")" 2>/dev/null || true; fi
  done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# RELAY_CPUS / PEER_CPUS (env, taskset lists such as `0` or `0-3`): run the relays (the gateway,
# nginx, nginx-b) on the first CPUs and their peers (the mock, the load generator) on the second,
# as on a host where the relay has cores of its own; without them everything shares every CPU,
# which on a 2-vCPU VM makes part of a relay's latency how it shares the CPUs with its peers.
# With RELAY_CPUS set, shards and nginx workers default to its CPU count (SHARDS overrides both).
# Command prefixes (arrays, not functions: a function run in the background is a subshell, and
# `$!` would be its pid, not the gateway's).
ON_RELAY_CPUS=() ON_PEER_CPUS=()
if [[ -n ${RELAY_CPUS:-} ]]; then ON_RELAY_CPUS=(taskset -c "$RELAY_CPUS"); fi
if [[ -n ${PEER_CPUS:-} ]]; then ON_PEER_CPUS=(taskset -c "$PEER_CPUS"); fi
relay_cpu_count() { if [[ -n ${RELAY_CPUS:-} ]]; then taskset -c "$RELAY_CPUS" nproc; else echo 2; fi; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# PERF_BIN=path (env): run that binary instead of building this tree's (A/B of two builds).
# PERF_TOOLS_BIN=path (env): take the mock upstream and the load generator from that binary, so
# that in an A/B only the gateway differs (the mock's event shapes and the load's pacing change
# between builds too); by default they come from the same binary as the gateway.
build() {
  if [[ -n ${PERF_BIN:-} ]]; then
    BIN=$PERF_BIN
  else
    (cd "$ROOT" && cargo build --release --quiet)
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/shardgate"
  fi
  TOOLS=${PERF_TOOLS_BIN:-$BIN}
}

# The turns a `shardgate load` run completed, from its report (fails when the report has none).
turns_ok() { grep -oE "turns ok [0-9]+" "$1" | grep -oE "[0-9]+$"; }

wait_http() { # url [more curl options]
  for _ in $(seq 1 100); do curl -fsS "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "did not come up: $1" >&2; return 1
}

start_mock() { # extra mock args...
  MOCK_PORT=$(free_port)
  "${ON_PEER_CPUS[@]}" "$TOOLS" mock-upstream --listen "127.0.0.1:$MOCK_PORT" "$@" >"$WORK/mock.log" 2>&1 &
  PIDS+=($!)
  MOCK_PID=$!
  wait_http "http://127.0.0.1:$MOCK_PORT/_mock/stats"
  MOCK_URL="ws://127.0.0.1:$MOCK_PORT/v1/responses"
  MOCK_HTTP_URL="http://127.0.0.1:$MOCK_PORT/v1/responses"
  MOCK_BASE="http://127.0.0.1:$MOCK_PORT"
}

# The gateway's config for a run, on stdout: listens on $GW_PORT, admin on $ADMIN_PORT, the mock at
# $MOCK_PORT ($MOCK_SCHEME, default http; more lines for the account in $GW_ACCOUNT_EXTRA), client
# key sk-perf; $1 shards.
gateway_toml() {
  cat <<TOML
[server]
listen = "127.0.0.1:$GW_PORT"
shards = $1
admin_listen = "127.0.0.1:$ADMIN_PORT"
stats_interval_ms = ${STATS_MS:-1000}
${GW_SERVER_EXTRA:-}
[upstream]
queue_per_conn = 64
${GW_UPSTREAM_EXTRA:-}
[[client_keys]]
key = "sk-perf"
id = "perf"
[[accounts]]
id = "mock"
base_url = "${MOCK_SCHEME:-http}://127.0.0.1:$MOCK_PORT/v1"
api_key = "sk-mock"
max_conns = 4096
${GW_ACCOUNT_EXTRA:-}
[log]
level = "warn"
[usage]
path = "$WORK/usage.jsonl"
TOML
}

start_gateway() { # shards; extra [upstream] keys in $GW_UPSTREAM_EXTRA, [server] in $GW_SERVER_EXTRA
  GW_PORT=$(free_port)
  ADMIN_PORT=$(free_port)
  KEY=sk-perf
  gateway_toml "${1:-2}" >"$WORK/gw.toml"
  "${ON_RELAY_CPUS[@]}" "$BIN" serve --config "$WORK/gw.toml" >"$WORK/gw.log" 2>&1 &
  PIDS+=($!)
  GW_PID=$!
  wait_http "http://127.0.0.1:$GW_PORT/healthz"
  wait_http "http://127.0.0.1:$ADMIN_PORT/metrics"
  GW_URL="ws://127.0.0.1:$GW_PORT/v1/responses"
  GW_HTTP_URL="http://127.0.0.1:$GW_PORT/v1/responses"
}

# Where an nginx instance keeps its config, pid file and temp dirs: $WORK for nginx, $WORK/nginx-b
# for the A/A second one.
nginx_dir() { if [[ $1 == nginx ]]; then echo "$WORK"; else echo "$WORK/$1"; fi; }

# Starts nginx as configured by nginx.conf.tmpl. With the argument `nginx-b`, a second instance
# of the same configuration in $WORK/nginx-b (its own port, pid file and workers, URLs in
# NGINX_B_URL / NGINX_B_HTTP_URL): the A/A target, which measures the noise floor of a ratio to
# nginx (see `--targets` below).
start_nginx() { # [nginx-b]
  if ! command -v nginx >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx) >&2
  fi
  local dir port
  dir=$(nginx_dir "${1:-nginx}")
  port=$(free_port)
  mkdir -p "$dir"/{body,proxy,fastcgi,uwsgi,scgi}
  sed -e "s#@WORK@#$dir#g" -e "s#@MOCK_PORT@#$MOCK_PORT#g" -e "s#@NGINX_PORT@#$port#g" \
    -e "s#@WORKERS@#$SHARDS#g" "$PERF_DIR/nginx.conf.tmpl" >"$dir/nginx.conf"
  "${ON_RELAY_CPUS[@]}" nginx -c "$dir/nginx.conf" -p "$dir"
  for _ in $(seq 1 50); do [[ -f "$dir/nginx.pid" ]] && break; sleep 0.1; done
  if [[ ${1:-nginx} == nginx ]]; then
    NGINX_PORT=$port
    NGINX_URL="ws://127.0.0.1:$port/v1/responses"
    NGINX_HTTP_URL="http://127.0.0.1:$port/v1/responses"
  else
    NGINX_B_PORT=$port
    NGINX_B_URL="ws://127.0.0.1:$port/v1/responses"
    NGINX_B_HTTP_URL="http://127.0.0.1:$port/v1/responses"
  fi
}

# CPU seconds a process has used so far: the run time of each of its threads in nanoseconds
# (/proc/PID/task/*/schedstat), not /proc/PID/stat's user+sys in clock ticks, whose 10 ms steps
# were ~±5 % of a 10 s long-sessions round. A thread that ends between two readings takes its
# time with it (io_uring's workers: ~0.3 % of the gateway's samples in a perf profile).
cpu_secs() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{t += $1} END {printf "%.6f\n", t / 1e9}'; }
# Peak RSS in KiB.
peak_rss_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
# RSS now, in KiB.
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
# This run's nginx workers: the children of its master (the pid file of $WORK, or of
# $WORK/nginx-b for `nginx_workers nginx-b`), not every nginx worker on the machine (a stray nginx
# from another run added its workers' RSS to the column).
nginx_workers() { # [nginx-b]
  pgrep -P "$(cat "$(nginx_dir "${1:-nginx}")/nginx.pid" 2>/dev/null || echo 0)" -f "nginx: worker process" || true
}
nginx_cpu() { local t=0; for p in $(nginx_workers "$@"); do t=$(awk -v t="$t" -v c="$(cpu_secs "$p")" 'BEGIN {printf "%.6f\n", t + c}'); done; echo "$t"; }
nginx_rss_kib() { local t=0; for p in $(nginx_workers "$@"); do t=$((t + $(rss_kib "$p"))); done; echo "$t"; }
nginx_peak_rss_kib() { local t=0; for p in $(nginx_workers "$@"); do t=$((t + $(peak_rss_kib "$p"))); done; echo "$t"; }

# Mock control: reset its counters and script queue; append a script (JSON); read its counters.
mock_reset() { curl -fsS -X POST "$MOCK_BASE/_mock/reset" >/dev/null; }
mock_script() { curl -fsS -X POST -H 'content-type: application/json' --data-binary "$1" "$MOCK_BASE/_mock/script" >/dev/null; }
mock_stats() { curl -fsS "$MOCK_BASE/_mock/stats"; }
# The gateway's own counters (Prometheus text from the admin listener). Shards ship their
# counters every stats_interval_ms ($STATS_MS, default 1000 as in the product), so wait 2.5
# intervals (at least 0.5 s) for the last snapshot.
gw_metrics() {
  sleep "$(awk -v ms="${STATS_MS:-1000}" 'BEGIN { s = 2.5 * ms / 1000; print (s < 0.5 ? 0.5 : s) }')"
  curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics"
}

# ---- the side-by-side runner -------------------------------------------------------------------
# Scenario knobs (set before parse_common; options override): ROUNDS CONNS SECS PAYLOAD SHARDS RATE
# WARMUP CHAIN WIRE (ws|http|realtime) NAME IDLE (idle sessions for the RSS probe, 0: skip) HOLD
# IDLE_TURNS (turns each probe session runs before it idles), LOAD_EXTRA
# (more `shardgate load` options), TARGETS (subset of "direct nginx nginx-b shardgate"; nginx-b is
# a second nginx of the same configuration, left out by default: with it, the summary prints
# nginx-b/nginx beside shardgate/nginx, the spread an identical relay shows), and the hook
# `mock_round_script` (prints a mock script JSON to post after each reset, or nothing).
ROUNDS=${ROUNDS:-3} CONNS=${CONNS:-32} SECS=${SECS:-5} PAYLOAD=${PAYLOAD:-30000} SHARDS=${SHARDS:-$(relay_cpu_count)}
RATE=${RATE:-} WARMUP=${WARMUP:-} CHAIN=${CHAIN-1} WIRE=${WIRE:-ws} NAME=${NAME:-steady}
IDLE=${IDLE:-1000} HOLD=${HOLD:-3} IDLE_TURNS=${IDLE_TURNS:-0} LOAD_EXTRA=${LOAD_EXTRA:-} TARGETS=${TARGETS:-"direct nginx shardgate"}
MOCK_ARGS=${MOCK_ARGS:-}
# STATS_MS (env only): the gateway's stats_interval_ms, default 1000, the product's (see gw_metrics).
mock_round_script() { :; }

common_usage() {
  cat >&2 <<USAGE
options: [--rounds N] [--connections N] [--secs S] [--payload BYTES] [--shards N]
         [--rate TURNS_PER_SEC] (open-loop cap; without it the load is closed-loop)
         [--warmup] [--no-chain] [--idle-sessions N] (0 skips the idle RSS probe) [--hold-secs S]
         [--idle-turns N] (turns each probe session runs, with --payload frames, before it idles)
         [--targets "direct nginx shardgate"] (add nginx-b for an A/A baseline) [--name NAME]
USAGE
}

parse_common() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --rounds) ROUNDS=$2; shift 2 ;;
      --connections) CONNS=$2; shift 2 ;;
      --secs) SECS=$2; shift 2 ;;
      --payload) PAYLOAD=$2; shift 2 ;;
      --shards) SHARDS=$2; shift 2 ;;
      --rate) RATE=$2; shift 2 ;;
      --warmup) WARMUP=1; shift ;;
      --no-chain) CHAIN=""; shift ;;
      --idle-sessions) IDLE=$2; shift 2 ;;
      --hold-secs) HOLD=$2; shift 2 ;;
      --idle-turns) IDLE_TURNS=$2; shift 2 ;;
      --targets) TARGETS=$2; shift 2 ;;
      --name) NAME=$2; shift 2 ;;
      -h|--help) common_usage; exit 0 ;;
      *) echo "unknown option $1" >&2; common_usage; exit 2 ;;
    esac
  done
}

# The URL and key of a target on the scenario's wire.
target_url() {
  local realtime="/v1/realtime?model=gpt-realtime"
  case "$1:$WIRE" in
    direct:realtime) echo "ws://127.0.0.1:$MOCK_PORT$realtime" ;;
    nginx:realtime) echo "ws://127.0.0.1:$NGINX_PORT$realtime" ;;
    nginx-b:realtime) echo "ws://127.0.0.1:$NGINX_B_PORT$realtime" ;;
    shardgate:realtime) echo "ws://127.0.0.1:$GW_PORT$realtime" ;;
    direct:ws) echo "$MOCK_URL" ;; direct:http) echo "$MOCK_HTTP_URL" ;;
    nginx:ws) echo "$NGINX_URL" ;; nginx:http) echo "$NGINX_HTTP_URL" ;;
    nginx-b:ws) echo "$NGINX_B_URL" ;; nginx-b:http) echo "$NGINX_B_HTTP_URL" ;;
    shardgate:ws) echo "$GW_URL" ;; shardgate:http) echo "$GW_HTTP_URL" ;;
  esac
}
target_key() { if [[ $1 == shardgate ]]; then echo "$KEY"; else echo sk-mock; fi; }
relay_cpu() { case "$1" in shardgate) cpu_secs "$GW_PID" ;; nginx*) nginx_cpu "$1" ;; *) echo 0 ;; esac; }
relay_peak_rss() { case "$1" in shardgate) peak_rss_kib "$GW_PID" ;; nginx*) nginx_peak_rss_kib "$1" ;; *) echo 0 ;; esac; }
relay_rss() { case "$1" in shardgate) rss_kib "$GW_PID" ;; nginx*) nginx_rss_kib "$1" ;; *) echo 0 ;; esac; }

# One round against one target: reset the mock (and post the round's script), run the load, add
# the relay's CPU and the mock's counters to the JSON, plot its percentile distribution.
run_round() { # target round
  local name=$1 round=$2 base="$OUT/$1-$2" script control=1 cpu0
  mock_reset
  script=$(mock_round_script)
  if [[ -n $script ]]; then mock_script "$script"; control=2; fi
  # The relay's CPU is read after the gateway's counters: gw_metrics waits 2.5 stats intervals
  # (the gateway idling through its ticks) and has it render /metrics, neither of which nginx
  # is asked to do (0.6-1.6 ms of the gateway's CPU, session 16).
  if [[ $name == shardgate ]]; then gw_metrics >"$WORK/gw-before.prom"; else : >"$WORK/gw-before.prom"; fi
  cpu0=$(relay_cpu "$name")
  # shellcheck disable=SC2086
  "${ON_PEER_CPUS[@]}" "$TOOLS" load --url "$(target_url "$name")" --key "$(target_key "$name")" --connections "$CONNS" \
    --duration-secs "$SECS" --payload-bytes "$PAYLOAD" ${CHAIN:+--store-false-chain} \
    ${RATE:+--rate "$RATE"} ${WARMUP:+--warmup} $LOAD_EXTRA \
    --json-out "$base.json" --hist-out "$base.csv" >"$base.txt"
  local cpu1
  cpu1=$(relay_cpu "$name")
  mock_stats >"$WORK/mock-stats.json"
  if [[ $name == shardgate ]]; then gw_metrics >"$WORK/gw-after.prom"; else : >"$WORK/gw-after.prom"; fi
  python3 - "$base.json" "$cpu1" "$cpu0" "$(relay_peak_rss "$name")" "$control" "$WORK/mock-stats.json" \
    "$WORK/gw-before.prom" "$WORK/gw-after.prom" <<'PY'
import json, re, sys
path, cpu1, cpu0, rss, control, mock, gw0, gw1 = sys.argv[1:]
r, m = json.load(open(path)), json.load(open(mock))


def counters(prom):
    """`shardgate_*_total` counters of a /metrics text, summed over shards: name → value, or
    name → {label: value} for the labeled families."""
    out = {}
    for line in open(prom):
        g = re.match(r'shardgate_(\w+)_total(?:\{([^}]*)\})? (\S+)$', line.strip())
        if not g:
            continue
        name, labels, v = g.group(1), dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', g.group(2) or "")), float(g.group(3))
        if "label" in labels:
            fam = out.setdefault(name, {})
            fam[labels["label"]] = fam.get(labels["label"], 0) + v
        else:
            out[name] = out.get(name, 0) + v
    return out


# The gateway's counters over the round (after − before; shardgate only).
c0, c1 = counters(gw0), counters(gw1)
if c1:
    gw = {}
    for k, v in c1.items():
        if isinstance(v, dict):
            before = c0.get(k) if isinstance(c0.get(k), dict) else {}
            d = {lab: int(x - before.get(lab, 0)) for lab, x in v.items()}
            gw[k] = {lab: x for lab, x in d.items() if x}
        else:
            gw[k] = int(v - (c0.get(k, 0) if not isinstance(c0.get(k), dict) else 0))
    r["gateway"] = gw
r["relay_cpu_secs"] = float(cpu1) - float(cpu0)
r["relay_peak_rss_kib"] = int(rss)
# Each curl is one mock connection: the reset's is cleared by the reset itself; the script's and
# this stats request's are counted ($control of them), and are not upstream connections.
r["mock"] = {
    "upstream_conns": m["connections_total"] - int(control),
    "upstream_turns": m["ws_turns_total"] + m["http_turns_total"] + m.get("realtime_responses_total", 0),
    "ws_connections": m["ws_connections_total"],
    "faults": m["faults"],
    "close_codes_sent": m["close_codes_sent"],
}
json.dump(r, open(path, "w"))
PY
  plot_run "$base"
}

# RSS per idle session of a relay: RSS before, N idle WebSocket sessions held, RSS while held.
idle_probe() { # target
  local name=$1 before after log="$OUT/idle-$1.txt"
  [[ $IDLE -gt 0 ]] || return 0
  before=$(relay_rss "$name")
  "${ON_PEER_CPUS[@]}" "$TOOLS" load --url "$(target_url "$name" | sed 's#^http://#ws://#')" --key "$(target_key "$name")" \
    --idle-sessions "$IDLE" --hold-secs "$HOLD" --idle-turns "$IDLE_TURNS" --payload-bytes "$PAYLOAD" \
    --json-out "$OUT/idle-$name-load.json" >"$log" &
  local pid=$!
  for _ in $(seq 1 1200); do grep -q "idle sessions open" "$log" 2>/dev/null && break; sleep 0.05; done
  # Sessions that ran turns are read idle: past the gateway's 1 s rest after a turn.
  if [[ $IDLE_TURNS -gt 0 ]]; then sleep 1.5; else sleep 0.3; fi
  after=$(relay_rss "$name")
  wait "$pid"
  python3 - "$OUT/idle-$name-load.json" "$before" "$after" >"$OUT/idle-$name.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(json.dumps({"idle_open": r["idle_open"], "rss_before_kib": int(sys.argv[2]), "rss_after_kib": int(sys.argv[3]), "errors": r["errors"]}))
PY
}

# gnuplot: the percentile distribution of one run (<base>.csv → <base>.png).
plot_run() { # base
  command -v gnuplot >/dev/null || return 0
  local base=$1 series="" h
  for h in ttft event first_turn; do
    # A curve needs points: skip histograms with few distinct percentiles (e.g. one first turn
    # per connection in a steady run).
    [[ $(grep -c "^$h," "$base.csv") -ge 40 ]] || continue
    series+="${series:+, }\"< grep '^$h,' $base.csv\" using 4:3 with lines lw 2 title '$h'"
  done
  [[ -n $series ]] || return 0
  gnuplot <<GP || echo "gnuplot failed: no plot" >&2
set terminal pngcairo size 900,520 noenhanced
set output "$base.png"
set datafile separator ","
set title "$(basename "$base"): latency by percentile (µs)"
set logscale xy
set xtics ("0%%" 1, "90%%" 10, "99%%" 100, "99.9%%" 1000, "99.99%%" 10000, "99.999%%" 100000)
set xlabel "percentile"
set ylabel "µs"
set grid
set key top left
plot $series
GP
}

# One TTFT curve per target (last round) in one picture.
plot_compare() {
  command -v gnuplot >/dev/null || return 0
  local series="" t f
  for t in $TARGETS; do
    f="$OUT/$t-$ROUNDS.csv"
    [[ -s $f ]] && grep -q '^ttft,' "$f" || continue
    series+="${series:+, }\"< grep '^ttft,' $f\" using 4:3 with lines lw 2 title '$t TTFT'"
  done
  [[ -n $series ]] || return 0
  gnuplot <<GP || echo "gnuplot failed: no plot" >&2
set terminal pngcairo size 900,520 noenhanced
set output "$OUT/ttft-by-target.png"
set datafile separator ","
set title "$NAME: TTFT by percentile, round $ROUNDS (µs)"
set logscale xy
set xtics ("0%%" 1, "90%%" 10, "99%%" 100, "99.9%%" 1000, "99.99%%" 10000, "99.999%%" 100000)
set grid
set key top left
plot $series
GP
}

ensure_gnuplot() {
  if ! command -v gnuplot >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gnuplot-nox) >&2 ||
      echo "gnuplot unavailable: no plots" >&2
  fi
}

# Build, start everything, alternate rounds, probe idle RSS, summarize.
compare_main() {
  build
  ensure_gnuplot
  # shellcheck disable=SC2086
  start_mock --shards 1 $MOCK_ARGS
  start_gateway "$SHARDS"
  start_nginx
  if [[ " $TARGETS " == *" nginx-b "* ]]; then start_nginx nginx-b; fi
  OUT="$ROOT/perf/out/$NAME-$(date +%Y%m%dT%H%M%S)"
  mkdir -p "$OUT"
  local round t
  for round in $(seq 1 "$ROUNDS"); do
    for t in $TARGETS; do run_round "$t" "$round"; done
  done
  for t in $TARGETS; do [[ $t == direct ]] || idle_probe "$t"; done
  plot_compare
  python3 "$PERF_DIR/summarize.py" "$OUT" "$ROUNDS" "$NAME" | tee "$OUT/summary.txt"
}
