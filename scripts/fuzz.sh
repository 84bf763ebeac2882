#!/usr/bin/env bash
# Runs every libFuzzer target for FUZZ_SECONDS (default 60) on its seed corpus,
# two at a time on this 2-core machine. Any crash fails the run.
set -euo pipefail
build=${1:-build/test}
secs=${FUZZ_SECONDS:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
shopt -s nullglob
fuzzers=("$build"/fuzz_*)
[ ${#fuzzers[@]} -gt 0 ] || { echo "fuzz: no fuzz targets built"; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pids=(); names=()
run_one() {
  local f=$1 name; name=$(basename "$f")
  local seeds="$root/tests/fuzz/corpus/${name#fuzz_}"
  mkdir -p "$work/$name"
  [ -d "$seeds" ] && cp -r "$seeds"/. "$work/$name"/ 2>/dev/null || true
  ASAN_OPTIONS=detect_leaks=1 "$f" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$work/$name-" -print_final_stats=1 "$work/$name" >"$work/$name.log" 2>&1
}
fail=0
for f in "${fuzzers[@]}"; do
  run_one "$f" & pids+=($!); names+=("$(basename "$f")")
  if [ ${#pids[@]} -ge 2 ]; then
    wait "${pids[0]}" || { echo "fuzz: ${names[0]} FAILED"; tail -40 "$work/${names[0]}.log"; fail=1; }
    pids=("${pids[@]:1}"); names=("${names[@]:1}")
  fi
done
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || { echo "fuzz: ${names[$i]} FAILED"; tail -40 "$work/${names[$i]}.log"; fail=1; }
done
passed=0; failed=0
for f in "${fuzzers[@]}"; do
  n=$(basename "$f")
  if grep -q "Done [0-9]* runs" "$work/$n.log"; then
    runs=$(grep -o "Done [0-9]* runs" "$work/$n.log" | awk '{print $2}')
    echo "fuzz: $n ok, $runs runs in ${secs}s"; passed=$((passed+1))
  else
    failed=$((failed+1))
  fi
done
echo "fuzz: $passed passed, $failed failed"
exit $fail
