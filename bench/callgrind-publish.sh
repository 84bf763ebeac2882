#!/usr/bin/env bash
# Instructions per HTTP publish: Switchboard under valgrind --tool=callgrind, taking
# closed-loop publishes from bench/storage's client (sb_storage). Like
# bench/callgrind.sh this counts user-space instructions only (no kernel), which do
# not care how noisy the machine is: the figure to compare between commits.
#
# Only the measured run is counted: instrumentation starts off, a warm-up run
# goes first, and callgrind_control switches it on and dumps it around the run.
#
# usage: bench/callgrind-publish.sh      (after make build)
# env:   BUILD_RELEASE=build/release  CGP_CONNS=16  CGP_SECONDS=5  CGP_SIZE=128
#        CGP_ARGS="--data-dir DIR --fsync batch" (extra server flags; default memory mode)
#        CG_TOP=20 (functions listed from the profile)
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${BUILD_RELEASE:-build/release}
SB=$BUILD/switchboard
CL=$BUILD/sb_storage
CONNS=${CGP_CONNS:-16}
SECS=${CGP_SECONDS:-5}
SIZE=${CGP_SIZE:-128}
TOP=${CG_TOP:-20}
PORT=${CG_PORT:-18398}

for tool in valgrind callgrind_control callgrind_annotate; do
  command -v "$tool" >/dev/null || { echo "callgrind-publish.sh: needs $tool (apt-get install valgrind)" >&2; exit 1; }
done
[ -x "$SB" ] && [ -x "$CL" ] || { echo "callgrind-publish.sh: build first (make build)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/sb-callgrind-pub.XXXXXX)
PID=""
cleanup() {
  if [ -n "$PID" ]; then
    kill -TERM "$PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# shellcheck disable=SC2086
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/cg.%p" \
  "$SB" serve --listen "127.0.0.1:$PORT" --workers 1 --log-level warn ${CGP_ARGS:-} >"$WORK/server.log" 2>&1 &
PID=$!
for _ in $(seq 300); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  kill -0 "$PID" 2>/dev/null || { cat "$WORK/server.log"; exit 1; }
  sleep 0.1
done

"$CL" --proto http --target "127.0.0.1:$PORT" --conns "$CONNS" --duration 2 --warmup 0 --size "$SIZE" >/dev/null
callgrind_control -i on "$PID" >/dev/null
line=$("$CL" --proto http --target "127.0.0.1:$PORT" --conns "$CONNS" --duration "$SECS" --warmup 0 \
  --size "$SIZE" --label callgrind)
callgrind_control -d publish "$PID" >/dev/null
callgrind_control -i off "$PID" >/dev/null
echo "$line"

dump=$(ls "$WORK"/cg."$PID".* 2>/dev/null | head -1 || true)
[ -n "$dump" ] || { echo "callgrind-publish.sh: no dump was written" >&2; exit 1; }
ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
acked=$(sed -n 's/.* acked=\([0-9]*\).*/\1/p' <<<"$line")
echo
echo "# profile of the measured run (self cost, top $TOP)"
callgrind_annotate "$dump" 2>/dev/null | grep -E '^ *[0-9,]+ .*:' | head -"$TOP" || true
echo
awk -v ir="$ir" -v a="$acked" -v c="$CONNS" 'BEGIN {
  printf "callgrind: %s connections, %s publishes acknowledged, %s instructions, %.0f per publish\n",
         c, a, ir, (a > 0 ? ir / a : 0)
  printf "scenario=callgrind-publish conns=%s acked=%s ir=%s ir_per_publish=%.0f\n", c, a, ir, (a > 0 ? ir / a : 0)
}'
