#!/usr/bin/env bash
# install-deps.sh — idempotently install (on Debian 12) everything aigw's build,
# tests and local dev stack need.  Fast no-op (single dpkg-query) when all
# packages are already installed.
set -euo pipefail

readonly PROG="${0##*/}"

usage() {
    cat <<EOF
Usage: $PROG [--help] [EXTRA_PACKAGE...]

Install the Debian packages needed to build and test aigw and to run its local
dev stack (scripts/devstack.sh).  Packages that are already installed are
skipped; when nothing is missing the script exits 0 at once.

Any EXTRA_PACKAGE arguments (e.g. 'wrk nginx' for benchmarks) are installed too.

Runs apt-get directly as root, or through sudo otherwise.
EOF
}

die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }
note() { printf '%s: %s\n' "$PROG" "$*" >&2; }

PACKAGES=(
    # toolchain
    build-essential gcc make cmake pkg-config git curl ca-certificates
    # libraries linked by aigw
    libmicrohttpd-dev libpq-dev libhiredis-dev libjansson-dev libjwt-dev
    libssl-dev libcurl4-openssl-dev libsystemd-dev
    # local stack
    postgresql postgresql-client redis-server
    # sanitizers / memory checking
    clang libclang-rt-14-dev valgrind
    # static analysis in scripts/check-style.sh
    cppcheck
    # process / network tooling used by scripts and tests
    procps iproute2 psmisc util-linux jq openssl
    # promtool (lints the /metrics exposition in tests/integration/test_metrics.c)
    prometheus
    # systemd-analyze verify/security, systemd-sysusers, systemd-tmpfiles (tests/integration/test_systemd.c)
    systemd
    # PgBouncer in transaction mode in front of PostgreSQL (tests/integration/test_usage.c)
    pgbouncer
)

# Node.js + npm run the official OpenAI SDK in tests/integration/test_sdk.c;
# a machine that already has them (any source) keeps its own
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    PACKAGES+=(nodejs npm)
fi

for arg in "$@"; do
    case "$arg" in
        -h|--help) usage; exit 0 ;;
        --) ;;
        -*) usage >&2; die "unknown option: $arg" ;;
        *) PACKAGES+=("$arg") ;;
    esac
done

command -v dpkg-query >/dev/null 2>&1 || die "dpkg-query not found: this script supports Debian/Ubuntu only"

# Names as dpkg knows them: strip any '=version' or '/release' suffix.
declare -A want=()
query=()
for p in "${PACKAGES[@]}"; do
    [[ "$p" == "--" ]] && continue
    name="${p%%=*}"
    name="${name%%/*}"
    [[ -n "$name" ]] || die "invalid package spec: '$p'"
    if [[ -z "${want[$name]+x}" ]]; then
        want[$name]="$p"
        query+=("$name")
    fi
done

# One dpkg-query call for all packages.  It exits non-zero when some names are
# unknown to dpkg (never installed); those simply count as missing.
declare -A installed=()
while IFS=$'\t' read -r pkg status; do
    if [[ "$status" == "install ok installed" ]]; then
        installed[$pkg]=1
        installed[${pkg%%:*}]=1
    fi
done < <(dpkg-query -W -f='${binary:Package}\t${Status}\n' "${query[@]}" 2>/dev/null || true)

missing=()
for name in "${query[@]}"; do
    if [[ -z "${installed[$name]+x}" ]]; then
        missing+=("${want[$name]}")
    fi
done

if ((${#missing[@]} == 0)); then
    exit 0
fi

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        die "not root and sudo is not available; cannot install: ${missing[*]}"
    fi
fi

note "installing: ${missing[*]}"
"${SUDO[@]}" apt-get update \
    || die "apt-get update failed"
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends "${missing[@]}" \
    || die "apt-get install failed for: ${missing[*]}"
note "done"
