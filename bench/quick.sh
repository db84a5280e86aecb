#!/usr/bin/env bash
# quick.sh - a first, small side-by-side measurement with wrk (the full bench
# suite of Step 3 builds on it): S1 cache-hit path, S2 added latency of the
# miss path over calling the mock model server directly. Alternates sides for
# ROUNDS rounds and reports medians. Needs a built tree (make build).
set -euo pipefail
repo="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$repo"
ROUNDS="${ROUNDS:-3}" DUR="${DUR:-6s}" CONNS="${CONNS:-64}"
bash scripts/install-deps.sh wrk
export AIGW_MOCK_BIN="$repo/build/tests/mock_upstream/mock-upstream"
export AIGW_MOCK_ARGS="--first-token-ms 20 --tokens 8 --slots 10000"
stack=bench
bash scripts/devstack.sh --name "$stack" up >/dev/null
trap 'kill "$gw" 2>/dev/null; wait "$gw" 2>/dev/null; bash scripts/devstack.sh --name "$stack" down >/dev/null 2>&1' EXIT
set -a; eval "$(bash scripts/devstack.sh --name "$stack" env)"; set +a
AIGW_JWT_SECRET="$(head -c 32 /dev/urandom | base64 | tr -d '\n')"
port=$(( 20000 + RANDOM % 20000 ))
export AIGW_JWT_SECRET AIGW_PORT="$port" AIGW_SPOOL_DIR="$AIGW_STACK_DIR/spool" AIGW_LOG_LEVEL=warning
cfg="$AIGW_STACK_DIR/bench.json"
sed -e 's/"slots": 4, "max_connections": 4/"slots": 512, "max_connections": 64/' config/aigw.json >"$cfg"
psql -qX "$AIGW_DATABASE_OWNER_URL" -c "INSERT INTO tenants (code, name, tier, overrides) VALUES ('bench_ent', 'Bench', 'enterprise', '{\"requests_per_minute\": 100000000}') ON CONFLICT (code) DO NOTHING" >/dev/null
build/aigw -c "$cfg" 2>"$AIGW_STACK_DIR/aigw-bench.log" & gw=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
export AIGW_BENCH_TOKEN="$(build/aigw-token -c "$cfg" -t bench_ent -r optician -e 3600)"
curl -sf "http://127.0.0.1:$port/api/ai/query" -H "Authorization: Bearer $AIGW_BENCH_TOKEN" \
     -H 'Content-Type: application/json' -d '{"question":"How do I clean anti-reflective lenses?"}' >/dev/null

run() { # url conns -> "rps p50_ms p99_ms"
    wrk -t2 -c"$2" -d"$DUR" --latency -s bench/post.lua "$1" 2>/dev/null | awk '
        function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
        /Requests\/sec/ { rps=$2 } / 50%/ { p50=ms($2) } / 99%/ { p99=ms($2) } /Non-2xx/ { bad=$NF }
        END { if (bad > 0) printf "warning: %d non-2xx answers\n", bad > "/dev/stderr"; printf "%.0f %.3f %.3f\n", rps, p50, p99 }'
}
median() { sort -n | awk '{ a[NR]=$1 } END { print a[int((NR+1)/2)] }'; }

declare -a s1_rps s1_p99 gw_p50 gw_p99 dir_p50 dir_p99
for i in $(seq "$ROUNDS"); do
    export AIGW_BENCH_NONCE="$RANDOM$RANDOM-$i"
    read -r rps _ p99 < <(AIGW_BENCH_UNIQUE=0 run "http://127.0.0.1:$port/api/ai/query" "$CONNS")
    s1_rps+=("$rps"); s1_p99+=("$p99")
    read -r _ p50 p99 < <(AIGW_BENCH_UNIQUE=1 run "http://127.0.0.1:$port/api/ai/query" 16)
    gw_p50+=("$p50"); gw_p99+=("$p99")
    read -r _ p50 p99 < <(AIGW_BENCH_UNIQUE=1 AIGW_BENCH_DIRECT=1 run "$AIGW_MOCK_URL/v1/chat/completions" 16)
    dir_p50+=("$p50"); dir_p99+=("$p99")
done
m() { printf '%s\n' "$@" | median; }
printf '\nS1 cache hit, %s connections: %s req/s, p99 %s ms (median of %s rounds)\n' "$CONNS" "$(m "${s1_rps[@]}")" "$(m "${s1_p99[@]}")" "$ROUNDS"
printf 'S2 miss path, 16 connections, mock at 20 ms: aigw p50 %s / p99 %s ms; direct p50 %s / p99 %s ms\n' \
    "$(m "${gw_p50[@]}")" "$(m "${gw_p99[@]}")" "$(m "${dir_p50[@]}")" "$(m "${dir_p99[@]}")"
awk -v a="$(m "${gw_p50[@]}")" -v b="$(m "${dir_p50[@]}")" -v c="$(m "${gw_p99[@]}")" -v d="$(m "${dir_p99[@]}")" \
    'BEGIN { printf "S2 added latency: p50 %+.3f ms, p99 %+.3f ms\n", a-b, c-d }'
