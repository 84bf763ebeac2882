#!/usr/bin/env bash
# Clustering over Redis (docs/cluster.md), measured against the peer that clusters
# the same way: nchan with its Redis storage (nginx + libnginx-mod-nchan, each nginx
# pointed at one Redis). Every target is two server processes and one redis-server
# on loopback; subscribers connect to node B, publishers to node A, so every
# delivery crossed the cluster. A single Switchboard process runs the same load as
# the reference for what the cluster costs.
#
#   bench/cluster.sh                   one run of every case (about 2 minutes)
#   BENCH_REPEAT=3 bench/cluster.sh    every case 3 times, the table shows medians
#   CLUSTER_CASES=publish CLUSTER_TARGETS=switchboard BUILD_RELEASE=/tmp/other/build/release \
#     bench/cluster.sh                 one case against one target, built elsewhere (A/B)
#
# Cases: fan-out of 128-byte messages to 1,000 WebSocket subscribers at 100 msg/s
# (100k deliveries/s; the figure is the CPU of all three processes per delivery)
# and at 1,000 msg/s (1M deliveries/s requested), then HTTP publish throughput with
# 4 keep-alive publishers (window 64) and 16 subscribers. No pinning: five
# processes share two cores. Results: printed, and bench/results/cluster-<date>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD_RELEASE:-build/release}
LG=$BUILD/sb_loadgen
SB=$BUILD/switchboard
REPEAT=${BENCH_REPEAT:-1}
PORT=${BENCH_PORT:-18600}
REDIS=${REDIS_SERVER:-/usr/bin/redis-server}
ulimit -n "$(ulimit -Hn)"

if [ ! -x "$LG" ] || [ ! -x "$SB" ]; then
  cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$BUILD" -j "$(nproc)" --target sb_loadgen switchboard
fi
[ -x "$REDIS" ] || { echo "cluster bench: needs redis-server (apt-get install redis-server)" >&2; exit 1; }
have_nchan=1
command -v nginx >/dev/null && [ -f /usr/lib/nginx/modules/ngx_nchan_module.so ] || {
  echo "cluster bench: nginx + libnginx-mod-nchan missing; nchan is skipped"; have_nchan=0; }

stamp=$(date +%Y-%m-%d-%H%M%S)
mkdir -p bench/results
RESULT=bench/results/cluster-$stamp.txt
WORK=$(mktemp -d /tmp/sb-cluster-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
say() { echo "$@" | tee -a "$RESULT"; }

wait_port() { # wait_port PORT: until something listens (10 s)
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}

stop_all() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
    kill -9 "$p" 2>/dev/null || true
  done
  PIDS=()
}

# start TARGET: sets A (publish port), B (subscribe port), SERVER_PIDS, SUB, PUB_PATH
start() {
  local t=$1 rp=$((PORT)) a=$((PORT + 1)) b=$((PORT + 2))
  PORT=$((PORT + 3))
  SUB=ws-json A=$a B=$b
  case $t in
    switchboard-1)
      "$SB" serve --listen "127.0.0.1:$a" --workers 1 --log-level warn >"$WORK/a.log" 2>&1 &
      PIDS+=($!); SERVER_PIDS=$!
      B=$a
      wait_port "$a" ;;
    switchboard)
      "$REDIS" --port "$rp" --bind 127.0.0.1 --save '' --appendonly no >"$WORK/redis.log" 2>&1 &
      PIDS+=($!); local r=$!
      wait_port "$rp"
      local pre="bench$RANDOM"
      "$SB" serve --listen "127.0.0.1:$a" --workers 1 --log-level warn --cluster-redis "127.0.0.1:$rp" \
        --cluster-prefix "$pre" >"$WORK/a.log" 2>&1 &
      PIDS+=($!); local pa=$!
      "$SB" serve --listen "127.0.0.1:$b" --workers 1 --log-level warn --cluster-redis "127.0.0.1:$rp" \
        --cluster-prefix "$pre" >"$WORK/b.log" 2>&1 &
      PIDS+=($!); local pb=$!
      wait_port "$a"; wait_port "$b"
      SERVER_PIDS="$pa,$pb,$r" ;;
    nchan)
      "$REDIS" --port "$rp" --bind 127.0.0.1 --save '' --appendonly no >"$WORK/redis.log" 2>&1 &
      PIDS+=($!); local r=$!
      wait_port "$rp"
      NCHAN_REDIS="127.0.0.1:$rp" bench/peers/nchan.sh "$a" "$WORK/nchan-a" >"$WORK/na.log" 2>&1 &
      PIDS+=($!); local pa=$!
      NCHAN_REDIS="127.0.0.1:$rp" bench/peers/nchan.sh "$b" "$WORK/nchan-b" >"$WORK/nb.log" 2>&1 &
      PIDS+=($!); local pb=$!
      wait_port "$a"; wait_port "$b"
      sleep 1 # nchan's workers connect to Redis after they listen
      # nginx master + worker: the worker does the work; count both.
      SERVER_PIDS="$pa,$(pgrep -P "$pa" | head -1),$pb,$(pgrep -P "$pb" | head -1),$r"
      SUB=ws-url ;;
  esac
}

# run CASE TARGET -> one kv line in $WORK/kv
run_case() {
  local c=$1 t=$2 out
  start "$t"
  local common=(--target "127.0.0.1:$B" --pub-target "127.0.0.1:$A" --label "$t" --sub "$SUB"
                --pub http --server-pid "$SERVER_PIDS" --settle 1)
  case $c in
    fanout-100) out=$("$LG" --scenario fanout "${common[@]}" --subs 1000 --rate 100 --duration 8 --drain 3) ;;
    fanout-1000) out=$("$LG" --scenario fanout "${common[@]}" --subs 1000 --rate 1000 --duration 8 --drain 5) ;;
    publish) out=$("$LG" --scenario publish "${common[@]}" --subs 16 --pubs 4 --window 64 --rate 0 --duration 8 --drain 3) ;;
  esac
  stop_all
  local kv; kv=$(grep '^scenario=' <<<"$out" | tail -1)
  echo "case=$c $kv" >>"$WORK/kv"
}

targets=(switchboard nchan switchboard-1)
[ $have_nchan = 1 ] || targets=(switchboard switchboard-1)
# CLUSTER_TARGETS / CLUSTER_CASES pick a subset (an A/B of two builds with BUILD_RELEASE).
[ -z "${CLUSTER_TARGETS:-}" ] || read -r -a targets <<<"$CLUSTER_TARGETS"
cases=(fanout-100 fanout-1000 publish)
[ -z "${CLUSTER_CASES:-}" ] || read -r -a cases <<<"$CLUSTER_CASES"
say "cluster bench $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
say "two nodes + one redis-server per target; subscribers on node B, publishers on node A; unpinned"
for ((i = 1; i <= REPEAT; i++)); do
  for c in "${cases[@]}"; do
    for t in "${targets[@]}"; do
      echo "  round $i: $c against $t" >&2
      run_case "$c" "$t"
    done
  done
done

# Medians per (case, target) of the figures each case is about.
med() { # med CASE TARGET KEY
  { grep "^case=$1 " "$WORK/kv" | grep " target=$2 " | grep -o " $3=[^ ]*" || true; } | cut -d= -f2 | sort -g |
    awk '{a[NR]=$1} END {if (NR) print a[int((NR+1)/2)]; else print "-"}'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a+0 > 0 && b+0 > 0) printf "%.2fx", a / b; else print "-" }'; }
row() { # row LABEL CASE KEY
  local s n o
  s=$(med "$2" switchboard "$3"); n=$(med "$2" nchan "$3"); o=$(med "$2" switchboard-1 "$3")
  printf '| %s | %s | %s | %s | %s |\n' "$1" "$s" "$n" "$o" "$(ratio "$s" "$n")" | tee -a "$RESULT"
}
say ""
say "| case | Switchboard cluster | nchan + Redis | Switchboard, one node | cluster vs nchan |"
say "|---|---:|---:|---:|---:|"
row "1,000 subs x 100/s: server CPU per delivery (us, all processes)" fanout-100 server_us_per_delivery
row "1,000 subs x 100/s: p99 (ms)" fanout-100 p99_ms
row "1,000 subs x 100/s: lost (%)" fanout-100 loss_pct
row "1,000 subs x 1,000/s: delivered/s" fanout-1000 delivered_per_s
row "1,000 subs x 1,000/s: p99 (ms)" fanout-1000 p99_ms
row "1,000 subs x 1,000/s: lost (%)" fanout-1000 loss_pct
row "HTTP publish, 4 x 64 in flight: publishes/s" publish pub_per_s
row "HTTP publish: response p99 (ms)" publish rsp_p99_ms
row "HTTP publish: server CPU per publish (us)" publish server_us_per_publish
say ""
say "raw: $RESULT.kv"
cp "$WORK/kv" "$RESULT.kv"
