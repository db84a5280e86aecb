#!/usr/bin/env bash
# devstack.sh — throwaway local stack for aigw development and tests:
# PostgreSQL (unix socket only) + Redis (127.0.0.1) + two mock upstream model
# servers, all living under one stack directory.
set -euo pipefail
set +m   # no job control: background children stay out of their own pgrp (see mock_start)
trap 'exit 130' INT
trap 'exit 143' TERM

readonly PROG="${0##*/}"
SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
REPO_DIR="$(cd -- "$SCRIPT_DIR/.." && pwd -P)"
readonly SCRIPT_DIR REPO_DIR
readonly PG_PORT=5432
readonly MOCKS=(1 2)

usage() {
    cat <<EOF
Usage: $PROG [--name NAME] COMMAND
       $PROG --help

Throwaway local stack: PostgreSQL + Redis + two mock upstream servers.

Commands:
  up            start everything that is not running (idempotent): initdb on
                first use, create database 'aigw', apply sql/NNN_*.sql with
                scripts/migrate.sh, load sql/demo.sql; then write and print
                the stack's env file
  down          stop everything and delete the stack directory (idempotent)
  status        show each component's state; exit 0 if all up, 3 otherwise
  env           print the stack's KEY=VALUE lines; exit 1 if it is not up
  pg-stop       stop PostgreSQL only (keeps data and socket path)
  pg-start      start PostgreSQL again
  redis-stop    stop Redis only (SHUTDOWN SAVE: data is kept; port is kept)
  redis-start   start Redis again on the same port
  mock-restart  restart both mock upstreams on their current ports

Options:
  --name NAME   stack name (default: dev; the test suite uses 'test').
                [A-Za-z0-9_.-]+; stacks with different names coexist.
  -h, --help    show this help

Stack directory:
  \${AIGW_STACK_DIR:-/tmp/aigw-<sha1(repo path):0:8>-<NAME>}
  so different names and different checkouts never collide.

Environment:
  AIGW_STACK_DIR   override the stack directory
  AIGW_MOCK_BIN    mock upstream binary
                   (default: <repo>/build/tests/mock_upstream/mock-upstream)
  AIGW_MOCK_ARGS   extra arguments for both mocks (split on whitespace)
  AIGW_PG_BIN      PostgreSQL bin directory (default: the highest
                   /usr/lib/postgresql/*/bin; an existing cluster's own
                   version is preferred)
  AIGW_PG_OS_USER  (root only) OS user that runs PostgreSQL
                   (default: postgres, else a created system user aigw-pg)

Printed/env keys: AIGW_STACK_DIR AIGW_DATABASE_URL AIGW_DATABASE_OWNER_URL
  AIGW_REDIS_URL AIGW_MOCK_URL AIGW_MOCK2_URL AIGW_PG_BIN
Values with shell-special characters (the database URLs contain '&' and '?')
are single-quoted, so the output can be eval'ed or sourced.

As root, PostgreSQL runs as the 'postgres' system user (via setpriv); Redis and
the mocks run as the invoking user.  As non-root, everything runs as you.
EOF
}

NAME=dev
CMD=""
log_prefix() { printf '%s[%s]' "$PROG" "$NAME"; }
die() { printf '%s: error: %s\n' "$(log_prefix)" "$*" >&2; exit 1; }
note() { printf '%s: %s\n' "$(log_prefix)" "$*" >&2; }
usage_error() { printf '%s: %s\n' "$PROG" "$*" >&2; printf 'Try: %s --help\n' "$PROG" >&2; exit 2; }

while (($#)); do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --name) (($# >= 2)) || usage_error "--name needs a value"; NAME="$2"; shift ;;
        --name=*) NAME="${1#--name=}" ;;
        -*) usage_error "unknown option: $1" ;;
        *) [[ -z "$CMD" ]] || usage_error "only one command allowed (got '$CMD' and '$1')"; CMD="$1" ;;
    esac
    shift
done
[[ -n "$CMD" ]] || usage_error "missing command"
case "$CMD" in
    up|down|status|env|pg-stop|pg-start|redis-stop|redis-start|mock-restart) ;;
    *) usage_error "unknown command: $CMD" ;;
esac
[[ "$NAME" =~ ^[A-Za-z0-9_.-]+$ && "$NAME" != "." && "$NAME" != ".." ]] \
    || usage_error "invalid --name '$NAME' (allowed: [A-Za-z0-9_.-]+)"

MY_UID="$(id -u)"
MY_USER="$(id -un)"
readonly MY_UID MY_USER

# ---- paths -------------------------------------------------------------------
abspath() { if [[ "$1" == /* ]]; then printf '%s' "$1"; else printf '%s/%s' "$PWD" "$1"; fi; }

if [[ -n "${AIGW_STACK_DIR:-}" ]]; then
    STACK_DIR="$(realpath -m -- "$(abspath "$AIGW_STACK_DIR")")"
else
    repo_hash="$(printf '%s' "$REPO_DIR" | sha1sum)"
    STACK_DIR="/tmp/aigw-${repo_hash:0:8}-$NAME"
fi
# The path ends up in postgresql.conf, in URLs and in the env file: keep it plain.
[[ "$STACK_DIR" =~ ^/[A-Za-z0-9_./+-]+$ && "$STACK_DIR" != "/" ]] \
    || die "unsupported stack directory '$STACK_DIR' (allowed characters: A-Za-z0-9_./+-)"
# A unix socket path must fit in sun_path (108 bytes incl. NUL).
pg_socket_path="$STACK_DIR/pg/.s.PGSQL.$PG_PORT"
((${#pg_socket_path} <= 107)) || die "stack directory path too long for a unix socket: $STACK_DIR"

MOCK_BIN="$(abspath "${AIGW_MOCK_BIN:-$REPO_DIR/build/tests/mock_upstream/mock-upstream}")"
readonly STACK_DIR MOCK_BIN

readonly MARKER="$STACK_DIR/.aigw-devstack"
readonly ENV_FILE="$STACK_DIR/env"
readonly PG_DIR="$STACK_DIR/pg"
readonly PG_DATA="$PG_DIR/data"
readonly PG_LOG="$PG_DIR/log"
readonly REDIS_DIR="$STACK_DIR/redis"
readonly REDIS_PORT_FILE="$REDIS_DIR/port"
readonly REDIS_PID_FILE="$REDIS_DIR/redis.pid"
readonly REDIS_LOG="$REDIS_DIR/log"
readonly OWNER_URL="postgresql:///aigw?host=$PG_DIR&port=$PG_PORT&user=postgres"
readonly APP_URL="postgresql:///aigw?host=$PG_DIR&port=$PG_PORT&user=aigw_app"

# Nothing below depends on the caller's cwd (which PostgreSQL's user may not
# even be allowed to enter).
cd /

# ---- small helpers -------------------------------------------------------------
is_port() { [[ "$1" =~ ^[1-9][0-9]{0,4}$ ]] && (($1 <= 65535)); }
pid_alive() {  # alive and not a zombie waiting to be reaped
    [[ "$1" =~ ^[1-9][0-9]*$ ]] && (($1 > 1)) && kill -0 "$1" 2>/dev/null || return 1
    local stat=""
    { IFS= read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 0
    stat="${stat##*) }"
    [[ "${stat:0:1}" != Z ]]
}
read_first_line() { local l=""; [[ -r "$1" ]] && IFS= read -r l <"$1"; printf '%s' "$l"; }
port_listening() { [[ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]]; }
tail_log() {
    if [[ -r "$1" ]]; then
        { printf -- '--- last lines of %s ---\n' "$1"; tail -n "${2:-20}" -- "$1"; } >&2
    fi
}
proc_cmdline() {
    if [[ -r "/proc/$1/cmdline" ]]; then tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true; fi
}

# Wait (up to $1 seconds) for pid $2 to exit.
wait_pid_exit() {
    local i
    for ((i = 0; i < $1 * 10; i++)); do
        pid_alive "$2" || return 0
        sleep 0.1
    done
    ! pid_alive "$2"
}

# Daemons must not inherit our descriptors: not the stack lock (fd 9), and
# not whatever pipes the caller passed down (a test harness waiting for EOF
# on one would hang).  Call in the subshell that starts the daemon.
close_extra_fds() {
    local f fd fds=()
    for f in /proc/self/fd/*; do fds+=("${f##*/}"); done
    for fd in "${fds[@]}"; do
        if [[ "$fd" =~ ^[0-9]+$ ]] && ((fd > 2)); then
            { exec {fd}>&-; } 2>/dev/null || true
        fi
    done
}

shell_value() {  # KEY=VALUE value quoting: only when needed
    local v="$1"
    if [[ "$v" =~ ^[A-Za-z0-9_./:@%+=,-]*$ ]]; then
        printf '%s' "$v"
    else
        printf "'%s'" "${v//\'/\'\\\'\'}"
    fi
}

stack_exists() { [[ -d "$STACK_DIR" && -f "$MARKER" ]]; }

check_marker() {
    [[ -f "$MARKER" ]] || return 0
    local k v mname="" mrepo=""
    while IFS='=' read -r k v; do
        case "$k" in name) mname="$v" ;; repo) mrepo="$v" ;; esac
    done <"$MARKER"
    if [[ "$mname" != "$NAME" ]]; then
        die "$STACK_DIR belongs to stack '$mname', not '$NAME' (AIGW_STACK_DIR leaked from another stack's env? unset it)"
    fi
    if [[ "$mrepo" != "$REPO_DIR" ]]; then
        die "$STACK_DIR belongs to the checkout at $mrepo, not $REPO_DIR (unset AIGW_STACK_DIR or point it elsewhere)"
    fi
}

# Serialise state-changing commands on one stack: flock on the stack directory
# itself (fd 9).  Daemons are started via close_extra_fds so they do not
# inherit (and keep holding) the lock.
lock_stack() {  # $1: 1 = create the directory (and its marker) if missing
    local create="$1" i
    for ((i = 0; i < 50; i++)); do
        if [[ ! -d "$STACK_DIR" ]]; then
            ((create)) || return 1
            make_stack_dir
        fi
        exec 9<"$STACK_DIR"
        flock -w 300 9 || die "timed out waiting for another $PROG operation on $STACK_DIR"
        # The directory may have been removed (down) while we waited.
        if [[ "$STACK_DIR" -ef /dev/fd/9 ]]; then
            check_stack_dir
            if ((create)); then init_marker; fi
            return 0
        fi
        exec 9<&-
    done
    die "could not lock $STACK_DIR"
}

make_stack_dir() {
    [[ ! -L "$STACK_DIR" ]] || die "$STACK_DIR is a symlink; refusing to use it"
    if [[ ! -e "$STACK_DIR" ]]; then
        mkdir -p -- "$(dirname -- "$STACK_DIR")"
        mkdir -m 0755 -- "$STACK_DIR" 2>/dev/null || [[ -d "$STACK_DIR" ]] \
            || die "cannot create $STACK_DIR"
    fi
    check_stack_dir
}

check_stack_dir() {
    [[ -d "$STACK_DIR" && ! -L "$STACK_DIR" ]] || die "$STACK_DIR exists and is not a directory"
    [[ "$(stat -c %u -- "$STACK_DIR")" == "$MY_UID" ]] \
        || die "$STACK_DIR is owned by another user ($(stat -c %U -- "$STACK_DIR")); refusing to use it"
}

init_marker() {  # with the lock held
    if [[ ! -f "$MARKER" ]]; then
        if [[ -n "$(ls -A -- "$STACK_DIR")" ]]; then
            die "$STACK_DIR exists, is not empty and is not a devstack directory; refusing to use it"
        fi
        printf 'name=%s\nrepo=%s\n' "$NAME" "$REPO_DIR" >"$MARKER.tmp"
        mv -f -- "$MARKER.tmp" "$MARKER"
    fi
    check_marker
    chmod 0755 -- "$STACK_DIR"
}

require_stack() {
    stack_exists || die "stack '$NAME' is not up ($STACK_DIR missing); run: $PROG --name $NAME up"
    check_marker
    lock_stack 0 || die "stack '$NAME' is not up ($STACK_DIR missing)"
}

# ---- PostgreSQL ------------------------------------------------------------------
PG_BIN=""
find_pg_bin() {
    [[ -z "$PG_BIN" ]] || return 0
    if [[ -n "${AIGW_PG_BIN:-}" ]]; then
        [[ -x "$AIGW_PG_BIN/initdb" && -x "$AIGW_PG_BIN/pg_ctl" ]] \
            || die "AIGW_PG_BIN=$AIGW_PG_BIN does not contain initdb/pg_ctl"
        PG_BIN="$AIGW_PG_BIN"
        return 0
    fi
    # An existing cluster must be run by its own major version.
    local v
    v="$(read_first_line "$PG_DATA/PG_VERSION" 2>/dev/null || true)"
    if [[ -n "$v" && -x "/usr/lib/postgresql/$v/bin/pg_ctl" ]]; then
        PG_BIN="/usr/lib/postgresql/$v/bin"
        return 0
    fi
    local d best=""
    best="$(for d in /usr/lib/postgresql/*/bin; do
                [[ -x "$d/initdb" && -x "$d/pg_ctl" ]] || continue
                v="${d#/usr/lib/postgresql/}"
                printf '%s\n' "${v%/bin}"
            done | sort -V | tail -n 1)"
    [[ -n "$best" ]] \
        || die "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (run scripts/install-deps.sh)"
    PG_BIN="/usr/lib/postgresql/$best/bin"
}

PG_USER=""
# Which OS user runs PostgreSQL: the data directory's owner if it exists;
# otherwise the current user, or (as root) postgres / a dedicated aigw-pg.
resolve_pg_user() {
    [[ -z "$PG_USER" ]] || return 0
    if [[ -d "$PG_DATA" ]]; then
        PG_USER="$(stat -c %U -- "$PG_DATA")"
    elif ((MY_UID != 0)); then
        PG_USER="$MY_USER"
    elif [[ -n "${AIGW_PG_OS_USER:-}" ]]; then
        PG_USER="$AIGW_PG_OS_USER"
        getent passwd "$PG_USER" >/dev/null || die "AIGW_PG_OS_USER=$PG_USER: no such user"
    elif getent passwd postgres >/dev/null; then
        PG_USER=postgres
    else
        PG_USER=aigw-pg
        if ! getent passwd "$PG_USER" >/dev/null; then
            note "creating system user $PG_USER to run PostgreSQL (it refuses to run as root)"
            local useradd
            useradd="$(command -v useradd || echo /usr/sbin/useradd)"
            "$useradd" --system --user-group --no-create-home --home-dir /nonexistent \
                --shell /usr/sbin/nologin "$PG_USER" \
                || getent passwd "$PG_USER" >/dev/null \
                || die "could not create system user $PG_USER"
        fi
    fi
    if [[ "$PG_USER" == root ]]; then
        die "PostgreSQL cannot run as root ($PG_DATA is owned by root); run: $PROG --name $NAME down"
    fi
    if ((MY_UID != 0)) && [[ "$PG_USER" != "$MY_USER" ]]; then
        die "$PG_DATA belongs to $PG_USER; run this as $PG_USER or root"
    fi
}

as_pg() {  # run a command as the PostgreSQL OS user
    resolve_pg_user
    if [[ "$PG_USER" == "$MY_USER" ]]; then
        "$@"
    else
        setpriv --reuid="$PG_USER" --regid="$(id -g -- "$PG_USER")" --init-groups --reset-env -- "$@"
    fi
}

pg_pid() {  # postmaster pid if alive, else empty
    local pid
    pid="$(read_first_line "$PG_DATA/postmaster.pid" 2>/dev/null || true)"
    if pid_alive "$pid"; then printf '%s' "$pid"; fi
}

pg_running() {
    [[ -S "$PG_DIR/.s.PGSQL.$PG_PORT" ]] || return 1
    find_pg_bin
    "$PG_BIN/pg_isready" -q -t 5 -h "$PG_DIR" -p "$PG_PORT" -U postgres -d postgres >/dev/null 2>&1
}

psql_owner() {  # psql as the superuser; args: -d DB ...
    find_pg_bin
    PGCLIENTENCODING=UTF8 "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_DIR" -p "$PG_PORT" -U postgres "$@"
}

pg_init() {
    [[ -f "$PG_DATA/PG_VERSION" ]] && return 0
    find_pg_bin
    resolve_pg_user
    mkdir -p -- "$PG_DIR"
    if ((MY_UID == 0)); then
        chown -- "$PG_USER:$(id -g -- "$PG_USER")" "$PG_DIR"
    fi
    chmod 0755 -- "$PG_DIR"
    as_pg test -w "$PG_DIR" -a -x "$PG_DIR" \
        || die "OS user $PG_USER cannot write to $PG_DIR (is a parent directory closed to it?)"
    rm -rf -- "$PG_DATA"   # leftovers of an interrupted initdb
    note "initdb ($PG_BIN, OS user $PG_USER)"
    local out="$PG_DIR/initdb.out"
    if ! as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 \
            --locale=C.UTF-8 --no-sync >"$out" 2>&1 </dev/null; then
        # only a missing locale is worth a retry (initdb also exits 1 on Ctrl-C)
        grep -qiE 'invalid locale|locale .* (is not|not) (supported|available)' "$out" \
            || { tail_log "$out" 40; rm -rf -- "$PG_DATA"; die "initdb failed"; }
        note "initdb with --locale=C.UTF-8 failed; retrying with --locale=C"
        rm -rf -- "$PG_DATA"
        as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 \
            --locale=C --no-sync >"$out" 2>&1 </dev/null \
            || { tail_log "$out" 40; rm -rf -- "$PG_DATA"; die "initdb failed"; }
    fi
    cat >>"$PG_DATA/postgresql.conf" <<EOF

# ---- aigw devstack ($NAME) ----
listen_addresses = ''
unix_socket_directories = '$PG_DIR'
# trust authentication: only the stack's own OS user (and root) may connect,
# not every local user (a superuser session can run programs as the server)
unix_socket_permissions = 0700
port = $PG_PORT
max_connections = 200
fsync = on
synchronous_commit = on
EOF
}

pg_start() {
    if pg_running; then
        note "postgres: already running"
        return 0
    fi
    [[ -f "$PG_DATA/PG_VERSION" ]] || die "no PostgreSQL data in $PG_DATA; run: $PROG --name $NAME up"
    find_pg_bin
    resolve_pg_user
    local out="$PG_DIR/pg_ctl.out"
    note "postgres: starting (socket $PG_DIR, port $PG_PORT)"
    if ! (close_extra_fds; as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 60 start) \
            </dev/null >"$out" 2>&1; then
        tail_log "$out"
        tail_log "$PG_LOG"
        die "PostgreSQL failed to start"
    fi
    pg_running || { tail_log "$PG_LOG"; die "PostgreSQL started but is not accepting connections"; }
}

pg_stop() {
    local pid
    pid="$(pg_pid)"
    if [[ -z "$pid" ]]; then
        note "postgres: not running"
        return 0
    fi
    find_pg_bin
    note "postgres: stopping"
    if ! as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 30 stop \
            </dev/null >"$PG_DIR/pg_ctl.out" 2>&1; then
        note "postgres: fast shutdown failed; using immediate"
        as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate -w -t 10 stop \
            </dev/null >"$PG_DIR/pg_ctl.out" 2>&1 || kill -KILL "$pid" 2>/dev/null || true
    fi
    wait_pid_exit 10 "$pid" || die "PostgreSQL (pid $pid) did not stop"
}

pg_setup_db() {
    local have
    have="$(psql_owner -d postgres -At -c "SELECT 1 FROM pg_database WHERE datname = 'aigw'")" \
        || die "cannot query PostgreSQL"
    if [[ "$have" != 1 ]]; then
        psql_owner -d postgres -c 'CREATE DATABASE aigw OWNER postgres' >&2 \
            || die "CREATE DATABASE aigw failed"
        note "postgres: created database aigw"
    fi
    local sql_dir="$REPO_DIR/sql" migs=()
    shopt -s nullglob
    migs=("$sql_dir"/[0-9][0-9][0-9]_*.sql)
    shopt -u nullglob
    if ((${#migs[@]} == 0)); then
        note "postgres: no migrations in $sql_dir yet; skipping schema and demo data"
        return 0
    fi
    PSQL="$PG_BIN/psql" "$SCRIPT_DIR/migrate.sh" "$OWNER_URL" "$sql_dir" >&2 \
        || die "migrations failed"
    if [[ -f "$sql_dir/demo.sql" ]]; then
        psql_owner -d aigw --single-transaction -f "$sql_dir/demo.sql" >&2 \
            || die "loading $sql_dir/demo.sql failed"
        note "postgres: demo data loaded"
    fi
}

# ---- Redis -------------------------------------------------------------------------
redis_port() { read_first_line "$REDIS_PORT_FILE" 2>/dev/null || true; }

redis_pid() {  # pid from our pid file, if alive and still a redis-server (on our port)
    local pid port cmd
    pid="$(read_first_line "$REDIS_PID_FILE" 2>/dev/null || true)"
    pid_alive "$pid" || return 0
    port="$(redis_port)"
    cmd="$(proc_cmdline "$pid")"
    [[ "$cmd" == *redis-server* ]] || return 0
    if is_port "$port" && [[ "$cmd" != *":$port"* ]]; then return 0; fi
    printf '%s' "$pid"
}

# Up = something answers on the recorded port AND it is *our* redis (its dir).
redis_running_on() {
    local port="$1" out=()
    is_port "$port" || return 1
    mapfile -t out < <(timeout 5 redis-cli -h 127.0.0.1 -p "$port" --raw CONFIG GET dir 2>/dev/null || true)
    ((${#out[@]} >= 2)) && [[ "${out[1]}" -ef "$REDIS_DIR" ]]
}
redis_running() { redis_running_on "$(redis_port)"; }

pick_port() {
    # Prefer ports below the kernel's ephemeral range so outgoing connections
    # cannot squat on them while a component is stopped.
    local lo=20000 hi=60000 elo p i
    read -r elo _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || elo=""
    if [[ "$elo" =~ ^[0-9]+$ ]] && ((elo > lo + 1000)); then hi=$((elo - 1)); fi
    for ((i = 0; i < 200; i++)); do
        p=$((lo + (RANDOM * 32768 + RANDOM) % (hi - lo + 1)))
        if ! port_listening "$p"; then printf '%s' "$p"; return 0; fi
    done
    return 1
}

redis_start() {
    if redis_running; then
        note "redis: already running (port $(redis_port))"
        return 0
    fi
    command -v redis-server >/dev/null 2>&1 || die "redis-server not found (run scripts/install-deps.sh)"
    command -v redis-cli >/dev/null 2>&1 || die "redis-cli not found (run scripts/install-deps.sh)"
    mkdir -p -- "$REDIS_DIR"
    local port fixed=0 attempt off pid deadline
    port="$(redis_port)"
    if is_port "$port"; then fixed=1; fi
    for ((attempt = 1; attempt <= 10; attempt++)); do
        if ((!fixed)); then
            port="$(pick_port)" || die "no free TCP port found for redis"
        fi
        # An old redis of ours that lost its pid file/port? Leave nothing behind.
        pid="$(redis_pid)"
        if [[ -n "$pid" ]]; then
            kill -TERM "$pid" 2>/dev/null || true
            wait_pid_exit 5 "$pid" || kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f -- "$REDIS_PID_FILE"
        off=0
        [[ -f "$REDIS_LOG" ]] && off="$(stat -c %s -- "$REDIS_LOG")"
        note "redis: starting on 127.0.0.1:$port"
        (close_extra_fds
         exec redis-server --bind 127.0.0.1 --port "$port" --dir "$REDIS_DIR" --save '' \
            --appendonly no --daemonize yes --pidfile "$REDIS_PID_FILE" \
            --logfile "$REDIS_LOG" --protected-mode yes) \
            </dev/null >"$REDIS_DIR/start.out" 2>&1 \
            || { tail_log "$REDIS_DIR/start.out"; die "redis-server failed to start"; }
        deadline=$((SECONDS + 10))
        while ((SECONDS < deadline)); do
            if redis_running_on "$port"; then
                printf '%s\n' "$port" >"$REDIS_PORT_FILE"
                # A dump written by redis-stop has been loaded; don't reload it later.
                rm -f -- "$REDIS_DIR/dump.rdb"
                return 0
            fi
            if [[ -f "$REDIS_LOG" ]] && tail -c "+$((off + 1))" -- "$REDIS_LOG" 2>/dev/null \
                    | grep -qiE 'address already in use|could not create server tcp listening socket'; then
                break
            fi
            sleep 0.1
        done
        if ((fixed)); then
            # The port must stay the same (tests keep the URL): retry a while.
            note "redis: port $port not usable yet; retrying"
            sleep 1
        fi
    done
    tail_log "$REDIS_LOG"
    die "redis did not come up (port $port)"
}

redis_stop() {  # $1: SAVE or NOSAVE
    local port pid
    port="$(redis_port)"
    pid="$(redis_pid)"
    if ! redis_running_on "$port" && [[ -z "$pid" ]]; then
        note "redis: not running"
        return 0
    fi
    note "redis: stopping"
    if redis_running_on "$port"; then
        timeout 15 redis-cli -h 127.0.0.1 -p "$port" SHUTDOWN "$1" >/dev/null 2>&1 || true
    fi
    if [[ -n "$pid" ]] && ! wait_pid_exit 10 "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        wait_pid_exit 5 "$pid" || kill -KILL "$pid" 2>/dev/null || true
        wait_pid_exit 5 "$pid" || die "redis (pid $pid) did not stop"
    fi
    local i
    for ((i = 0; i < 50; i++)); do
        redis_running_on "$port" || return 0
        sleep 0.1
    done
    die "redis on port $port did not stop"
}

# ---- mock upstreams -------------------------------------------------------------------
mock_pid_file() { printf '%s/mock%s.pid' "$STACK_DIR" "$1"; }
mock_port_file() { printf '%s/mock%s.port' "$STACK_DIR" "$1"; }
mock_saved_port_file() { printf '%s/mock%s.lastport' "$STACK_DIR" "$1"; }
mock_log() { printf '%s/mock%s.log' "$STACK_DIR" "$1"; }

mock_pid() {  # pid of our mock N if alive (checked via its --port-file argument)
    local pid
    pid="$(read_first_line "$(mock_pid_file "$1")" 2>/dev/null || true)"
    if pid_alive "$pid" && [[ "$(proc_cmdline "$pid")" == *"$(mock_port_file "$1")"* ]]; then
        printf '%s' "$pid"
    fi
}

mock_port() {
    local p
    p="$(read_first_line "$(mock_port_file "$1")" 2>/dev/null || true)"
    p="${p//[[:space:]]/}"
    if is_port "$p"; then printf '%s' "$p"; fi
}

mock_running() {
    local pid port
    pid="$(mock_pid "$1")"
    port="$(mock_port "$1")"
    [[ -n "$pid" && -n "$port" ]] && port_listening "$port"
}

require_mock_bin() {
    [[ -f "$MOCK_BIN" && -x "$MOCK_BIN" ]] \
        || die "mock upstream binary not found: $MOCK_BIN (build first: cmake -S $REPO_DIR -B $REPO_DIR/build && cmake --build $REPO_DIR/build; or set AIGW_MOCK_BIN)"
}

mock_start() {
    local n="$1" pid port pf log extra=() attempt p1 p2 deadline
    if mock_running "$n"; then
        note "mock$n: already running (port $(mock_port "$n"))"
        return 0
    fi
    require_mock_bin
    mock_stop "$n" quiet   # a half-dead previous instance
    pf="$(mock_port_file "$n")"
    log="$(mock_log "$n")"
    port="$(read_first_line "$(mock_saved_port_file "$n")" 2>/dev/null || true)"
    is_port "$port" || port=0
    read -r -a extra <<<"${AIGW_MOCK_ARGS:-}"
    for ((attempt = 1; attempt <= 5; attempt++)); do
        rm -f -- "$pf"
        if [[ "$port" == 0 ]]; then note "mock$n: starting"; else note "mock$n: starting on port $port"; fi
        printf '=== %s: %s --port %s --port-file %s %s\n' "$(date '+%F %T')" "$MOCK_BIN" "$port" "$pf" "${extra[*]}" >>"$log"
        # Without job control the child is not a process-group leader, so
        # setsid(1) does not fork and $! is the mock's own pid.
        (close_extra_fds; exec setsid "$MOCK_BIN" --port "$port" --port-file "$pf" "${extra[@]}") \
            </dev/null >>"$log" 2>&1 &
        pid=$!
        printf '%s\n' "$pid" >"$(mock_pid_file "$n")"
        deadline=$((SECONDS + 10))
        while ((SECONDS < deadline)); do
            p1="$(mock_port "$n")"
            if [[ -n "$p1" ]]; then
                sleep 0.05   # the file may still be being written
                p2="$(mock_port "$n")"
                if [[ "$p1" == "$p2" ]] && pid_alive "$pid"; then
                    printf '%s\n' "$p1" >"$(mock_saved_port_file "$n")"
                    return 0
                fi
            fi
            pid_alive "$pid" || break
            sleep 0.1
        done
        if pid_alive "$pid"; then
            kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
            tail_log "$log"
            die "mock$n did not write its port file $pf within 10 s"
        fi
        wait "$pid" 2>/dev/null || true
        if [[ "$port" == 0 ]]; then break; fi
        note "mock$n: exited at start (port $port busy?); retrying"
        sleep 1
    done
    tail_log "$log"
    die "mock$n failed to start (see $log)"
}

mock_stop() {  # $1: N; $2: 'quiet' to not report
    local n="$1" pid
    pid="$(mock_pid "$n")"
    if [[ -n "$pid" ]]; then
        [[ "${2:-}" == quiet ]] || note "mock$n: stopping"
        # The mock leads its own session/process group (setsid): signal the group.
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        if ! wait_pid_exit 5 "$pid"; then
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
            wait_pid_exit 5 "$pid" || die "mock$n (pid $pid) did not stop"
        fi
    elif [[ "${2:-}" != quiet ]]; then
        note "mock$n: not running"
    fi
    rm -f -- "$(mock_pid_file "$n")" "$(mock_port_file "$n")"
}

# ---- env -----------------------------------------------------------------------------------
write_env() {
    find_pg_bin
    local rport m1 m2
    rport="$(redis_port)"
    m1="$(mock_port 1)"
    m2="$(mock_port 2)"
    {
        printf 'AIGW_STACK_DIR=%s\n' "$(shell_value "$STACK_DIR")"
        printf 'AIGW_DATABASE_URL=%s\n' "$(shell_value "$APP_URL")"
        printf 'AIGW_DATABASE_OWNER_URL=%s\n' "$(shell_value "$OWNER_URL")"
        printf 'AIGW_REDIS_URL=%s\n' "$(shell_value "redis://127.0.0.1:$rport")"
        printf 'AIGW_MOCK_URL=%s\n' "$(shell_value "http://127.0.0.1:$m1")"
        printf 'AIGW_MOCK2_URL=%s\n' "$(shell_value "http://127.0.0.1:$m2")"
        printf 'AIGW_PG_BIN=%s\n' "$(shell_value "$PG_BIN")"
    } >"$ENV_FILE.tmp"
    chmod 0644 -- "$ENV_FILE.tmp"
    mv -f -- "$ENV_FILE.tmp" "$ENV_FILE"
}

# ---- commands -------------------------------------------------------------------------------
cmd_up() {
    require_mock_bin          # fail before starting anything
    command -v setpriv >/dev/null 2>&1 || ((MY_UID != 0)) || die "setpriv not found (util-linux)"
    command -v ss >/dev/null 2>&1 || die "ss not found (iproute2; run scripts/install-deps.sh)"
    find_pg_bin
    lock_stack 1
    local all=1 n
    pg_running || all=0
    redis_running || all=0
    for n in "${MOCKS[@]}"; do mock_running "$n" || all=0; done
    if ((all)); then
        note "stack '$NAME' is already up ($STACK_DIR)"
    fi
    pg_init
    pg_start
    pg_setup_db
    redis_start
    for n in "${MOCKS[@]}"; do mock_start "$n"; done
    write_env
    ((all)) || note "stack '$NAME' is up ($STACK_DIR)"
    cat -- "$ENV_FILE"
}

cmd_down() {
    if [[ ! -e "$STACK_DIR" ]]; then
        note "stack '$NAME' is not up (no $STACK_DIR); nothing to do"
        return 0
    fi
    check_marker
    lock_stack 0 || { note "stack '$NAME' is not up; nothing to do"; return 0; }
    if [[ ! -f "$MARKER" ]]; then
        if [[ -z "$(ls -A -- "$STACK_DIR")" ]]; then
            rmdir -- "$STACK_DIR" 2>/dev/null || true   # an 'up' that has not got going yet retries
            note "stack '$NAME' is not up; nothing to do"
            return 0
        fi
        die "$STACK_DIR is not a devstack directory (no $MARKER); refusing to delete it"
    fi
    local n
    for n in "${MOCKS[@]}"; do mock_stop "$n"; done
    redis_stop NOSAVE
    if [[ -d "$PG_DATA" ]]; then pg_stop; fi
    # Paranoia: nothing of ours may survive.
    local pid
    pid="$(pg_pid)"; [[ -z "$pid" ]] || die "PostgreSQL (pid $pid) is still running"
    pid="$(redis_pid)"; [[ -z "$pid" ]] || die "redis (pid $pid) is still running"
    # Still holding the lock (fd 9): a waiting 'up' starts afresh afterwards.
    rm -rf -- "$STACK_DIR"
    note "stack '$NAME' is down ($STACK_DIR removed)"
}

cmd_status() {
    if ! stack_exists; then
        printf 'stack %s: down (no %s)\n' "$NAME" "$STACK_DIR"
        return 3
    fi
    check_marker
    local rc=0 port pid n
    printf 'stack %s: %s\n' "$NAME" "$STACK_DIR"
    if pg_running; then
        printf 'postgres: up    socket %s port %s pid %s (%s)\n' "$PG_DIR" "$PG_PORT" "$(pg_pid)" "$PG_BIN"
    else
        printf 'postgres: down\n'; rc=3
    fi
    port="$(redis_port)"
    if redis_running_on "$port"; then
        printf 'redis:    up    127.0.0.1:%s pid %s\n' "$port" "$(redis_pid)"
    else
        printf 'redis:    down%s\n' "${port:+   (port $port)}"; rc=3
    fi
    for n in "${MOCKS[@]}"; do
        if mock_running "$n"; then
            printf 'mock%s:    up    127.0.0.1:%s pid %s\n' "$n" "$(mock_port "$n")" "$(mock_pid "$n")"
        else
            pid="$(mock_pid "$n")"
            printf 'mock%s:    down%s\n' "$n" "${pid:+   (pid $pid alive but not listening)}"; rc=3
        fi
    done
    return "$rc"
}

cmd_env() {
    if ! stack_exists || [[ ! -f "$ENV_FILE" ]]; then
        die "stack '$NAME' is not up; run: $PROG --name $NAME up"
    fi
    check_marker
    # A stack with one component stopped on purpose (pg-stop, redis-stop) is
    # still 'up'; one with nothing running at all is not.
    local n any=0
    if pg_running || redis_running; then any=1; fi
    for n in "${MOCKS[@]}"; do mock_running "$n" && any=1; done
    ((any)) || die "stack '$NAME' is not running (nothing alive in $STACK_DIR); run: $PROG --name $NAME up"
    cat -- "$ENV_FILE"
}

case "$CMD" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) rc=0; cmd_status || rc=$?; exit "$rc" ;;
    env) cmd_env ;;
    pg-stop) require_stack; pg_stop ;;
    pg-start) require_stack; pg_start ;;
    redis-stop) require_stack; redis_stop SAVE ;;
    redis-start)
        require_stack
        is_port "$(redis_port)" || die "redis was never started in this stack; run: $PROG --name $NAME up"
        redis_start ;;
    mock-restart)
        require_stack
        require_mock_bin
        for n in "${MOCKS[@]}"; do mock_stop "$n"; done
        for n in "${MOCKS[@]}"; do mock_start "$n"; done
        write_env ;;
esac
