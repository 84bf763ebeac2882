#!/usr/bin/env bash
# Instructions per delivered message (issue 9): a fixed small fan-out against Switchboard
# running under valgrind --tool=callgrind. Instruction counts do not care how noisy the
# machine is, so this is the figure to compare between commits.
#
# Only the publish phase is counted: the server starts with instrumentation off, and the
# generator's --before-phase / --after-phase hooks switch it on and dump it around the
# phase, so startup, connects and shutdown are left out.
#
# usage: bench/callgrind.sh            (after make build)
# env:   BUILD_RELEASE=build/release  CG_SUBS=100  CG_RATE=10  CG_SECONDS=5  CG_SUB=ws-json|sse
#        CG_TOP=20 (functions listed from the profile)
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=${BUILD_RELEASE:-build/release}
SB=$BUILD/switchboard
LG=$BUILD/sb_loadgen
SUBS=${CG_SUBS:-100}
RATE=${CG_RATE:-10}
SECONDS_=${CG_SECONDS:-5}
SUB=${CG_SUB:-ws-json}
TOP=${CG_TOP:-20}
PORT=${CG_PORT:-18399}

for tool in valgrind callgrind_control callgrind_annotate; do
  command -v "$tool" >/dev/null || { echo "callgrind.sh: needs $tool (apt-get install valgrind)" >&2; exit 1; }
done
[ -x "$SB" ] && [ -x "$LG" ] || { echo "callgrind.sh: build first (make build)" >&2; exit 1; }

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
  "$SB" serve --listen "127.0.0.1:$PORT" --workers 1 --log-level warn >"$WORK/server.log" 2>&1 &
PID=$!
for _ in $(seq 300); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  kill -0 "$PID" 2>/dev/null || { cat "$WORK/server.log"; exit 1; }
  sleep 0.1
done

# The hooks run while the generator's loop waits, outside its measured window.
"$LG" --scenario fanout --target "127.0.0.1:$PORT" --label switchboard-callgrind --sub "$SUB" \
  --pub http --subs "$SUBS" --rate "$RATE" --duration "$SECONDS_" --drain 30 --settle 1 \
  --before-phase "callgrind_control -i on $PID >/dev/null 2>&1" \
  --after-phase "callgrind_control -d phase $PID >/dev/null 2>&1; callgrind_control -i off $PID >/dev/null 2>&1" \
  | tee "$WORK/lg.txt"

dump=$(ls "$WORK"/cg."$PID".* 2>/dev/null | head -1 || true)
[ -n "$dump" ] || { echo "callgrind.sh: no dump was written" >&2; exit 1; }
ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
delivered=$(grep -o 'unique=[0-9]*' "$WORK/lg.txt" | head -1 | cut -d= -f2)
published=$(grep -o ' accepted=[0-9]*' "$WORK/lg.txt" | head -1 | cut -d= -f2)
echo
echo "# profile of the publish phase (self cost, top $TOP)"
callgrind_annotate "$dump" 2>/dev/null | grep -E '^ *[0-9,]+ .*:' | head -"$TOP" || true
echo
awk -v ir="$ir" -v d="$delivered" -v p="$published" -v s="$SUBS" -v kind="$SUB" 'BEGIN {
  printf "callgrind: %s subscribers (%s), %s messages published, %s delivered\n", s, kind, p, d
  printf "callgrind: %s instructions in the phase, %.0f per delivered message, %.0f per publish\n",
         ir, (d > 0 ? ir / d : 0), (p > 0 ? ir / p : 0)
  printf "scenario=callgrind sub=%s subs=%s published=%s delivered=%s ir=%s ir_per_delivery=%.0f\n",
         kind, s, p, d, ir, (d > 0 ? ir / d : 0)
}'
