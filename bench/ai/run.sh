#!/usr/bin/env bash
# AI relay benchmark: added time to first token and per-token relay latency
# (p50/p99) at 1, 100 and 1,000 concurrent streams, Switchboard's POST
# /v1/ai/chat versus reading the same upstream directly. The upstream stamps
# every token with the monotonic clock, so latency is measured per token, not
# per stream. Not a test: numbers depend on the machine (a release build is
# used; the reader and the upstream are Node processes and, at 1,000 streams,
# part of what is measured on a small machine).
#   bench/ai/run.sh [path/to/switchboard]     (default build/release/switchboard)
# Env: TOKENS (50), INTERVAL ms between tokens (20), LEVELS ("1 100 1000"), WORKERS (2),
# ROUNDS (measured rounds per level; default: about 3,000 tokens, 1-20 rounds).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="${1:-$root/build/release/switchboard}"
tokens="${TOKENS:-50}"
interval="${INTERVAL:-20}"
levels="${LEVELS:-1 100 1000}"
workers="${WORKERS:-2}"
port=$((20000 + RANDOM % 20000))
up_log=$(mktemp); sb_log=$(mktemp)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -f "$up_log" "$sb_log"; }
trap cleanup EXIT

ulimit -n 65536 2>/dev/null || true
node "$here/upstream.mjs" --port 0 --tokens "$tokens" --interval "$interval" >"$up_log" &
pids+=($!)
for _ in $(seq 50); do grep -q listening "$up_log" && break; sleep 0.1; done
up=$(grep -o 'http://[0-9.:]*' "$up_log")
BENCH_AI_KEY=bench "$bin" serve --listen "127.0.0.1:$port" --workers "$workers" --ai-upstream "$up/v1" \
  --ai-key-env BENCH_AI_KEY --ai-max-streams 5000 --ai-max-streams-per-user 5000 --log-level warn >"$sb_log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done

echo "tokens/stream=$tokens interval=${interval}ms workers=$workers binary=$bin"
printf '%-8s %-7s %10s %10s %10s %10s %8s\n' streams path ttft_p50 ttft_p99 tok_p50 tok_p99 failed
for n in $levels; do
  # About 3,000 measured tokens per path: more rounds for few streams (1-20).
  rounds=$(( 3000 / (n * tokens) ))
  rounds=$(( rounds < 1 ? 1 : (rounds > 20 ? 20 : rounds) ))
  rounds=${ROUNDS:-$rounds}
  d=$(node "$here/client.mjs" --url "$up" --mode direct --streams "$n" --rounds "$rounds")
  r=$(node "$here/client.mjs" --url "http://127.0.0.1:$port" --mode relay --streams "$n" --rounds "$rounds")
  for line in "$d" "$r"; do
    node -e 'const j=JSON.parse(process.argv[1]);const f=(x)=>x===null?"-":(x/1000).toFixed(2)+"ms";
      console.log([String(j.streams).padEnd(8),j.mode.padEnd(7),f(j.ttft_p50_us).padStart(10),f(j.ttft_p99_us).padStart(10),
      f(j.tok_p50_us).padStart(10),f(j.tok_p99_us).padStart(10),String(j.failed).padStart(8)].join(" "))' "$line"
  done
  node -e 'const d=JSON.parse(process.argv[1]),r=JSON.parse(process.argv[2]);const f=(a,b)=>((a-b)/1000).toFixed(2)+"ms";
    console.log(`${String(d.streams).padEnd(8)} added   ${f(r.ttft_p50_us,d.ttft_p50_us).padStart(10)} ${f(r.ttft_p99_us,d.ttft_p99_us).padStart(10)} ${f(r.tok_p50_us,d.tok_p50_us).padStart(10)} ${f(r.tok_p99_us,d.tok_p99_us).padStart(10)}`)' "$d" "$r"
done
