#!/usr/bin/env bash
# migrate.sh — apply aigw's numbered SQL migrations (sql/NNN_name.sql) to a
# PostgreSQL database, each file in its own transaction together with its
# bookkeeping row in public.schema_migrations.
set -euo pipefail

readonly PROG="${0##*/}"
SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
readonly SCRIPT_DIR
readonly DEFAULT_SQL_DIR="$SCRIPT_DIR/../sql"
# Arbitrary constant key for pg_advisory_lock (ASCII "aigwmigr").
readonly LOCK_KEY=7018422833478207858

usage() {
    cat <<EOF
Usage: $PROG [--status] <libpq-url> [sql-dir]
       $PROG --help

Apply, in lexical order, every sql-dir/[0-9][0-9][0-9]_*.sql file not yet
recorded in public.schema_migrations.  Each file runs in one transaction
together with the INSERT that records it (version = file name, checksum =
sha256 of the file).  A session-level pg_advisory_lock serialises concurrent
runners.  An already-applied file whose sha256 changed is a fatal error:
migrations are immutable; add a new file instead.  So is a pending file
numbered below the latest applied one (it would run after migrations meant
to follow it): give it the next free number.

  <libpq-url>  connection string / URI, e.g.
               postgresql:///aigw?host=/tmp/aigw-xxxx-dev/pg&port=5432&user=postgres
  [sql-dir]    directory of migration files (default: the repo's sql/)
  --status     list each migration as 'applied' or 'pending' (plus
               'CHANGED' / 'missing-file' / 'OUT-OF-ORDER' anomalies) and
               change nothing; exit 1 if an applied file's checksum changed,
               an applied file is missing from sql-dir, or a pending file is
               numbered below the latest applied one

A sql-dir without any NNN_*.sql file is an error (a wrong path, most likely),
and so is any other *.sql file there whose name starts with a digit (a
misnamed migration, e.g. 0014_x.sql, which would otherwise never run).

Prints 'applied NNN_name.sql' for each file applied, or 'schema up to date'.
Environment: PSQL (psql binary to use, default: psql from PATH).
Exit status: 0 ok, 1 error (including checksum mismatch), 2 usage error.
EOF
}

die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
usage_error() { printf '%s: %s\n' "$PROG" "$*" >&2; usage >&2; exit 2; }

status_mode=0
positional=()
while (($#)); do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --status) status_mode=1 ;;
        --) shift; positional+=("$@"); break ;;
        -*) usage_error "unknown option: $1" ;;
        *) positional+=("$1") ;;
    esac
    shift
done
((${#positional[@]} >= 1 && ${#positional[@]} <= 2)) \
    || usage_error "expected <libpq-url> [sql-dir]"

DB_URL="${positional[0]}"
SQL_DIR="${positional[1]:-$DEFAULT_SQL_DIR}"
[[ -n "$DB_URL" ]] || usage_error "empty <libpq-url>"
[[ -d "$SQL_DIR" ]] || die "sql directory not found: $SQL_DIR"
SQL_DIR="$(cd -- "$SQL_DIR" && pwd -P)"

PSQL_BIN="${PSQL:-psql}"
command -v "$PSQL_BIN" >/dev/null 2>&1 \
    || die "psql not found (install postgresql-client, e.g. scripts/install-deps.sh)"
command -v sha256sum >/dev/null 2>&1 || die "sha256sum not found (coreutils)"

# Migration files are UTF-8 text; don't let a C/POSIX locale make psql pick
# SQL_ASCII as the client encoding.
export PGCLIENTENCODING="${PGCLIENTENCODING:-UTF8}"

psql_run() {
    "$PSQL_BIN" -X -q -v ON_ERROR_STOP=1 -d "$DB_URL" "$@"
}

# psql meta-command argument quoting: inside '...', backslash and quote are
# special; double the quote and escape the backslash.
psql_quote() {
    local s="$1"
    s="${s//\\/\\\\}"
    s="${s//\'/\'\'}"
    printf "'%s'" "$s"
}

# ---- collect migration files ------------------------------------------------
files=()   # basenames, sorted bytewise
sums=()    # sha256, parallel to files
declare -A sum_of=()
while IFS= read -r f; do
    [[ -n "$f" ]] || continue
    # The name ends up inside SQL string literals; only allow a safe alphabet.
    [[ "$f" =~ ^[0-9]{3}_[A-Za-z0-9_.-]+\.sql$ ]] \
        || die "bad migration file name '$f' (allowed: NNN_[A-Za-z0-9_.-]+.sql)"
    [[ -f "$SQL_DIR/$f" && -r "$SQL_DIR/$f" ]] || die "not a readable file: $SQL_DIR/$f"
    sum="$(sha256sum <"$SQL_DIR/$f")"
    sum="${sum%% *}"
    files+=("$f")
    sums+=("$sum")
    sum_of[$f]="$sum"
done < <(
    shopt -s nullglob
    # every *.sql starting with a digit: one misnamed (0013_x.sql, 13_x.sql,
    # 013-x.sql) is refused below instead of being skipped without a word
    for p in "$SQL_DIR"/[0-9]*.sql; do printf '%s\n' "${p##*/}"; done \
        | LC_ALL=C sort
)

# No migrations at all is a wrong directory, not an up-to-date schema.
((${#files[@]} > 0)) \
    || die "no migration files ([0-9][0-9][0-9]_*.sql) in $SQL_DIR; is this the right sql directory?"

# Duplicate version numbers (001_a.sql + 001_b.sql) are almost always a merge
# mistake; refuse rather than guess an order.
declare -A seen_num=()
for f in "${files[@]}"; do
    n="${f:0:3}"
    [[ -z "${seen_num[$n]+x}" ]] || die "duplicate migration number $n: ${seen_num[$n]} and $f"
    seen_num[$n]="$f"
done

# Warn about explicit transaction control inside a file: it would break the
# "file + bookkeeping row in one transaction" guarantee.
for f in "${files[@]}"; do
    if grep -qiE '^[[:space:]]*(BEGIN|COMMIT|ROLLBACK|END|START[[:space:]]+TRANSACTION)[[:space:]]*;' "$SQL_DIR/$f"; then
        printf '%s: warning: %s contains transaction control statements; the runner already wraps each file in BEGIN/COMMIT\n' \
            "$PROG" "$f" >&2
    fi
done

# ---- --status ---------------------------------------------------------------
if ((status_mode)); then
    exists="$(psql_run -At -c "SELECT to_regclass('public.schema_migrations') IS NOT NULL")" \
        || die "cannot query database"
    declare -A applied_sum=() applied_at=()
    if [[ "$exists" == "t" ]]; then
        while IFS=$'\t' read -r v c a; do
            [[ -n "$v" ]] || continue
            applied_sum[$v]="$c"
            applied_at[$v]="$a"
        done < <(psql_run -At -F $'\t' \
            -c "SELECT version, checksum, to_char(applied_at, 'YYYY-MM-DD HH24:MI:SS TZ') FROM public.schema_migrations ORDER BY version COLLATE \"C\"") \
            || die "cannot read public.schema_migrations"
    fi
    rc=0 npending=0 napplied=0 changed=() missing=() early=()
    latest=""   # highest applied number: a pending file below it is out of order
    for v in "${!applied_sum[@]}"; do
        [[ "${v:0:3}" > "$latest" ]] && latest="${v:0:3}"
    done
    for f in "${files[@]}"; do
        if [[ -n "${applied_sum[$f]+x}" ]]; then
            if [[ "${applied_sum[$f]}" != "${sum_of[$f]}" ]]; then
                printf 'CHANGED       %s  (applied %s; file sha256 differs from recorded)\n' "$f" "${applied_at[$f]}"
                changed+=("$f")
            else
                printf 'applied       %s  (%s)\n' "$f" "${applied_at[$f]}"
            fi
            napplied=$((napplied + 1))
        elif [[ -n "$latest" && "${f:0:3}" < "$latest" ]]; then
            printf 'OUT-OF-ORDER  %s  (pending, numbered below the latest applied migration, %s)\n' "$f" "$latest"
            early+=("$f")
            npending=$((npending + 1))
        else
            printf 'pending       %s\n' "$f"
            npending=$((npending + 1))
        fi
    done
    while IFS= read -r v; do
        if [[ -n "$v" && -z "${sum_of[$v]+x}" ]]; then
            printf 'missing-file  %s  (recorded as applied %s, no such file in %s)\n' "$v" "${applied_at[$v]}" "$SQL_DIR"
            missing+=("$v")
            napplied=$((napplied + 1))
        fi
    done < <(printf '%s\n' "${!applied_sum[@]}" | LC_ALL=C sort)
    printf '%d applied, %d pending\n' "$napplied" "$npending"
    if ((${#changed[@]})); then
        printf '%s: error: applied migration(s) modified since they were applied: %s; migrations are immutable\n' \
            "$PROG" "${changed[*]}" >&2
        rc=1
    fi
    if ((${#missing[@]})); then
        printf '%s: error: migration(s) recorded as applied have no file in %s (renamed or removed): %s\n' \
            "$PROG" "$SQL_DIR" "${missing[*]}" >&2
        rc=1
    fi
    if ((${#early[@]})); then
        printf '%s: error: pending migration(s) numbered below the latest applied one (%s): %s; applying would run them out of order, renumber them\n' \
            "$PROG" "$latest" "${early[*]}" >&2
        rc=1
    fi
    exit "$rc"
fi

# ---- apply -------------------------------------------------------------------
# One psql session runs a generated script: take the advisory lock, make sure
# the bookkeeping table exists, then for every file decide *under the lock*
# whether it is pending (or changed) and apply it in BEGIN; \i; INSERT; COMMIT.
# File contents are never interpolated: they are read by psql's \i.
gen_script() {
    cat <<'EOF'
\set QUIET on
\set ON_ERROR_STOP on
SET client_min_messages = warning;
SELECT pg_try_advisory_lock(@LOCK@) AS aigw_mig_locked \gset
\if :aigw_mig_locked
\else
\warn 'migrate: waiting for another migration runner (pg_advisory_lock) ...'
SELECT pg_advisory_lock(@LOCK@) IS NULL AS aigw_mig_dummy \gset
\endif
CREATE TABLE IF NOT EXISTS public.schema_migrations (
    version    text PRIMARY KEY,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
RESET client_min_messages;
\set aigw_mig_applied 0
EOF
    local i f sum path values=""
    # Refuse to apply anything while an already-applied file has been edited.
    for i in "${!files[@]}"; do
        values+="${values:+, }('${files[$i]}', '${sums[$i]}')"
    done
    if [[ -n "$values" ]]; then
        cat <<EOF
SELECT count(*) > 0 AS aigw_mig_any_changed,
       coalesce(string_agg(m.version, ' ' ORDER BY m.version), '') AS aigw_mig_changed_list
  FROM public.schema_migrations m
  JOIN (VALUES $values) AS f(version, checksum) USING (version)
 WHERE m.checksum <> f.checksum \gset
\if :aigw_mig_any_changed
\warn 'migrate: already-applied migration(s) modified since they were applied:' :aigw_mig_changed_list
\warn 'migrate: migrations are immutable; revert the edit and add a new migration instead'
DO \$aigw\$ BEGIN RAISE EXCEPTION 'checksum mismatch for already-applied migration(s); nothing applied'; END \$aigw\$;
\endif
SELECT count(*) > 0 AS aigw_mig_any_missing,
       coalesce(string_agg(m.version, ' ' ORDER BY m.version), '') AS aigw_mig_missing_list
  FROM public.schema_migrations m
 WHERE m.version NOT IN (SELECT f.version FROM (VALUES $values) AS f(version, checksum)) \gset
\if :aigw_mig_any_missing
\warn 'migrate: migration(s) recorded as applied have no file here (renamed or removed):' :aigw_mig_missing_list
\warn 'migrate: a renamed file would run a second time; restore the name (or check that this is the right sql directory)'
DO \$aigw\$ BEGIN RAISE EXCEPTION 'applied migration(s) without their file; nothing applied'; END \$aigw\$;
\endif
SELECT count(*) > 0 AS aigw_mig_any_early,
       coalesce(string_agg(f.version, ' ' ORDER BY f.version), '') AS aigw_mig_early_list
  FROM (VALUES $values) AS f(version, checksum)
 WHERE f.version NOT IN (SELECT m.version FROM public.schema_migrations m)
   AND substr(f.version, 1, 3) COLLATE "C" < (SELECT max(substr(m.version, 1, 3) COLLATE "C") FROM public.schema_migrations m) \gset
\if :aigw_mig_any_early
\warn 'migrate: pending migration(s) numbered below the latest applied one:' :aigw_mig_early_list
\warn 'migrate: applying them now would run them after the later ones; renumber them after the latest applied migration'
DO \$aigw\$ BEGIN RAISE EXCEPTION 'pending migration(s) out of order; nothing applied'; END \$aigw\$;
\endif
EOF
    fi
    for i in "${!files[@]}"; do
        f="${files[$i]}"
        sum="${sums[$i]}"
        path="$(psql_quote "$SQL_DIR/$f")"
        cat <<EOF
SELECT NOT EXISTS (SELECT 1 FROM public.schema_migrations WHERE version = '$f') AS aigw_mig_pending \gset
\if :aigw_mig_pending
BEGIN;
\i $path
;
INSERT INTO public.schema_migrations (version, checksum) VALUES ('$f', '$sum');
COMMIT;
RESET ALL;
RESET ROLE;
RESET SESSION AUTHORIZATION;
\echo applied $f
\set aigw_mig_applied 1
\endif
EOF
    done
    cat <<'EOF'
\if :aigw_mig_applied
\else
\echo schema up to date
\endif
EOF
}

script="$(gen_script)"
script="${script//@LOCK@/$LOCK_KEY}"

rc=0
printf '%s\n' "$script" | psql_run -f - || rc=$?
case "$rc" in
    0) ;;
    2) die "could not connect to the database (psql exit status 2)" ;;
    *) die "migration run aborted (psql exit status $rc, see the error above); the failing migration was rolled back, files reported as applied stay applied" ;;
esac
