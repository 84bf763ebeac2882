#!/usr/bin/env bash
# make bench (issue 9): every scenario against Switchboard and the peers users would
# pick instead (nchan, Node `ws` rooms, a Node SSE server), in turns, in one run, on
# loopback, with the same generator (build/.../sb_loadgen). Servers are pinned to core
# 0 and the generator to core 1 (BENCH_PIN below); the figure that holds on a shared
# two-core machine is the server's CPU per delivered message, read from
# /proc/<pid>/stat around each measured phase.
#
# Environment:
#   BENCH_QUICK=1         a ~2-minute version (small counts, short phases)
#   BENCH_TARGETS="..."   subset of: switchboard nchan node   (default: all three)
#   BENCH_CASES="..."     subset of case names (see the list printed at the start)
#   BENCH_REPEAT=N        run every case N times; the table shows the median
#   BENCH_WORKERS=N       Switchboard --workers (default 1: one core each, like nchan's
#                         single worker and Node's single thread)
#   BUILD_RELEASE=DIR     where switchboard and sb_loadgen are (default build/release)
#   BENCH_PORT=N          first loopback port to use (default 18400)
#   BENCH_PIN=0           do not pin (default 1: every server on core 0, the generator on
#                         core 1, when there are two cores or more and --workers 1)
# Results: printed, and written to bench/results/<date>.txt (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${BUILD_RELEASE:-build/release}
LG=$BUILD/sb_loadgen
SB=$BUILD/switchboard
QUICK=${BENCH_QUICK:-0}
REPEAT=${BENCH_REPEAT:-1}
WORKERS=${BENCH_WORKERS:-1}
TARGETS=${BENCH_TARGETS:-switchboard nchan node}
CASES=${BENCH_CASES:-}
PORT=${BENCH_PORT:-18400}
# Pinning: the server (every target alike) on core 0, the generator on core 1. Unpinned,
# the scheduler moves both between the two cores and now and then runs them on the same
# one: measured on 1,000 subscribers x 100 msgs/s, Switchboard's CPU per delivery moved
# between 3.7 and 5.3 us and p99 between 5 and 8 ms from run to run; pinned, 3.56-3.59 us
# and 5.0-5.4 ms.
PIN_SERVER=() PIN_GEN=()
if [ "${BENCH_PIN:-1}" = 1 ] && [ "$(nproc)" -ge 2 ] && [ "$WORKERS" = 1 ] && command -v taskset >/dev/null; then
  PIN_SERVER=(taskset -c 0) PIN_GEN=(taskset -c 1)
fi

stamp=$(date +%Y-%m-%d-%H%M%S)
mkdir -p bench/results
RESULT=bench/results/$stamp.txt
KV=bench/results/$stamp.kv
WORK=$(mktemp -d /tmp/sb-bench.XXXXXX)
: >"$KV"

say() { echo "$@" | tee -a "$RESULT"; }

# ---- what the run needs -----------------------------------------------------------
ulimit -n "$(ulimit -Hn)"

install_deps() {
  local missing=()
  for p in nginx libnginx-mod-nchan; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "bench: installing ${missing[*]}"
    local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null || echo "bench: could not install ${missing[*]}; nchan is skipped"
  fi
  if [ ! -d bench/peers/node_modules/ws ] || [ bench/peers/package.json -nt bench/peers/node_modules ]; then
    echo "bench: npm install in bench/peers"
    (cd bench/peers && npm install --no-audit --no-fund --loglevel=error >/dev/null) \
      || echo "bench: npm install failed; the Node peers are skipped"
    touch bench/peers/node_modules 2>/dev/null || true
  fi
  if [ ! -x "$LG" ] || [ ! -x "$SB" ]; then
    cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build "$BUILD" -j "$(nproc)" --target sb_loadgen || true
    cmake --build "$BUILD" -j "$(nproc)" --target switchboard || true
  fi
  if [ ! -x "$LG" ]; then
    echo "bench: $LG is missing and could not be built" >&2
    exit 1
  fi
}

have_target() {
  case $1 in
    switchboard) [ -x "$SB" ] ;;
    nchan) command -v nginx >/dev/null && [ -f /usr/lib/nginx/modules/ngx_nchan_module.so ] ;;
    node-ws|node-sse) command -v node >/dev/null && [ -d bench/peers/node_modules/ws ] ;;
  esac
}

wanted() { # wanted TARGET CASE
  local t=${1%%-*}
  [[ " $TARGETS " == *" $t "* ]] || return 1
  [ -z "$CASES" ] || [[ " $CASES " == *" $2 "* ]]
}

# ---- servers ----------------------------------------------------------------------
SERVER_PID=""
SERVER_PIDS=""

wait_port() {
  for _ in $(seq 150); do
    port_busy "$1" && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_server() { # start_server TARGET; sets PORT, SERVER_PID, SERVER_PIDS
  # A fresh port for every server, skipping any that something else listens on (another
  # engineer's server would otherwise answer for ours).
  PORT=$((PORT + 1))
  while port_busy "$PORT"; do PORT=$((PORT + 1)); done
  local log=$WORK/$1-$PORT.log
  case $1 in
    switchboard)
      "${PIN_SERVER[@]}" "$SB" serve --listen "127.0.0.1:$PORT" --workers "$WORKERS" --log-level warn >"$log" 2>&1 &
      ;;
    nchan) "${PIN_SERVER[@]}" bench/peers/nchan.sh "$PORT" "$WORK/nchan-$PORT" >"$log" 2>&1 & ;;
    node-ws) "${PIN_SERVER[@]}" node bench/peers/ws-rooms.mjs "$PORT" >"$log" 2>&1 & ;;
    node-sse) "${PIN_SERVER[@]}" node bench/peers/sse-server.mjs "$PORT" >"$log" 2>&1 & ;;
  esac
  SERVER_PID=$!
  if ! wait_port "$PORT"; then
    say "bench: $1 did not start on port $PORT:"
    tail -5 "$log" | tee -a "$RESULT"
    stop_server
    return 1
  fi
  SERVER_PIDS=$SERVER_PID
  if [ "$1" = nchan ]; then
    # The worker does the work; the master is counted too (its share is ~0).
    local w
    w=$(pgrep -P "$SERVER_PID" | tr '\n' ',' | sed 's/,$//')
    [ -n "$w" ] && SERVER_PIDS="$SERVER_PID,$w"
  fi
  return 0
}

stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 100); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}

cleanup() {
  stop_server
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- one case ---------------------------------------------------------------------
# run_case CASE TARGET LOADGEN-ARGS...   (a fresh server for every run)
run_case() {
  local case=$1 target=$2
  shift 2
  wanted "$target" "$case" || return 0
  if ! have_target "$target"; then
    say "## $case / $target: skipped (not installed)"
    return 0
  fi
  for r in $(seq "$REPEAT"); do
    say ""
    say "## $case / $target (run $r of $REPEAT)"
    start_server "$target" || continue
    local out=$WORK/out.txt
    timeout 600 "${PIN_GEN[@]}" "$LG" --target "127.0.0.1:$PORT" --label "$target" --server-pid "$SERVER_PIDS" \
      "$@" 2>&1 | tee "$out" | tee -a "$RESULT" || true
    grep '^scenario=' "$out" | sed "s/^/case=$case run=$r /" >>"$KV" || true
    stop_server
  done
}

# ---- the scenarios ----------------------------------------------------------------
if [ "$QUICK" = 1 ]; then
  IDLE_N=2000 HOLD=3 DUR=3 DRAIN=3 FAN10K=2000 FAN10K_RATE=50 ROOMS=500 STORM=3000
else
  IDLE_N=19000 HOLD=10 DUR=10 DRAIN=5 FAN10K=10000 FAN10K_RATE=10 ROOMS=4500 STORM=15000
fi

install_deps

{
  echo "# Switchboard benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')," \
       "$(free -g | awk '/Mem:/{print $2}') GiB, kernel $(uname -r), ulimit -n $(ulimit -n)"
  echo "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# switchboard $(git rev-parse --short HEAD 2>/dev/null || echo '?') --workers $WORKERS;" \
       "nginx $(nginx -v 2>&1 | sed 's/.*nginx\///') + nchan" \
       "$(dpkg-query -W -f='${Version}' libnginx-mod-nchan 2>/dev/null || echo '?');" \
       "node $(node --version 2>/dev/null || echo '?')" \
       "ws $(node -p "require('./bench/peers/node_modules/ws/package.json').version" 2>/dev/null || echo '?')"
  echo "# command: BENCH_QUICK=$QUICK BENCH_REPEAT=$REPEAT make bench;" \
       "pinning: ${PIN_SERVER[*]:-none} (servers), ${PIN_GEN[*]:-none} (generator)"
} | tee "$RESULT"

COMMON=(--size 128 --drain "$DRAIN")

# 1. idle: connections held, server RSS per connection. WebSocket and SSE separately,
#    since one process holds fewer than 20,000 files here.
for t in switchboard nchan node-ws; do
  case $t in
    switchboard) sub=ws-json ;; nchan) sub=ws-url ;; node-ws) sub=room ;;
  esac
  run_case idle-ws "$t" --scenario idle --sub "$sub" --subs "$IDLE_N" --duration "$HOLD"
done
for t in switchboard nchan node-sse; do
  run_case idle-sse "$t" --scenario idle --sub sse --subs "$IDLE_N" --duration "$HOLD"
done

# 2. fan-out over WebSocket: one channel, 128-byte messages.
ws_args() { # the subscriber and publisher flavour of each target
  case $1 in
    switchboard) echo "--sub ws-json --pub http" ;;
    nchan) echo "--sub ws-url --pub http" ;;
    node-ws) echo "--sub room --pub room" ;;
  esac
}
for t in switchboard nchan node-ws; do
  # 1,000 subscribers x 1,000 msgs/s = 1,000,000 deliveries/s requested.
  # shellcheck disable=SC2046
  run_case fanout-1k-1000 "$t" --scenario fanout $(ws_args "$t") --subs 1000 --rate 1000 \
    --duration "$DUR" "${COMMON[@]}"
done
for t in switchboard nchan node-ws; do
  # 100,000 deliveries/s: the server CPU per delivered message, compared in this run.
  # shellcheck disable=SC2046
  run_case fanout-cpu-100k "$t" --scenario fanout $(ws_args "$t") --subs 1000 --rate 100 \
    --duration "$DUR" "${COMMON[@]}"
done
for t in switchboard nchan node-ws; do
  # The same 100,000 deliveries/s as 100 subscribers x 1,000 msgs/s: the generator reads
  # 100 sockets per message instead of 1,000, so latency shows the server rather than
  # the generator's own read walk (about 4 us per socket here, see bench/README.md).
  # shellcheck disable=SC2046
  run_case fanout-100-1000 "$t" --scenario fanout $(ws_args "$t") --subs 100 --rate 1000 \
    --duration "$DUR" "${COMMON[@]}"
done
for t in switchboard nchan node-ws; do
  # shellcheck disable=SC2046
  run_case fanout-10k "$t" --scenario fanout $(ws_args "$t") --subs "$FAN10K" \
    --rate "$FAN10K_RATE" --duration "$DUR" "${COMMON[@]}"
done
if [ "$QUICK" != 1 ]; then
  for t in switchboard nchan node-ws; do
    # The highest rate with 100 % delivery to 10,000 subscribers: a ladder on the same
    # connections that stops at the first rung with a loss or a publish the server
    # could not take; the table shows that rate and its p99.
    # shellcheck disable=SC2046
    run_case fanout-10k-max "$t" --scenario fanout $(ws_args "$t") --subs 10000 \
      --rate 10,20,40,80,160 --duration 5 --stop-on-loss "${COMMON[@]}"
  done
fi

# 3. fan-out over SSE at 100,000 deliveries/s.
for t in switchboard nchan node-sse; do
  run_case fanout-sse-100k "$t" --scenario fanout --sub sse --pub http --subs 1000 --rate 100 \
    --duration "$DUR" "${COMMON[@]}"
done

# 4. rooms of 4 raw WebSocket members, each member sending 1 msg/s. nchan has no rooms
#    (its pub/sub sockets echo to the sender), so the peer is the seed's Node server.
for t in switchboard node-ws; do
  run_case rooms "$t" --scenario rooms --rooms "$ROOMS" --members 4 --rate 1 \
    --duration "$DUR" "${COMMON[@]}"
done

# 5. HTTP publish throughput, no subscribers: 16 keep-alive connections with one request
#    in flight each (what real clients do), then 4 connections pipelining 32 each.
for t in switchboard nchan node-sse; do
  run_case publish "$t" --scenario publish --pub http --pubs 16 --window 1 --rate 0 \
    --duration "$DUR" "${COMMON[@]}"
done
for t in switchboard nchan node-sse; do
  run_case publish-pipelined "$t" --scenario publish --pub http --pubs 4 --window 32 --rate 0 \
    --duration "$DUR" "${COMMON[@]}"
done

# 6. connect storm: WebSocket upgrades as fast as 512 connects in flight allow, each
#    joining its channel in the upgrade itself (Switchboard and Node: ?room=, nchan: its
#    channel URL), so no target pays an extra round trip.
for t in switchboard nchan node-ws; do
  case $t in
    nchan) sub=ws-url ;; *) sub=room ;;
  esac
  run_case storm "$t" --scenario storm --sub "$sub" --subs "$STORM" --concurrency 512
done

# 7. instructions per delivered message under callgrind (Switchboard only): repeatable
#    on a noisy machine, so the figure to compare between commits.
if wanted switchboard callgrind && have_target switchboard && command -v valgrind >/dev/null; then
  say ""
  say "## callgrind / switchboard"
  BUILD_RELEASE=$BUILD CG_PORT=$((PORT + 1)) bench/callgrind.sh 2>&1 | tee "$WORK/cg.txt" \
    | tee -a "$RESULT" | grep -v '^scenario=' || true
  grep '^scenario=callgrind' "$WORK/cg.txt" | sed 's/^/case=callgrind run=1 target=switchboard /' \
    >>"$KV" || true
fi

# ---- the table ----------------------------------------------------------------------
say ""
say "# Summary (median of $REPEAT run(s)); ratio = switchboard / peer."
say "# 'lower' metrics: a ratio below 1 means Switchboard leads; 'higher' metrics: above 1."
awk -v quick="$([ "$QUICK" = 1 ] && echo 1 || echo 0)" -f bench/summary.awk "$KV" | tee -a "$RESULT"
say ""
say "full output: $RESULT (key=value lines: $KV)"

# ---- durable storage (issue 7): its own script and table ---------------------------------
# Publish throughput and p99 with --fsync always|batch|off next to Redis XADD under
# appendfsync always|everysec (bench/storage/run.sh; case name "storage").
if wanted switchboard storage; then
  say ""
  BUILD_RELEASE=$BUILD BENCH_QUICK=$QUICK BENCH_WORKERS=$WORKERS STORAGE_PORT=$((PORT + 3)) \
    bench/storage/run.sh 2>&1 | tee -a "$RESULT" || true
fi
