#!/usr/bin/env bash
# Instructions per message from valgrind --tool=callgrind, in one of two modes.
# Instruction counts (user space only, no kernel) do not care how noisy the machine
# is, so these are the figures to compare between commits.
#
# CG_MODE=fanout (default), issue 9: instructions per delivered message, a fixed small
# fan-out (sb_loadgen). Only the publish phase is counted: the server starts with
# instrumentation off, and the generator's --before-phase / --after-phase hooks switch
# it on and dump it around the phase, so startup, connects and shutdown are left out.
#
# CG_MODE=publish, issue 7: instructions per HTTP publish, closed-loop publishers from
# bench/storage's client (sb_storage). A warm-up run goes first; callgrind_control
# switches instrumentation on and dumps it around the measured run.
# (bench/callgrind-publish.sh is this mode.)
#
# usage: bench/callgrind.sh            (after make build)
# env:   BUILD_RELEASE=build/release  CG_MODE=fanout|publish  CG_TOP=20 (functions listed)
#        fanout:  CG_SUBS=100  CG_RATE=10  CG_SECONDS=5  CG_SUB=ws-json|sse
#        publish: CGP_CONNS=16  CGP_SECONDS=5  CGP_SIZE=128
#                 CGP_ARGS="--data-dir DIR --fsync batch" (extra server flags; default memory mode)
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${BUILD_RELEASE:-build/release}
SB=$BUILD/switchboard
MODE=${CG_MODE:-fanout}
TOP=${CG_TOP:-20}
PORT=${CG_PORT:-18399}
SERVER_ARGS=()
case $MODE in
  fanout)
    CLIENT=$BUILD/sb_loadgen
    SUBS=${CG_SUBS:-100}
    RATE=${CG_RATE:-10}
    SECONDS_=${CG_SECONDS:-5}
    SUB=${CG_SUB:-ws-json}
    ;;
  publish)
    CLIENT=$BUILD/sb_storage
    CONNS=${CGP_CONNS:-16}
    SECONDS_=${CGP_SECONDS:-5}
    SIZE=${CGP_SIZE:-128}
    # shellcheck disable=SC2206
    SERVER_ARGS=(${CGP_ARGS:-})
    ;;
  *) echo "callgrind.sh: CG_MODE is fanout or publish, not $MODE" >&2; exit 2 ;;
esac

for tool in valgrind callgrind_control callgrind_annotate; do
  command -v "$tool" >/dev/null || { echo "callgrind.sh: needs $tool (apt-get install valgrind)" >&2; exit 1; }
done
[ -x "$SB" ] && [ -x "$CLIENT" ] || { echo "callgrind.sh: build first (make build)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/sb-callgrind.XXXXXX)
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

ulimit -n "$(ulimit -Hn)"
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/cg.%p" \
  "$SB" serve --listen "127.0.0.1:$PORT" --workers 1 --log-level warn "${SERVER_ARGS[@]}" >"$WORK/server.log" 2>&1 &
PID=$!
for _ in $(seq 300); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  kill -0 "$PID" 2>/dev/null || { cat "$WORK/server.log"; exit 1; }
  sleep 0.1
done

profile() { # $1: the dump; prints the top functions by self cost
  echo
  echo "# profile of the measured run (self cost, top $TOP)"
  callgrind_annotate "$1" 2>/dev/null | grep -E '^ *[0-9,]+ .*:' | head -"$TOP" || true
  echo
}

the_dump() {
  local dump
  dump=$(ls "$WORK"/cg."$PID".* 2>/dev/null | head -1 || true)
  [ -n "$dump" ] || { echo "callgrind.sh: no dump was written" >&2; exit 1; }
  echo "$dump"
}

if [ "$MODE" = publish ]; then
  "$CLIENT" --proto http --target "127.0.0.1:$PORT" --conns "$CONNS" --duration 2 --warmup 0 --size "$SIZE" >/dev/null
  callgrind_control -i on "$PID" >/dev/null
  line=$("$CLIENT" --proto http --target "127.0.0.1:$PORT" --conns "$CONNS" --duration "$SECONDS_" --warmup 0 \
    --size "$SIZE" --label callgrind)
  callgrind_control -d publish "$PID" >/dev/null
  callgrind_control -i off "$PID" >/dev/null
  echo "$line"
  dump=$(the_dump)
  ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
  acked=$(sed -n 's/.* acked=\([0-9]*\).*/\1/p' <<<"$line")
  profile "$dump"
  awk -v ir="$ir" -v a="$acked" -v c="$CONNS" 'BEGIN {
    printf "callgrind: %s connections, %s publishes acknowledged, %s instructions, %.0f per publish\n",
           c, a, ir, (a > 0 ? ir / a : 0)
    printf "scenario=callgrind-publish conns=%s acked=%s ir=%s ir_per_publish=%.0f\n", c, a, ir, (a > 0 ? ir / a : 0)
  }'
  exit 0
fi

# The hooks run while the generator's loop waits, outside its measured window.
"$CLIENT" --scenario fanout --target "127.0.0.1:$PORT" --label switchboard-callgrind --sub "$SUB" \
  --pub http --subs "$SUBS" --rate "$RATE" --duration "$SECONDS_" --drain 30 --settle 1 \
  --before-phase "callgrind_control -i on $PID >/dev/null 2>&1" \
  --after-phase "callgrind_control -d phase $PID >/dev/null 2>&1; callgrind_control -i off $PID >/dev/null 2>&1" \
  | tee "$WORK/lg.txt"

dump=$(the_dump)
ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
delivered=$(grep -o 'unique=[0-9]*' "$WORK/lg.txt" | head -1 | cut -d= -f2)
published=$(grep -o ' accepted=[0-9]*' "$WORK/lg.txt" | head -1 | cut -d= -f2)
profile "$dump"
awk -v ir="$ir" -v d="$delivered" -v p="$published" -v s="$SUBS" -v kind="$SUB" 'BEGIN {
  printf "callgrind: %s subscribers (%s), %s messages published, %s delivered\n", s, kind, p, d
  printf "callgrind: %s instructions in the phase, %.0f per delivered message, %.0f per publish\n",
         ir, (d > 0 ? ir / d : 0), (p > 0 ? ir / p : 0)
  printf "scenario=callgrind sub=%s subs=%s published=%s delivered=%s ir=%s ir_per_delivery=%.0f\n",
         kind, s, p, d, ir, (d > 0 ? ir / d : 0)
}'
