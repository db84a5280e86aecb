#!/usr/bin/env bash
# run.sh - aigw benchmark suite (`make bench`). See bench/README.md.
#
# Installs wrk/nginx/valgrind, builds a Release tree in build-release, starts its
# own stack (devstack --name bench), and runs:
#   S1 cache-hit path: aigw vs nginx proxy_cache serving the same body
#   S2 miss-path overhead: aigw vs the same OpenAI body straight to the mock
#   S3 many slow requests: S3_CONNS connections, mock at 2 s per answer
#   S4 streams: S4_STREAMS concurrent SSE streams through aigw vs straight
#      to the mock: inter-token gap p99 (added by aigw), aigw peak RSS
#   S5 instructions per cache-hit request under callgrind
# Prints a table, writes bench/results/latest.json, appends S5 to
# bench/results/history.jsonl.
#
# Environment (defaults): ROUNDS (5) DUR (8s) CONNS (64) S2_CONNS (16)
#   S3_CONNS (10000) S3_DUR (15s) S3_ANSWER_MS (2000) S5_REQUESTS (2000)
#   S4_STREAMS (1000) S4_TOKENS (30) S4_TOKEN_MS (100)
#   UPSTREAM_SLOTS (4000): aigw's calls at the model at once (backend slots
#     and connections); beyond it requests wait in aigw's queue
#   SKIP_S3=1 SKIP_S4=1 SKIP_S5=1 SKIP_BUILD=1 BENCH_STACK (bench)
set -euo pipefail

repo="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$repo"

ROUNDS="${ROUNDS:-5}"
DUR="${DUR:-8s}"
CONNS="${CONNS:-64}"
S2_CONNS="${S2_CONNS:-16}"
S3_CONNS="${S3_CONNS:-10000}"
S3_DUR="${S3_DUR:-15s}"
S3_ANSWER_MS="${S3_ANSWER_MS:-2000}"
S5_REQUESTS="${S5_REQUESTS:-2000}"
UPSTREAM_SLOTS="${UPSTREAM_SLOTS:-4000}"
S4_STREAMS="${S4_STREAMS:-1000}"
S4_TOKENS="${S4_TOKENS:-30}"
S4_TOKEN_MS="${S4_TOKEN_MS:-100}"
STACK="${BENCH_STACK:-bench}"
results="$repo/bench/results"
build="$repo/build-release"

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
secs() { # "8s" | "8" | "2m" -> seconds
    case "$1" in
        *m) echo $(( ${1%m} * 60 )) ;;
        *s) echo "${1%s}" ;;
        *) echo "$1" ;;
    esac
}
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
[[ "$UPSTREAM_SLOTS" =~ ^[1-9][0-9]*$ ]] || die "UPSTREAM_SLOTS must be a positive integer"
for v in DUR S3_DUR; do [[ "$(secs "${!v}")" =~ ^[1-9][0-9]*$ ]] || die "$v must look like 8s"; done

# ---------------------------------------------------------------- cleanup
gw_pid="" vg_pid="" nginx_pid="" sampler_pid="" stack_up=0
stop_pid() { # pid [grace seconds]: TERM, wait, KILL
    local pid="$1" grace="${2:-10}" i
    [[ -n "$pid" ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < grace * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    set +e
    stop_pid "$sampler_pid" 1
    stop_pid "$vg_pid" 60
    stop_pid "$gw_pid" 10
    stop_pid "$nginx_pid" 5
    if ((stack_up)); then bash scripts/devstack.sh --name "$STACK" down >/dev/null 2>&1; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- setup
log "installing dependencies"
bash scripts/install-deps.sh wrk nginx valgrind jq
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    log "building release tree in build-release"
    build_log="$(mktemp)"
    if ! { cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DAIGW_TESTS=ON && cmake --build build-release -j2; } >"$build_log" 2>&1; then
        tail -n 40 "$build_log" >&2; rm -f "$build_log"; die "build failed"
    fi
    rm -f "$build_log"
fi
[[ -x "$build/aigw" && -x "$build/aigw-token" && -x "$build/tests/mock_upstream/mock-upstream" && -x "$build/sseload" && -x "$build/platform" ]] \
    || die "build-release is incomplete"

# Many connections: soft fd limit up to the hard one (inherited by the stack, wrk, aigw).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
nofile="$(ulimit -n)"

git_rev="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ "$git_rev" != unknown ]] && ! git diff --quiet HEAD -- 2>/dev/null; then git_rev="$git_rev-dirty"; fi
run_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

# The machine's baseline before anything is started: what one syscall and one
# thread hand-off cost here (every hot path is made of them).
platform_json="$("$build/platform")" || die "bench/platform failed"
log "platform: $platform_json"

# Free ports below the ephemeral range (S3 leaves thousands of ephemeral ports
# in use or in TIME_WAIT), not used by any socket in any state.
eph_lo="$(awk '{ print $1 }' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)"
(( eph_lo > 12000 )) || eph_lo=60999
free_port() {
    local p i
    for ((i = 0; i < 200; i++)); do
        p=$(( 10000 + RANDOM % (eph_lo - 10000) ))
        if ! ss -Htan "( sport = :$p or dport = :$p )" 2>/dev/null | grep -q .; then echo "$p"; return 0; fi
    done
    die "no free port found"
}

export AIGW_MOCK_BIN="$build/tests/mock_upstream/mock-upstream"
mock_slots=$(( S3_CONNS + 1000 ))
export AIGW_MOCK_ARGS="--first-token-ms 20 --tokens 8 --slots $mock_slots"
log "starting stack '$STACK'"
stack_up=1
bash scripts/devstack.sh --name "$STACK" down >/dev/null 2>&1 || true
bash scripts/devstack.sh --name "$STACK" up >/dev/null
stack_env="$(bash scripts/devstack.sh --name "$STACK" env)"  # set -e sees a failure here, not inside eval
set -a; eval "$stack_env"; set +a
sd="$AIGW_STACK_DIR"
runs="$results/runs"; rm -rf "$runs"; mkdir -p "$results" "$runs"

AIGW_JWT_SECRET="$(head -c 48 /dev/urandom | base64 | tr -d '\n')"
AIGW_PLATFORM_JWT_SECRET="$(head -c 48 /dev/urandom | base64 | tr -d '\n')"
export AIGW_JWT_SECRET AIGW_PLATFORM_JWT_SECRET AIGW_LOG_LEVEL=warning

# Bench config: aigw's fds = inbound + upstream + a few; keep both under RLIMIT_NOFILE.
up_conns=$(( nofile - S3_CONNS - 400 ))
(( up_conns > S3_CONNS )) && up_conns=$S3_CONNS
(( up_conns > UPSTREAM_SLOTS )) && up_conns=$UPSTREAM_SLOTS
(( up_conns < 64 )) && up_conns=64
cfg="$sd/bench.json"
jq --argjson maxc $(( S3_CONNS + 200 )) --argjson up "$up_conns" --argjson qs $(( S3_CONNS + 1000 )) '
    .http.max_connections = $maxc
    | .upstream.backends |= map(.slots = $up | .max_connections = $up)
    | .upstream.queue_size = $qs
    | .upstream.queue_timeout_ms = 30000
    | .log.level = "warning"' config/aigw.json >"$cfg"
"$build/aigw" -c "$cfg" --check-config >/dev/null 2>&1 || die "bench config invalid: $cfg"

psql -qX -v ON_ERROR_STOP=1 "$AIGW_DATABASE_OWNER_URL" -c "INSERT INTO tenants (code, name, tier, overrides)
    VALUES ('bench_ent', 'Bench Enterprise', 'enterprise', '{\"requests_per_minute\": 100000000}')
    ON CONFLICT (code) DO UPDATE SET tier = 'enterprise', overrides = EXCLUDED.overrides" >/dev/null
AIGW_BENCH_TOKEN="$("$build/aigw-token" -c "$cfg" -t bench_ent -r optician -e 21600)"  # longer than any run
export AIGW_BENCH_TOKEN

start_gw() { # name spooldir -> sets gw_pid and gw_port
    local try
    mkdir -p "$2"
    for try in 1 2 3; do
        gw_port="$(free_port)"
        AIGW_PORT="$gw_port" AIGW_SPOOL_DIR="$2" "$build/aigw" -c "$cfg" 2>>"$sd/aigw-$1.log" &
        gw_pid=$!
        wait_http "http://127.0.0.1:$gw_port/healthz" 20 "$gw_pid" && return 0
        stop_pid "$gw_pid" 5; gw_pid=""
        cp "$sd/aigw-$1.log" "$runs/" 2>/dev/null || true
        log "warning: aigw ($1) did not start (try $try, log in $runs/aigw-$1.log)"
    done
    die "aigw ($1) did not start"
}
wait_http() { # url seconds [pid]
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        curl -sf -o /dev/null "$1" && return 0
        [[ -z "${3:-}" ]] || kill -0 "$3" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}
ask() { # port question [extra curl args] -> body on stdout, headers in $sd/last.h
    local port="$1" q="$2"; shift 2
    curl -sf -D "$sd/last.h" "http://127.0.0.1:$port/api/ai/query" -H "Authorization: Bearer $AIGW_BENCH_TOKEN" \
         -H 'Content-Type: application/json' -d "{\"question\":\"$q\"}" "$@"
}
mock_cfg() { curl -sf -o /dev/null "$AIGW_MOCK_URL/__mock/config" -H 'Content-Type: application/json' -d "$1"; }

# wrk runner: name url conns dur [extra wrk args...] -> "rps p50 p99 requests non2xx sockerr"
run_wrk() {
    local name="$1" url="$2" conns="$3" dur="$4"; shift 4
    local out="$runs/$name.txt" threads=2
    (( conns < 2 )) && threads=1
    timeout --foreground -k 10 $(( $(secs "$dur") + 60 )) \
        wrk -t"$threads" -c"$conns" -d"$dur" --latency -s "$repo/bench/post.lua" "$@" "$url" >"$out" 2>&1 \
        || log "warning: wrk $name exited non-zero (see $out)"
    awk '
        function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /m$/) return v*60000; if (v ~ /s$/) return v*1000; return v }
        /Requests\/sec/ { rps=$2 } /^ +50%/ { p50=ms($2) } /^ +99%/ { p99=ms($2) }
        /requests in/ { reqs=$1 } /Non-2xx/ { bad=$NF }
        /Socket errors/ { gsub(/,/, ""); sock=$4+$6+$8+$10 }
        END { printf "%.0f %.3f %.3f %d %d %d\n", rps, p50, p99, reqs, bad, sock }' "$out"
}
# wrk counts non-2xx answers (a 401 or 429 comes fast) in its req/s and
# latencies: a round with any is no measurement, and the run stops.
valid_round() { # what non2xx sockerr
    (( $2 + $3 == 0 )) || die "$1: $2 non-2xx answers and $3 socket errors; its numbers would count failures (see $runs)"
}
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0; }   # utime+stime
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR]=$1 } END { if (NR == 0) print 0; else if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "null"; else printf "%.3f\n", a/b }'; }
diffv() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f\n", a-b }'; }

# ---------------------------------------------------------------- aigw (S1, S2)
start_gw main "$sd/spool-main"
wait_http "http://127.0.0.1:$gw_port/readyz" 20 || log "warning: /readyz not ready yet"
log "aigw (release) on :$gw_port, config $cfg, nofile $nofile"

# ---------------------------------------------------------------- S1 cache hit vs nginx
q1="How do I clean anti-reflective lenses?"
ask "$gw_port" "$q1" >/dev/null || die "priming aigw failed"
body="$(ask "$gw_port" "$q1")" || die "cache-hit request failed"
grep -qi '^X-Cache: HIT' "$sd/last.h" || die "aigw did not answer the primed question from cache"
[[ "$body" != *'$'* ]] || die "cached body contains '\$'; cannot embed it in nginx.conf"

# nginx.conf for a reference side: dir, then the http{} blocks on stdin.
# Two workers (aigw has two HTTP workers), no access log, temp files in dir.
ngx_conf() {
    local user_line=""
    [[ "$(id -u)" == 0 ]] && user_line="user root;"
    mkdir -p "$1/tmp"
    cat >"$1/nginx.conf" <<EOF
$user_line
worker_processes 2;
daemon off;
pid $1/nginx.pid;
error_log $1/error.log warn;
worker_rlimit_nofile 16384;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $1/tmp/body;
    proxy_temp_path $1/tmp/proxy;
    fastcgi_temp_path $1/tmp/fastcgi;
    uwsgi_temp_path $1/tmp/uwsgi;
    scgi_temp_path $1/tmp/scgi;
$(cat)
}
EOF
}
ngx_start() { # dir url-to-wait-for -> sets nginx_pid
    nginx -t -q -c "$1/nginx.conf" -p "$1" 2>>"$1/error.log" || die "nginx config test failed: $1/error.log"
    nginx -c "$1/nginx.conf" -p "$1" 2>>"$1/error.log" &
    nginx_pid=$!
    wait_http "$2" 10 "$nginx_pid" || die "nginx did not start: $1/error.log"
}
# nginx as a plain reverse proxy in front of mock1 (keep-alive upstream
# connections, no buffering, no cache): what relaying alone costs a C proxy
# that does nothing else, on the same cores (the S2 and S4 references).
ngx_proxy() { # dir -> sets ngx_proxy_port and nginx_pid
    ngx_proxy_port="$(free_port)"
    ngx_conf "$1" <<EOF
    upstream mock { server ${AIGW_MOCK_URL#http://}; keepalive 1024; }
    server {
        listen 127.0.0.1:$ngx_proxy_port;
        location / {
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 120s;
        }
    }
EOF
    ngx_start "$1" "http://127.0.0.1:$ngx_proxy_port/health"
}
ngx="$sd/nginx"; mkdir -p "$ngx/cache"
ngx_port="$(free_port)"; origin_port="$(free_port)"
while [[ "$origin_port" == "$ngx_port" ]]; do origin_port="$(free_port)"; done
esc_body="$(printf '%s' "$body" | sed -e 's/\\/\\\\/g' -e "s/'/\\\\'/g")"
ngx_conf "$ngx" <<EOF
    proxy_cache_path $ngx/cache levels=1:2 keys_zone=bench:10m max_size=64m inactive=1h use_temp_path=off;
    server {   # origin: the same JSON aigw answers from its cache
        listen 127.0.0.1:$origin_port;
        location / { default_type application/json; return 200 '$esc_body'; }
    }
    server {
        listen 127.0.0.1:$ngx_port;
        location / {
            proxy_pass http://127.0.0.1:$origin_port;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache bench;
            proxy_cache_methods POST;
            proxy_cache_key "fixed";
            proxy_cache_valid 200 1h;
            add_header X-Cache-Status \$upstream_cache_status always;
        }
    }
EOF
ngx_start "$ngx" "http://127.0.0.1:$origin_port/"
ngx_post() { curl -sf -D "$sd/ngx.h" "http://127.0.0.1:$ngx_port/api/ai/query" -H "Authorization: Bearer $AIGW_BENCH_TOKEN" \
                  -H 'Content-Type: application/json' -d "{\"question\":\"$q1\"}"; }
ngx_post >/dev/null || die "priming nginx failed"
nbody="$(ngx_post)" || die "nginx cache-hit request failed"
grep -qi '^X-Cache-Status: HIT' "$sd/ngx.h" || die "nginx did not answer from its cache"
[[ "$nbody" == "$body" ]] || die "nginx body differs from aigw's cached body"
log "nginx proxy_cache on :$ngx_port (origin :$origin_port) answers HIT with aigw's body (${#body} bytes)"

# CPU ticks (utime+stime) of aigw, Redis and every PostgreSQL process of the
# stack, to say where a cache hit's CPU goes (the profile behind S1's ratio).
stack_ticks() {
    local pm rp pg=0 p
    pm="$(head -n1 "$sd/pg/data/postmaster.pid" 2>/dev/null || true)"
    rp="$(head -n1 "$sd/redis/redis.pid" 2>/dev/null || true)"
    for p in $pm $(pgrep -P "${pm:-1}" 2>/dev/null); do pg=$(( pg + $(cpu_ticks "$p") )); done
    echo "$(cpu_ticks "$gw_pid") $(cpu_ticks "${rp:-1}") $pg"
}
s1_cpu=(0 0 0) s1_reqs=0
declare -a s1g_rps s1g_p50 s1g_p99 s1n_rps s1n_p50 s1n_p99 s1g_bad=() s1n_bad=()
s1_side() { # side round
    local r t0 t1 i
    if [[ "$1" == aigw ]]; then
        read -r -a t0 <<<"$(stack_ticks)"
        r="$(AIGW_BENCH_UNIQUE=0 run_wrk "s1-aigw-$2" "http://127.0.0.1:$gw_port/api/ai/query" "$CONNS" "$DUR")"
        read -r -a t1 <<<"$(stack_ticks)"
        for i in 0 1 2; do s1_cpu[i]=$(( s1_cpu[i] + t1[i] - t0[i] )); done
        read -r rps p50 p99 reqs bad sock <<<"$r"; s1_reqs=$(( s1_reqs + reqs ))
        s1g_rps+=("$rps"); s1g_p50+=("$p50"); s1g_p99+=("$p99"); s1g_bad+=($((bad + sock)))
    else
        r="$(AIGW_BENCH_UNIQUE=0 run_wrk "s1-nginx-$2" "http://127.0.0.1:$ngx_port/api/ai/query" "$CONNS" "$DUR")"
        read -r rps p50 p99 _ bad sock <<<"$r"; s1n_rps+=("$rps"); s1n_p50+=("$p50"); s1n_p99+=("$p99"); s1n_bad+=($((bad + sock)))
    fi
    log "S1 round $2 $1: $rps req/s, p50 $p50 ms, p99 $p99 ms, errors $((bad + sock))"
    valid_round "S1 round $2 $1" "$bad" "$sock"
}
log "S1: cache hit, $CONNS connections, $DUR x $ROUNDS rounds per side"
for ((i = 1; i <= ROUNDS; i++)); do
    if (( i % 2 )); then s1_side aigw "$i"; s1_side nginx "$i"; else s1_side nginx "$i"; s1_side aigw "$i"; fi
done
stop_pid "$nginx_pid" 5; nginx_pid=""
S1_G_RPS="$(median "${s1g_rps[@]}")" S1_G_P50="$(median "${s1g_p50[@]}")" S1_G_P99="$(median "${s1g_p99[@]}")"
S1_N_RPS="$(median "${s1n_rps[@]}")" S1_N_P50="$(median "${s1n_p50[@]}")" S1_N_P99="$(median "${s1n_p99[@]}")"
us_per_req() { awk -v t="$1" -v n="$2" -v hz="$(getconf CLK_TCK)" 'BEGIN { if (n == 0) print 0; else printf "%.1f\n", t / hz * 1e6 / n }'; }
S1_CPU_GW="$(us_per_req "${s1_cpu[0]}" "$s1_reqs")" S1_CPU_REDIS="$(us_per_req "${s1_cpu[1]}" "$s1_reqs")"
S1_CPU_PG="$(us_per_req "${s1_cpu[2]}" "$s1_reqs")"
log "S1 CPU per cache hit: aigw $S1_CPU_GW us, Redis $S1_CPU_REDIS us, PostgreSQL $S1_CPU_PG us ($s1_reqs requests)"

# ---------------------------------------------------------------- S2 miss path overhead
mock_cfg '{"first_token_ms":20,"token_latency_ms":0,"tokens":8}'
declare -a s2g_p50 s2g_p99 s2g_rps s2d_p50 s2d_p99 s2d_rps s2n_p50 s2n_p99 s2n_rps s2g_bad=() s2d_bad=() s2n_bad=()
s2_cpu=(0 0) s2_reqs=0 # aigw's and Redis's CPU ticks over the aigw rounds: what a miss costs them
s2_side() { # side round
    local r t0 t1
    export AIGW_BENCH_NONCE="$run_nonce-$2"
    if [[ "$1" == aigw ]]; then
        read -r -a t0 <<<"$(stack_ticks)"
        r="$(AIGW_BENCH_UNIQUE=1 run_wrk "s2-aigw-$2" "http://127.0.0.1:$gw_port/api/ai/query" "$S2_CONNS" "$DUR")"
        read -r -a t1 <<<"$(stack_ticks)"
        s2_cpu[0]=$(( s2_cpu[0] + t1[0] - t0[0] )) s2_cpu[1]=$(( s2_cpu[1] + t1[1] - t0[1] ))
        read -r rps p50 p99 reqs bad sock <<<"$r"; s2_reqs=$(( s2_reqs + reqs ))
        s2g_rps+=("$rps"); s2g_p50+=("$p50"); s2g_p99+=("$p99"); s2g_bad+=($((bad + sock)))
    elif [[ "$1" == nginx ]]; then # the same body as direct, through the plain proxy
        r="$(AIGW_BENCH_UNIQUE=1 AIGW_BENCH_DIRECT=1 run_wrk "s2-nginx-$2" "http://127.0.0.1:$ngx2_port/v1/chat/completions" "$S2_CONNS" "$DUR")"
        read -r rps p50 p99 _ bad sock <<<"$r"; s2n_rps+=("$rps"); s2n_p50+=("$p50"); s2n_p99+=("$p99"); s2n_bad+=($((bad + sock)))
    else
        r="$(AIGW_BENCH_UNIQUE=1 AIGW_BENCH_DIRECT=1 run_wrk "s2-direct-$2" "$AIGW_MOCK_URL/v1/chat/completions" "$S2_CONNS" "$DUR")"
        read -r rps p50 p99 _ bad sock <<<"$r"; s2d_rps+=("$rps"); s2d_p50+=("$p50"); s2d_p99+=("$p99"); s2d_bad+=($((bad + sock)))
    fi
    log "S2 round $2 $1: $rps req/s, p50 $p50 ms, p99 $p99 ms, errors $((bad + sock))"
    valid_round "S2 round $2 $1" "$bad" "$sock"
}
run_nonce="$(date +%s)-$RANDOM"
ngx_proxy "$sd/nginx-s2"; ngx2_port="$ngx_proxy_port"
log "S2: miss path, $S2_CONNS connections, mock 20 ms + 8 tokens, $DUR x $ROUNDS rounds per side (aigw, direct, nginx in front of the mock)"
sides=(aigw direct nginx)
for ((i = 1; i <= ROUNDS; i++)); do # each round starts with another side
    for j in 0 1 2; do s2_side "${sides[(i + j - 1) % 3]}" "$i"; done
done
stop_pid "$nginx_pid" 5; nginx_pid=""
S2_G_P50="$(median "${s2g_p50[@]}")" S2_G_P99="$(median "${s2g_p99[@]}")" S2_G_RPS="$(median "${s2g_rps[@]}")"
S2_D_P50="$(median "${s2d_p50[@]}")" S2_D_P99="$(median "${s2d_p99[@]}")" S2_D_RPS="$(median "${s2d_rps[@]}")"
S2_N_P50="$(median "${s2n_p50[@]}")" S2_N_P99="$(median "${s2n_p99[@]}")" S2_N_RPS="$(median "${s2n_rps[@]}")"
S2_CPU_GW="$(us_per_req "${s2_cpu[0]}" "$s2_reqs")" S2_CPU_REDIS="$(us_per_req "${s2_cpu[1]}" "$s2_reqs")"
log "S2 CPU per miss: aigw $S2_CPU_GW us, Redis $S2_CPU_REDIS us ($s2_reqs requests)"
stop_pid "$gw_pid" 15; gw_pid=""

# ---------------------------------------------------------------- S3 many slow requests
s3_json='{"skipped": true}'
S3_LINE="S3 skipped (SKIP_S3=1)"
if [[ "${SKIP_S3:-0}" != 1 ]]; then
    mock_cfg "{\"first_token_ms\":$S3_ANSWER_MS,\"token_latency_ms\":0,\"tokens\":8,\"slots\":$mock_slots}"
    start_gw s3 "$sd/spool-s3"; gw3_port="$gw_port"   # fresh process: VmHWM belongs to S3 alone
    ask "$gw3_port" "S3 warm-up $RANDOM" >/dev/null || log "warning: S3 warm-up request failed"
    log "S3: $S3_CONNS connections for $S3_DUR, mock answers after $S3_ANSWER_MS ms (aigw upstream cap $up_conns, nofile $nofile)"
    ( peak_t=0 peak_rss=0
      while kill -0 "$gw_pid" 2>/dev/null; do
          t="$(awk '/^Threads:/ { print $2 }' "/proc/$gw_pid/status" 2>/dev/null || echo 0)"
          r="$(awk '/^VmRSS:/ { print $2 }' "/proc/$gw_pid/status" 2>/dev/null || echo 0)"
          (( t > peak_t )) && peak_t=$t; (( r > peak_rss )) && peak_rss=$r
          echo "$peak_t $peak_rss" >"$sd/s3-sample"
          sleep 0.25
      done ) & sampler_pid=$!
    export AIGW_BENCH_NONCE="s3-$run_nonce"
    cpu0="$(cpu_ticks "$gw_pid")"
    r="$(AIGW_BENCH_UNIQUE=1 run_wrk s3-aigw "http://127.0.0.1:$gw3_port/api/ai/query" "$S3_CONNS" "$S3_DUR" --timeout 30s)"
    read -r S3_RPS S3_P50 S3_P99 S3_REQS S3_NON2XX S3_SOCK <<<"$r"
    S3_CPU_S="$(awk -v a="$cpu0" -v b="$(cpu_ticks "$gw_pid")" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", (b-a)/hz }')"
    sleep 0.5
    stop_pid "$sampler_pid" 1; sampler_pid=""
    read -r S3_THREADS_PEAK _ <"$sd/s3-sample" || S3_THREADS_PEAK=0
    S3_HWM_KB="$(awk '/^VmHWM:/ { print $2 }' "/proc/$gw_pid/status")"
    S3_THREADS_END="$(awk '/^Threads:/ { print $2 }' "/proc/$gw_pid/status")"
    S3_MOCK_MAX="$(curl -sf "$AIGW_MOCK_URL/__mock/stats" | jq -r '.max_in_flight // 0' 2>/dev/null || echo 0)"
    sock_detail="$(grep 'Socket errors' "$runs/s3-aigw.txt" | sed 's/^ *//' || true)"
    stop_pid "$gw_pid" 15; gw_pid=""
    mock_cfg '{"first_token_ms":20,"token_latency_ms":0,"tokens":8}'
    S3_ERRS=$(( S3_NON2XX + S3_SOCK ))
    S3_IDEAL=$(( S3_CONNS * (($(secs "$S3_DUR") * 1000 - 1) / S3_ANSWER_MS) ))   # answers finished before wrk stops, every connection busy
    S3_LINE="$(printf 'S3 %s conns %s: completed %s of ideal %s (%s req/s), errors %s (non-2xx %s, socket %s), p50 %s ms, p99 %s ms, aigw VmHWM %s MiB, threads %s, aigw CPU %s s' \
        "$S3_CONNS" "$S3_DUR" "$S3_REQS" "$S3_IDEAL" "$S3_RPS" "$S3_ERRS" "$S3_NON2XX" "$S3_SOCK" "$S3_P50" "$S3_P99" $(( S3_HWM_KB / 1024 )) "$S3_THREADS_PEAK" "$S3_CPU_S")"
    s3_json="$(jq -n --argjson conns "$S3_CONNS" --arg dur "$S3_DUR" --argjson ans "$S3_ANSWER_MS" \
        --argjson reqs "$S3_REQS" --argjson rps "$S3_RPS" --argjson non2xx "$S3_NON2XX" --argjson sock "$S3_SOCK" \
        --argjson p50 "$S3_P50" --argjson p99 "$S3_P99" --argjson hwm "$S3_HWM_KB" --argjson thr "$S3_THREADS_PEAK" \
        --argjson thr_end "${S3_THREADS_END:-0}" --argjson up "$up_conns" --argjson mockmax "${S3_MOCK_MAX:-0}" --arg sd "$sock_detail" --argjson cpu "$S3_CPU_S" --argjson ideal "$S3_IDEAL" '
        {skipped: false, settings: {connections: $conns, duration: $dur, answer_ms: $ans, aigw_upstream_connections: $up,
                                    wrk: "-t2 -c\($conns) -d\($dur) --timeout 30s, unique questions"},
         completed: $reqs, ideal_completed: $ideal, req_per_s: $rps, errors: ($non2xx + $sock), non_2xx: $non2xx, socket_errors: $sock,
         socket_errors_detail: $sd, p50_ms: $p50, p99_ms: $p99,
         aigw_peak_rss_kb: $hwm, aigw_threads_peak: $thr, aigw_threads_end: $thr_end, aigw_cpu_s: $cpu, mock_max_in_flight: $mockmax}')"
    S3_LINE="$S3_LINE, mock max in flight $S3_MOCK_MAX (aigw's upstream slots $up_conns)"
fi

# ---------------------------------------------------------------- S4 streams
s4_json='{"skipped": true}'
S4_LINE="S4 skipped (SKIP_S4=1)"
if [[ "${SKIP_S4:-0}" != 1 ]]; then
    # stamp_events: each token carries the instant the mock produced it, so
    # sseload also measures every event's one-way latency (see bench/README.md)
    mock_cfg "{\"first_token_ms\":0,\"token_latency_ms\":$S4_TOKEN_MS,\"tokens\":$S4_TOKENS,\"slots\":$mock_slots,\"stamp_events\":true}"
    start_gw s4 "$sd/spool-s4"; gw4_port="$gw_port"   # fresh process: VmHWM belongs to S4 alone
    s4_body='{"stream":true,"messages":[{"role":"user","content":"S4 stream %d '"$RANDOM"'"}]}'
    # Reference: nginx as a plain streaming reverse proxy (no buffering) in
    # front of the mock that aigw's route for these requests (knowledge:
    # mock1) and the direct side use: what relaying the same events costs a
    # C proxy that does nothing else, on the same cores.
    ngx_proxy "$sd/nginx-s4"; ngx4_port="$ngx_proxy_port"
    ngx_ticks() { local p t=0; for p in $(pgrep -P "$nginx_pid"); do t=$(( t + $(cpu_ticks "$p") )); done; echo "$t"; }
    declare -A s4_p99 s4_p50 s4_st99 s4_done s4_lat50 s4_lat99 s4_stlat99 s4_ticks=([aigw]=0 [nginx]=0) s4_events=([aigw]=0 [nginx]=0)
    s4_side() { # side round
        local out="$runs/s4-$1-$2.json" port hdr=() c0=0
        case "$1" in
            aigw) port="$gw4_port"; hdr=(-H "Authorization: Bearer $AIGW_BENCH_TOKEN"); c0="$(cpu_ticks "$gw_pid")" ;;
            nginx) port="$ngx4_port"; c0="$(ngx_ticks)" ;;
            direct) port="${AIGW_MOCK_URL##*:}" ;;
        esac
        "$build/sseload" -p "$port" -P /v1/chat/completions -c "$S4_STREAMS" "${hdr[@]}" -b "$s4_body" -t 120 >"$out" \
            || die "S4 round $2 $1: sseload failed (see $out)"
        # gaps of streams that failed are no measurement
        [[ "$(jq '(.errors == 0) and (.completed == .streams)' "$out")" == true ]] \
            || die "S4 round $2 $1: not every stream completed without errors: $(cat "$out")"
        case "$1" in # CPU of the relaying process over its rounds, per relayed event
            aigw) s4_ticks[aigw]=$(( s4_ticks[aigw] + $(cpu_ticks "$gw_pid") - c0 )) ;;
            nginx) s4_ticks[nginx]=$(( s4_ticks[nginx] + $(ngx_ticks) - c0 )) ;;
        esac
        [[ "$1" == direct ]] || s4_events[$1]=$(( s4_events[$1] + $(jq '.events // 0' "$out") ))
        s4_p99[$1]+=" $(jq .gap_p99_ms "$out")"; s4_p50[$1]+=" $(jq .gap_p50_ms "$out")"
        s4_st99[$1]+=" $(jq .steady_gap_p99_ms "$out")"; s4_done[$1]+=" $(jq .completed "$out")"
        s4_counts+=" $(jq .events "$out")"
        s4_lat50[$1]+=" $(jq '.lat_p50_ms // 0' "$out")"; s4_lat99[$1]+=" $(jq '.lat_p99_ms // 0' "$out")"
        s4_stlat99[$1]+=" $(jq '.steady_lat_p99_ms // 0' "$out")"
        log "S4 round $2 $1: $(cat "$out")"
    }
    log "S4: $S4_STREAMS streams at once, $S4_TOKENS tokens every $S4_TOKEN_MS ms, $ROUNDS rounds per side"
    sides=(aigw direct nginx) s4_counts=""
    for ((i = 1; i <= ROUNDS; i++)); do # each round starts with another side
        for j in 0 1 2; do s4_side "${sides[(i + j) % 3]}" "$i"; done
    done
    stop_pid "$nginx_pid" 5; nginx_pid=""
    # shellcheck disable=SC2086
    [[ "$(printf '%s\n' $s4_counts | sort -u | wc -l)" == 1 ]] \
        || log "warning: the S4 sides did not all see the same number of events ($s4_counts): not the same streams"
    S4_HWM_KB="$(awk '/^VmHWM:/ { print $2 }' "/proc/$gw_pid/status")"
    S4_THREADS="$(awk '/^Threads:/ { print $2 }' "/proc/$gw_pid/status")"
    stop_pid "$gw_pid" 15; gw_pid=""
    mock_cfg '{"first_token_ms":20,"token_latency_ms":0,"tokens":8,"stamp_events":false}'
    declare -A S4_P99 S4_P50 S4_ST99 S4_DONE S4_CPU S4_LAT50 S4_LAT99 S4_STLAT99
    for k in aigw direct nginx; do
        # shellcheck disable=SC2086
        S4_P99[$k]="$(median ${s4_p99[$k]})" S4_P50[$k]="$(median ${s4_p50[$k]})"
        # shellcheck disable=SC2086
        S4_ST99[$k]="$(median ${s4_st99[$k]})" S4_DONE[$k]="$(median ${s4_done[$k]})"
        # shellcheck disable=SC2086
        S4_LAT50[$k]="$(median ${s4_lat50[$k]})" S4_LAT99[$k]="$(median ${s4_lat99[$k]})" S4_STLAT99[$k]="$(median ${s4_stlat99[$k]})"
    done
    S4_ADD_P99="$(diffv "${S4_P99[aigw]}" "${S4_P99[direct]}")" S4_ADD_ST99="$(diffv "${S4_ST99[aigw]}" "${S4_ST99[direct]}")"
    S4_NADD_P99="$(diffv "${S4_P99[nginx]}" "${S4_P99[direct]}")" S4_NADD_ST99="$(diffv "${S4_ST99[nginx]}" "${S4_ST99[direct]}")"
    S4_CPU[aigw]="$(us_per_req "${s4_ticks[aigw]}" "${s4_events[aigw]}")" S4_CPU[nginx]="$(us_per_req "${s4_ticks[nginx]}" "${s4_events[nginx]}")"
    S4_LAT_LINE="$(printf '   one-way latency per token (mock produced it -> client read it), p50 / p99 / steady-state p99: aigw %s / %s / %s ms, nginx %s / %s / %s ms, direct %s / %s / %s ms' \
        "${S4_LAT50[aigw]}" "${S4_LAT99[aigw]}" "${S4_STLAT99[aigw]}" "${S4_LAT50[nginx]}" "${S4_LAT99[nginx]}" "${S4_STLAT99[nginx]}" \
        "${S4_LAT50[direct]}" "${S4_LAT99[direct]}" "${S4_STLAT99[direct]}")"
    S4_LINE="$(printf 'S4 %s streams: inter-token gap p99 %s ms via aigw, %s ms via nginx, %s ms direct: added by aigw %s ms, by nginx %s ms (steady state, after the last stream started: aigw %s, nginx %s, direct %s ms); gap p50 %s / %s / %s ms; completed %s / %s / %s; aigw VmHWM %s MiB, threads %s; CPU per relayed event aigw %s us, nginx %s us' \
        "$S4_STREAMS" "${S4_P99[aigw]}" "${S4_P99[nginx]}" "${S4_P99[direct]}" "$S4_ADD_P99" "$S4_NADD_P99" \
        "${S4_ST99[aigw]}" "${S4_ST99[nginx]}" "${S4_ST99[direct]}" "${S4_P50[aigw]}" "${S4_P50[nginx]}" "${S4_P50[direct]}" \
        "${S4_DONE[aigw]}" "${S4_DONE[nginx]}" "${S4_DONE[direct]}" $(( S4_HWM_KB / 1024 )) "$S4_THREADS" "${S4_CPU[aigw]}" "${S4_CPU[nginx]}")"
    S4_LINE+=$'\n'"$S4_LAT_LINE"
    s4_side_json() { # side -> {gap_p99_ms, ...}
        jq -n --argjson g99 "${S4_P99[$1]}" --argjson g50 "${S4_P50[$1]}" --argjson st "${S4_ST99[$1]}" --argjson cmpl "${S4_DONE[$1]}" \
            --argjson l50 "${S4_LAT50[$1]}" --argjson l99 "${S4_LAT99[$1]}" --argjson sl99 "${S4_STLAT99[$1]}" \
            '{gap_p99_ms: $g99, gap_p50_ms: $g50, steady_gap_p99_ms: $st, completed: $cmpl,
              latency_p50_ms: $l50, latency_p99_ms: $l99, steady_latency_p99_ms: $sl99}'
    }
    s4_json="$(jq -n --argjson n "$S4_STREAMS" --argjson tok "$S4_TOKENS" --argjson ms "$S4_TOKEN_MS" \
        --argjson gw "$(s4_side_json aigw)" --argjson direct "$(s4_side_json direct)" --argjson nginx "$(s4_side_json nginx)" \
        --argjson add "$S4_ADD_P99" --argjson addst "$S4_ADD_ST99" --argjson nadd "$S4_NADD_P99" --argjson naddst "$S4_NADD_ST99" \
        --argjson hwm "$S4_HWM_KB" --argjson thr "$S4_THREADS" --argjson cpuev "${S4_CPU[aigw]}" --argjson ncpuev "${S4_CPU[nginx]}" '
        {skipped: false, settings: {streams: $n, tokens: $tok, token_ms: $ms, route: "/v1/chat/completions stream:true",
                                    client: "bench/sseload (epoll, one request per connection)",
                                    reference: "nginx (worker_processes 2, proxy_buffering off) in front of the same mock"},
         aigw: ($gw + {cpu_us_per_event: $cpuev}), direct: $direct, nginx: ($nginx + {cpu_us_per_event: $ncpuev}),
         added_gap_p99_ms: $add, added_steady_gap_p99_ms: $addst,
         nginx_added_gap_p99_ms: $nadd, nginx_added_steady_gap_p99_ms: $naddst,
         added_latency_p50_ms: (($gw.latency_p50_ms - $direct.latency_p50_ms) * 1000 | round / 1000),
         added_latency_p99_ms: (($gw.latency_p99_ms - $direct.latency_p99_ms) * 1000 | round / 1000),
         nginx_added_latency_p99_ms: (($nginx.latency_p99_ms - $direct.latency_p99_ms) * 1000 | round / 1000),
         aigw_peak_rss_kb: $hwm, aigw_threads: $thr, aigw_cpu_us_per_event: $cpuev}')"
fi

# ---------------------------------------------------------------- S5 instructions per request
s5_json='{"skipped": true}'
S5_LINE="S5 skipped (SKIP_S5=1)"
cg_total() { # callgrind out file -> total Ir
    awk '/^(summary|totals):/ { print $2; exit }' "$1"
}
cg_requests() { # port n -> prints how many of n sequential keep-alive cache-hit requests answered 200
    local kf="$sd/s5-requests-$1.curl" j
    { for ((j = 0; j < $2; j++)); do
          printf 'url = "http://127.0.0.1:%s/api/ai/query"\nheader = "Authorization: Bearer %s"\nheader = "Content-Type: application/json"\ndata = "{\\"question\\":\\"%s\\"}"\noutput = "/dev/null"\nwrite-out = "%%{http_code}\\n"\n' \
              "$1" "$AIGW_BENCH_TOKEN" "$q1"
          if (( j < $2 - 1 )); then printf 'next\n'; fi
      done; } >"$kf"
    timeout --foreground 600 curl -s -K "$kf" | grep -c '^200$' || true
}
# target tag requests sleep_s -> sets CG_IR CG_EL CG_OK (no subshell: the trap must see vg_pid and gw_pid).
# target aigw: aigw itself under callgrind. target redis: a Redis of its own
# under callgrind (same settings as the stack's) behind a plain Release aigw,
# so the count is what Redis executes per cache hit (admission script, RESP).
cg_run() {
    local target="$1" tag="$2" n="$3" nap="$4" port out start end ok=0 try rport
    out="$sd/callgrind.$target-$tag.out"
    mkdir -p "$sd/spool-s5-$target-$tag"
    for try in 1 2 3; do
        rm -f "$out"
        if [[ "$target" == aigw ]]; then
            port="$(free_port)"
            AIGW_PORT="$port" AIGW_SPOOL_DIR="$sd/spool-s5-$target-$tag" \
                valgrind --tool=callgrind --callgrind-out-file="$out" "$build/aigw" -c "$cfg" 2>>"$sd/s5-$target-$tag.log" &
            vg_pid=$!
            wait_http "http://127.0.0.1:$port/healthz" 120 "$vg_pid" && break
        else
            rport="$(free_port)"
            valgrind --tool=callgrind --callgrind-out-file="$out" redis-server --bind 127.0.0.1 --port "$rport" \
                --dir "$sd" --save '' --appendonly no --protected-mode yes --logfile "$sd/s5-redis-$tag.redis.log" \
                2>>"$sd/s5-$target-$tag.log" &
            vg_pid=$!
            local i
            for ((i = 0; i < 600; i++)); do
                [[ "$(redis-cli -p "$rport" PING 2>/dev/null)" == PONG ]] && break
                kill -0 "$vg_pid" 2>/dev/null || break
                sleep 0.2
            done
            if [[ "$(redis-cli -p "$rport" PING 2>/dev/null)" == PONG ]] &&
                AIGW_REDIS_URL="redis://127.0.0.1:$rport" start_gw "s5-$tag" "$sd/spool-s5-$target-$tag"; then
                port="$gw_port"
                break
            fi
        fi
        stop_pid "$vg_pid" 30; vg_pid=""
        cp "$sd/s5-$target-$tag.log" "$runs/" 2>/dev/null || true
        log "warning: S5 $target under callgrind did not start (try $try, log in $runs/s5-$target-$tag.log)"
        (( try < 3 )) || die "S5 $target under callgrind did not start"
    done
    wait_http "http://127.0.0.1:$port/readyz" 30 || true
    # both runs: the same warm-up (with a fresh Redis the first one is the miss that fills the cache)
    ask "$port" "$q1" >/dev/null || die "S5 warm-up request failed"
    [[ "$target" == aigw ]] || ask "$port" "$q1" >/dev/null || die "S5 warm-up request failed"
    start=$(date +%s.%N)
    if (( n > 0 )); then ok="$(cg_requests "$port" "$n")"; else sleep "$nap"; fi
    end=$(date +%s.%N)
    if [[ "$target" == redis ]]; then
        stop_pid "$gw_pid" 15; gw_pid=""
        redis-cli -p "$rport" SHUTDOWN NOSAVE >/dev/null 2>&1 || true
    fi
    stop_pid "$vg_pid" 120; vg_pid=""
    [[ -s "$out" ]] || die "callgrind wrote no output ($sd/s5-$target-$tag.log)"
    CG_IR="$(cg_total "$out")"; CG_OK="$ok"
    CG_EL="$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b-a }')"
    [[ "$CG_IR" =~ ^[0-9]+$ ]] || die "no Ir total in $out"
}
if [[ "${SKIP_S5:-0}" != 1 ]]; then
    log "S5: aigw under callgrind, $S5_REQUESTS sequential cache-hit requests"
    cg_run aigw loaded "$S5_REQUESTS" 0; ir_load="$CG_IR" el_load="$CG_EL" ok_load="$CG_OK"
    (( ok_load == S5_REQUESTS )) || log "warning: only $ok_load of $S5_REQUESTS S5 requests answered 200"
    log "S5: baseline run, 0 requests, idle for the same ${el_load}s"
    cg_run aigw baseline 0 "$el_load"; ir_base="$CG_IR"
    S5_IPR="$(awk -v a="$ir_load" -v b="$ir_base" -v n="$S5_REQUESTS" 'BEGIN { printf "%.0f", (a-b)/n }')"
    log "S5: Redis under callgrind behind a Release aigw, $S5_REQUESTS sequential cache-hit requests, then its baseline"
    cg_run redis loaded "$S5_REQUESTS" 0; rir_load="$CG_IR" rel_load="$CG_EL" rok_load="$CG_OK"
    (( rok_load == S5_REQUESTS )) || log "warning: only $rok_load of $S5_REQUESTS S5 (Redis) requests answered 200"
    cg_run redis baseline 0 "$rel_load"; rir_base="$CG_IR"
    S5_RIPR="$(awk -v a="$rir_load" -v b="$rir_base" -v n="$S5_REQUESTS" 'BEGIN { printf "%.0f", (a-b)/n }')"
    S5_LINE="S5 instructions per cache-hit request: aigw $S5_IPR, Redis $S5_RIPR (aigw: loaded $ir_load Ir in ${el_load}s, baseline $ir_base Ir; Redis: loaded $rir_load, baseline $rir_base; N=$S5_REQUESTS)"
    s5_json="$(jq -n --argjson ipr "$S5_IPR" --argjson n "$S5_REQUESTS" --argjson ok "$ok_load" --argjson l "$ir_load" \
        --argjson b "$ir_base" --argjson el "$el_load" --argjson ripr "$S5_RIPR" --argjson rok "$rok_load" \
        --argjson rl "$rir_load" --argjson rb "$rir_base" --argjson rel "$rel_load" '{skipped: false,
        instructions_per_request: $ipr, requests: $n, answered_200: $ok,
        total_ir_loaded: $l, total_ir_baseline: $b, request_phase_s: $el,
        redis: {instructions_per_request: $ripr, answered_200: $rok, total_ir_loaded: $rl, total_ir_baseline: $rb, request_phase_s: $rel},
        method: "callgrind Ir of a run with 1 warm-up + N sequential keep-alive cache-hit requests minus a run with 1 warm-up and the same idle time, divided by N; redis: the same with Redis under callgrind and aigw (Release) outside it, 2 warm-ups"}')"
    if (( ok_load == S5_REQUESTS && rok_load == S5_REQUESTS )); then # the history keeps measurements only
        jq -cn --arg date "$run_date" --arg rev "$git_rev" --argjson ipr "$S5_IPR" --argjson n "$S5_REQUESTS" --argjson ripr "$S5_RIPR" \
            '{date: $date, git_rev: $rev, instructions_per_request: $ipr, redis_instructions_per_request: $ripr, requests: $n}' >>"$results/history.jsonl"
    else
        log "warning: S5 not added to history.jsonl: not every request was a 200 cache hit"
    fi
fi

# ---------------------------------------------------------------- report
S1_RPS_RATIO="$(ratio "$S1_G_RPS" "$S1_N_RPS")"
S1_P50_RATIO="$(ratio "$S1_G_P50" "$S1_N_P50")"
S1_P99_RATIO="$(ratio "$S1_G_P99" "$S1_N_P99")"
S2_ADD_P50="$(diffv "$S2_G_P50" "$S2_D_P50")"
S2_ADD_P99="$(diffv "$S2_G_P99" "$S2_D_P99")"
S2_NADD_P50="$(diffv "$S2_N_P50" "$S2_D_P50")"
S2_NADD_P99="$(diffv "$S2_N_P99" "$S2_D_P99")"

{
    printf '\naigw bench  %s  rev %s  (%s cores, medians of %s rounds, %s per run, sides alternated)\n' "$run_date" "$git_rev" "$(nproc)" "$ROUNDS" "$DUR"
    printf '%-34s %14s %14s %12s\n' "scenario / metric" "aigw" "reference" "aigw/ref"
    printf '%-34s %14s %14s %12s\n' "----------------------------------" "--------------" "--------------" "------------"
    printf '%-34s %14s %14s %12s\n' "S1 cache hit req/s (c=$CONNS)" "$S1_G_RPS" "$S1_N_RPS" "$S1_RPS_RATIO"
    printf '%-34s %14s %14s %12s\n' "S1 cache hit p50 ms" "$S1_G_P50" "$S1_N_P50" "$S1_P50_RATIO"
    printf '%-34s %14s %14s %12s\n' "S1 cache hit p99 ms" "$S1_G_P99" "$S1_N_P99" "$S1_P99_RATIO"
    printf '  (S1 reference = nginx proxy_cache serving the same body; CPU per hit: aigw %s us, Redis %s us, PostgreSQL %s us)\n' \
        "$S1_CPU_GW" "$S1_CPU_REDIS" "$S1_CPU_PG"
    printf '%-34s %14s %14s %12s\n' "S2 miss p50 ms (c=$S2_CONNS)" "$S2_G_P50" "$S2_D_P50" "+$S2_ADD_P50"
    printf '%-34s %14s %14s %12s\n' "S2 miss p99 ms" "$S2_G_P99" "$S2_D_P99" "+$S2_ADD_P99"
    printf '%-34s %14s %14s %12s\n' "S2 miss req/s" "$S2_G_RPS" "$S2_D_RPS" "$(ratio "$S2_G_RPS" "$S2_D_RPS")"
    printf '%-34s %14s %14s %12s\n' "S2 via nginx p50 / p99 ms" "$S2_N_P50" "$S2_N_P99" "+$S2_NADD_P50 / +$S2_NADD_P99"
    printf '  (S2 reference = the mock called directly; last column = ms added by aigw, or by nginx as a plain proxy in\n'
    printf '   front of the mock on the nginx line; CPU per miss: aigw %s us, Redis %s us)\n' "$S2_CPU_GW" "$S2_CPU_REDIS"
    printf '%s\n' "$S3_LINE"
    printf '%s\n' "$S4_LINE"
    printf '%s\n' "$S5_LINE"
    printf 'machine: a syscall (getppid) %s us, a 1-byte unix socket write+read %s us, a thread wake-up round trip %s us,\n' \
        "$(jq .syscall_us <<<"$platform_json")" "$(jq .pipe_rw_us <<<"$platform_json")" "$(jq .thread_rtt_us <<<"$platform_json")"
    printf '  waking a thread that slept 2 ms: p50 %s us, p99 %s us\n' \
        "$(jq .idle_wake_us_p50 <<<"$platform_json")" "$(jq .idle_wake_us_p99 <<<"$platform_json")"
} | tee "$sd/table.txt"

arr() { printf '%s\n' "$@" | jq -s '.'; }
jq -n --arg date "$run_date" --arg rev "$git_rev" --argjson cores "$(nproc)" --argjson rounds "$ROUNDS" --arg dur "$DUR" \
    --argjson conns "$CONNS" --argjson s2c "$S2_CONNS" --argjson nofile "$nofile" \
    --argjson g_rps "$S1_G_RPS" --argjson g_p50 "$S1_G_P50" --argjson g_p99 "$S1_G_P99" \
    --argjson n_rps "$S1_N_RPS" --argjson n_p50 "$S1_N_P50" --argjson n_p99 "$S1_N_P99" \
    --argjson r_rps "$S1_RPS_RATIO" --argjson r_p50 "$S1_P50_RATIO" --argjson r_p99 "$S1_P99_RATIO" \
    --argjson s1g_all "$(arr "${s1g_rps[@]}")" --argjson s1n_all "$(arr "${s1n_rps[@]}")" \
    --argjson s1g_err "$(arr "${s1g_bad[@]}")" --argjson s1n_err "$(arr "${s1n_bad[@]}")" \
    --argjson cpu_gw "$S1_CPU_GW" --argjson cpu_redis "$S1_CPU_REDIS" --argjson cpu_pg "$S1_CPU_PG" \
    --argjson a50 "$S2_G_P50" --argjson a99 "$S2_G_P99" --argjson arps "$S2_G_RPS" \
    --argjson d50 "$S2_D_P50" --argjson d99 "$S2_D_P99" --argjson drps "$S2_D_RPS" \
    --argjson add50 "$S2_ADD_P50" --argjson add99 "$S2_ADD_P99" \
    --argjson n2_50 "$S2_N_P50" --argjson n2_99 "$S2_N_P99" --argjson n2rps "$S2_N_RPS" \
    --argjson nadd50 "$S2_NADD_P50" --argjson nadd99 "$S2_NADD_P99" --argjson s2n_err "$(arr "${s2n_bad[@]}")" \
    --argjson s2cpu_gw "$S2_CPU_GW" --argjson s2cpu_redis "$S2_CPU_REDIS" \
    --argjson s2g_err "$(arr "${s2g_bad[@]}")" --argjson s2d_err "$(arr "${s2d_bad[@]}")" \
    --argjson s3 "$s3_json" --argjson s4 "$s4_json" --argjson s5 "$s5_json" --argjson bodylen "${#body}" \
    --argjson platform "$platform_json" '
{
  date: $date, git_rev: $rev, cores: $cores, rounds: $rounds, duration: $dur, nofile: $nofile, platform: $platform,
  S1_cache_hit: {
    settings: {connections: $conns, wrk: "-t2 -c\($conns) -d\($dur) --latency -s bench/post.lua", body_bytes: $bodylen,
               reference: "nginx proxy_cache (worker_processes 2, proxy_cache_methods POST, key fixed)"},
    aigw: {req_per_s: $g_rps, p50_ms: $g_p50, p99_ms: $g_p99, rounds_req_per_s: $s1g_all, rounds_errors: $s1g_err},
    nginx: {req_per_s: $n_rps, p50_ms: $n_p50, p99_ms: $n_p99, rounds_req_per_s: $s1n_all, rounds_errors: $s1n_err},
    ratio_aigw_over_nginx: {req_per_s: $r_rps, p50: $r_p50, p99: $r_p99},
    cpu_us_per_request: {aigw: $cpu_gw, redis: $cpu_redis, postgresql: $cpu_pg}
  },
  S2_miss_overhead: {
    settings: {connections: $s2c, wrk: "-t2 -c\($s2c) -d\($dur) --latency, unique questions", mock: "first_token_ms 20, tokens 8",
               reference: "nginx (worker_processes 2, keep-alive upstream, proxy_buffering off) in front of the same mock"},
    aigw: {p50_ms: $a50, p99_ms: $a99, req_per_s: $arps, rounds_errors: $s2g_err},
    direct: {p50_ms: $d50, p99_ms: $d99, req_per_s: $drps, rounds_errors: $s2d_err},
    nginx: {p50_ms: $n2_50, p99_ms: $n2_99, req_per_s: $n2rps, rounds_errors: $s2n_err},
    added_ms: {p50: $add50, p99: $add99},
    nginx_added_ms: {p50: $nadd50, p99: $nadd99},
    cpu_us_per_request: {aigw: $s2cpu_gw, redis: $s2cpu_redis}
  },
  S3_many_slow: $s3,
  S4_streams: $s4,
  S5_instructions: $s5
}' >"$results/latest.json"
log "wrote $results/latest.json (raw wrk output in $runs)"
