#!/usr/bin/env bash
# check-style.sh - fail on banned C functions (unsafe or not thread-safe).
set -euo pipefail
cd "$(dirname -- "${BASH_SOURCE[0]}")/.."
banned='\b(sprintf|vsprintf|strcpy|strcat|strncpy|strtok|atoi|atol|gmtime|localtime|strerror|asctime|ctime)[[:space:]]*\('
if grep -rnE "$banned" src include tests bench --include='*.c' --include='*.h'; then
    echo "check-style: banned function used (see STYLE: use snprintf, strtol, gmtime_r, strerror_r ...)" >&2
    exit 1
fi
