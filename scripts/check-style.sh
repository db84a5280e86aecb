#!/usr/bin/env bash
# check-style.sh - fail on banned C functions (unsafe or not thread-safe) and on
# what cppcheck finds.
set -euo pipefail
cd "$(dirname -- "${BASH_SOURCE[0]}")/.."
banned='\b(sprintf|vsprintf|strcpy|strcat|strncpy|strtok|atoi|atol|gmtime|localtime|strerror|asctime|ctime)[[:space:]]*\('
if grep -rnE "$banned" src include tests bench --include='*.c' --include='*.h'; then
    echo "check-style: banned function used (see STYLE: use snprintf, strtol, gmtime_r, strerror_r ...)" >&2
    exit 1
fi
# cppcheck's warnings (uninitialized or freed memory, leaks on a path, bad
# format strings, realloc losing its pointer ...). varFuncNullUB is off: it
# says a bare NULL ending a variadic call could be an int, which glibc's
# ((void *)0) is not, and the sentinel attribute on those functions makes
# gcc check the terminator itself.
if command -v cppcheck >/dev/null; then
    cppcheck -q --std=c11 --enable=warning,performance,portability --inline-suppr --error-exitcode=1 \
        --suppress=varFuncNullUB -j2 -I include src tests bench \
        || { echo "check-style: cppcheck found the above" >&2; exit 1; }
else
    echo "check-style: cppcheck not installed (scripts/install-deps.sh installs it); skipped" >&2
fi
