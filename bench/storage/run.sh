#!/usr/bin/env bash
# Durable publish benchmark (issue 7): Switchboard with --fsync always, batch and off
# (and memory mode, for reference) side by side with Redis XADD under appendfsync
# always and everysec, in one run, on loopback, with the same closed-loop client
# (bench/storage/main.c, built as sb_storage): C connections, one publish in flight
# each, every reply awaited. Switchboard publishes over HTTP keep-alive
# (POST /v1/channels/{ch}/messages, acknowledged by 201); Redis gets
# XADD ch MAXLEN ~ 1000 * data <payload> (acknowledged by the entry id). Each case
# gets a fresh server and a fresh data directory. Not a timed test: nothing fails on
# a slow number.
#
# Environment:
#   STORAGE_CONNS="16 256"   connection counts to run (each a separate table block)
#   STORAGE_DURATION=5       measured seconds per case (after a 1 s warm-up)
#   STORAGE_SIZE=128         payload bytes
#   STORAGE_TARGETS="..."    subset of: sb-memory sb-off sb-batch sb-always
#                            redis-everysec redis-always
#   STORAGE_REPEAT=3         run every case N times, interleaved (each round runs every
#                            target once); the table shows medians (default 3: fsync
#                            latency on a shared machine moves by 10x within minutes)
#   BENCH_QUICK=1            3-second cases, one round
#   BENCH_WORKERS=1          Switchboard --workers (1: one core, like single-threaded Redis)
#   BUILD_RELEASE=DIR        where switchboard and sb_storage are (default build/release)
#   STORAGE_PORT=18700       loopback port
#   STORAGE_DIR=DIR          where the data directories go (default: a temp dir under
#                            /var/tmp, on the same disk as a real data directory)
# Results: printed, and written to bench/results/storage-<date>.txt (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/../.."

BUILD=${BUILD_RELEASE:-build/release}
SB=$BUILD/switchboard
CLIENT=$BUILD/sb_storage
CONNS=${STORAGE_CONNS:-16 256}
DUR=${STORAGE_DURATION:-5}
REPEAT=${STORAGE_REPEAT:-3}
[ "${BENCH_QUICK:-0}" = 1 ] && DUR=3 && REPEAT=1
SIZE=${STORAGE_SIZE:-128}
WORKERS=${BENCH_WORKERS:-1}
PORT=${STORAGE_PORT:-18700}
TARGETS=${STORAGE_TARGETS:-sb-memory sb-off sb-batch sb-always redis-everysec redis-always}
WORK=$(mktemp -d "${STORAGE_DIR:-/var/tmp}/sb-storage-bench.XXXXXX")
stamp=$(date +%Y-%m-%d-%H%M%S)
mkdir -p bench/results
RESULT=bench/results/storage-$stamp.txt
KV=$WORK/results.kv
: >"$KV"
HZ=$(getconf CLK_TCK)

say() { echo "$@" | tee -a "$RESULT"; }

# ---- what the run needs ---------------------------------------------------------------
if ! command -v redis-server >/dev/null; then
  echo "bench/storage: installing redis-server"
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    redis-server >/dev/null || echo "bench/storage: no redis-server; its rows are skipped"
fi
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
cmake --build "$BUILD" -j "$(nproc)" --target switchboard sb_storage >/dev/null

SERVER_PID=""
stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}
cleanup() { stop_server; rm -rf "$WORK"; }
trap cleanup EXIT

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_ready() {
  for _ in $(seq 100); do
    port_open "$PORT" && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# The disk's fdatasync latency right now, from 100 small appends (python3, if present):
# the figure that decides how far acknowledging after the fsync can go.
fsync_probe() {
  command -v python3 >/dev/null || { echo "fdatasync probe skipped (no python3)"; return; }
  python3 - "$WORK/probe" <<'PY'
import os, sys, time
fd = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY, 0o644)
t = []
for _ in range(100):
    os.write(fd, b"x" * 200)
    a = time.perf_counter(); os.fdatasync(fd); t.append((time.perf_counter() - a) * 1e6)
os.close(fd); os.unlink(sys.argv[1]); t.sort()
print("fdatasync of a 200-byte append here: p50 %.0f us, p90 %.0f us, p99 %.0f us" % (t[50], t[90], t[98]))
PY
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# start TARGET DIR: starts the server for TARGET with its data under DIR.
start() {
  local t=$1 dir=$2
  mkdir -p "$dir"
  case $t in
    sb-memory)
      "$SB" serve --listen "127.0.0.1:$PORT" --workers "$WORKERS" 2>"$dir.log" &
      ;;
    sb-*)
      "$SB" serve --listen "127.0.0.1:$PORT" --workers "$WORKERS" --data-dir "$dir" \
        --fsync "${t#sb-}" 2>"$dir.log" &
      ;;
    redis-*)
      redis-server --port "$PORT" --bind 127.0.0.1 --dir "$dir" --appendonly yes \
        --appendfsync "${t#redis-}" --save "" --protected-mode no --daemonize no \
        --logfile "$dir.log" &
      ;;
  esac
  SERVER_PID=$!
  wait_ready
}

run_case() { # run_case TARGET CONNS ROUND
  local t=$1 c=$2 r=$3 dir=$WORK/$1-$2 proto=http
  [[ $t == redis-* ]] && proto=redis
  if [[ $t == redis-* ]] && ! command -v redis-server >/dev/null; then return 0; fi
  if ! start "$t" "$dir"; then
    say "bench/storage: $t did not start; see $dir.log"
    stop_server
    return 0
  fi
  local t0 t1 line
  t0=$(cpu_ticks "$SERVER_PID")
  line=$("$CLIENT" --proto "$proto" --target "127.0.0.1:$PORT" --conns "$c" --duration "$DUR" \
    --size "$SIZE" --label "$t" || true)
  t1=$(cpu_ticks "$SERVER_PID")
  stop_server
  # Records per fsync, from the store's closing log line (Switchboard only).
  local fs="-"
  if [[ $t == sb-always || $t == sb-batch ]]; then
    local ap fy
    ap=$(sed -n 's/.*msg="storage: closed".* appends=\([0-9]*\) .*/\1/p' "$dir.log")
    fy=$(sed -n 's/.*msg="storage: closed".* fsyncs=\([0-9]*\) .*/\1/p' "$dir.log")
    [ -n "$ap" ] && [ -n "$fy" ] && [ "$fy" -gt 0 ] && fs=$(awk -v a="$ap" -v f="$fy" \
      'BEGIN { printf "%.1f", a / f }')
  fi
  local acked cpu_us
  acked=$(sed -n 's/.* acked=\([0-9]*\).*/\1/p' <<<"$line")
  cpu_us=$(awk -v a="${acked:-0}" -v d=$((t1 - t0)) -v hz="$HZ" \
    'BEGIN { if (a > 0) printf "%.1f", d / hz * 1e6 / a; else print "-" }')
  say "round=$r $line server_cpu_us_per_publish=$cpu_us records_per_fsync=$fs"
  echo "round=$r $line server_cpu_us_per_publish=$cpu_us records_per_fsync=$fs" >>"$KV"
  rm -rf "$dir"
}

say "# bench/storage $stamp: closed-loop publish, ${DUR}s per case, ${SIZE}-byte payloads,"
say "# Switchboard --workers $WORKERS over HTTP keep-alive; Redis $(redis-server --version 2>/dev/null | awk '{print $3}') XADD; data in $WORK"
say "# machine: $(nproc) cores, $(uname -r); load before start: $(cut -d' ' -f1-3 /proc/loadavg)"
say "# $(fsync_probe)"
for r in $(seq "$REPEAT"); do
  for c in $CONNS; do
    for t in $TARGETS; do run_case "$t" "$c" "$r"; done
  done
done

say "# after the runs: $(fsync_probe); load $(cut -d' ' -f1-3 /proc/loadavg)"
say ""
say "# Summary (median of $REPEAT round(s)): acknowledged publishes per second and latency;"
say "# ratio = target / Redis (rate: above 1 is faster; p99: below 1 is better)"
awk -f bench/storage/table.awk "$KV" | tee -a "$RESULT"
say ""
say "full output: $RESULT"
