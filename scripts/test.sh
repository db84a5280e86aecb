#!/usr/bin/env bash
# test.sh [--sanitize] [ctest args...] - the whole test suite: install what is missing, build
# with warnings as errors, start a private test stack (PostgreSQL + Redis +
# mock upstreams), run ctest against it, stop the stack.
#   --sanitize   build with ASan+UBSan (separate build dir and stack)
#   ctest args   e.g. `-R auth` to run only matching tests while developing
set -euo pipefail
repo="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$repo"

build=build stack=test
cmake_args=(-DAIGW_WERROR=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo)
if [[ "${1:-}" == "--sanitize" ]]; then
    shift
    build=build-asan stack=test-asan
    cmake_args=(-DAIGW_WERROR=ON -DAIGW_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug)
    export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1:fast_unwind_on_malloc=0"
    export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
    export LSAN_OPTIONS="suppressions=$repo/tests/lsan.supp:print_suppressions=0"
fi

bash scripts/install-deps.sh
bash scripts/check-style.sh
cmake -S . -B "$build" "${cmake_args[@]}" >/dev/null
cmake --build "$build" -j"$(nproc)"

export AIGW_MOCK_BIN="$repo/$build/tests/mock_upstream/mock-upstream"
stop_stack() { bash "$repo/scripts/devstack.sh" --name "$stack" down >/dev/null 2>&1 || true; }
trap stop_stack EXIT
bash scripts/devstack.sh --name "$stack" up >/dev/null
stack_env="$(bash scripts/devstack.sh --name "$stack" env)"  # set -e sees a failure here, not inside eval
set -a; eval "$stack_env"; set +a  # exports the stack's AIGW_* lines only, not stack_env itself
export AIGW_STACK_NAME="$stack"
AIGW_JWT_SECRET="$(head -c 32 /dev/urandom | base64 | tr -d '\n')"
AIGW_PLATFORM_JWT_SECRET="$(head -c 32 /dev/urandom | base64 | tr -d '\n')"
export AIGW_JWT_SECRET AIGW_PLATFORM_JWT_SECRET

# the official OpenAI SDK for tests/integration/test_sdk.c, from npm (pinned by
# tests/sdk/package-lock.json), installed next to the build
sdk="$repo/$build/sdk"
if [[ ! -d "$sdk/node_modules/openai" || "$repo/tests/sdk/package-lock.json" -nt "$sdk/node_modules" ]]; then
    mkdir -p "$sdk"
    cp "$repo/tests/sdk/package.json" "$repo/tests/sdk/package-lock.json" "$repo/tests/sdk/openai_sdk.mjs" "$sdk/"
    (cd "$sdk" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
cp "$repo/tests/sdk/openai_sdk.mjs" "$sdk/"
export AIGW_SDK_DIR="$sdk"

cd "$build"
rc=0
ctest --output-on-failure --timeout 600 -j2 "$@" || rc=$?

# The mock model servers are built like everything else (with the
# sanitizers under --sanitize), and their reports go to their logs, which
# removing the stack deletes: stop them first (LeakSanitizer reports at
# exit), then look.
for pidfile in "$AIGW_STACK_DIR"/mock*.pid; do
    [[ -f "$pidfile" ]] || continue
    pid="$(head -n 1 -- "$pidfile")"
    [[ "$pid" =~ ^[0-9]+$ ]] || continue
    # only our mock: the number may belong to another process by now
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "mock-upstream.*$AIGW_STACK_DIR" || continue
    kill -TERM "$pid" 2>/dev/null || continue
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
done
if grep -qE 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$AIGW_STACK_DIR"/mock*.log 2>/dev/null; then
    echo "test.sh: a sanitizer reported in a mock server's log:" >&2
    grep -hE -A25 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$AIGW_STACK_DIR"/mock*.log >&2 || true
    rc=1
fi
exit "$rc"
