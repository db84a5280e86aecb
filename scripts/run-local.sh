#!/usr/bin/env bash
# run-local.sh - `make run`: install what is missing, build, start the local
# stack (PostgreSQL + Redis + mock model servers, demo tenants) and run aigw in
# the foreground. Prints a demo token per demo tenant and a curl line.
#   AIGW_PORT=8080     port to listen on
#   KEEP_STACK=1       leave the stack running after aigw exits
set -euo pipefail
repo="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$repo"
port="${AIGW_PORT:-8080}"

bash scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" >/dev/null

export AIGW_MOCK_BIN="$repo/build/tests/mock_upstream/mock-upstream"
export AIGW_MOCK_ARGS="${AIGW_MOCK_ARGS:---token-latency-ms 20 --tokens 24}"
bash scripts/devstack.sh --name dev up >/dev/null
if [[ "${KEEP_STACK:-0}" != 1 ]]; then
    trap 'bash "$repo/scripts/devstack.sh" --name dev down >/dev/null 2>&1 || true' EXIT
fi
stack_env="$(bash scripts/devstack.sh --name dev env)"  # set -e sees a failure here, not inside eval
set -a; eval "$stack_env"; set +a  # exports the stack's AIGW_* lines only, not stack_env itself
# the platform operator's signing secret (config key "platform"), per stack as well
platform_file="$AIGW_STACK_DIR/platform-jwt-secret"
[[ -s "$platform_file" ]] || (umask 077 && head -c 32 /dev/urandom | base64 | tr -d '\n' >"$platform_file")
AIGW_PLATFORM_JWT_SECRET="$(cat "$platform_file")"
export AIGW_PLATFORM_JWT_SECRET
# a per-stack random signing secret: demo tokens stay valid while the stack lives
secret_file="$AIGW_STACK_DIR/jwt-secret"
[[ -s "$secret_file" ]] || (umask 077 && head -c 32 /dev/urandom | base64 | tr -d '\n' >"$secret_file")
AIGW_JWT_SECRET="$(cat "$secret_file")"
export AIGW_JWT_SECRET AIGW_PORT="$port" AIGW_SPOOL_DIR="$AIGW_STACK_DIR/spool"

# a per-stack demo API key for the enterprise tenant (its plan has api_access);
# only its SHA-256 goes into the database, as aigw does for the keys it creates
key_file="$AIGW_STACK_DIR/demo-api-key"
[[ -s "$key_file" ]] || (umask 077 && printf 'aigw_%s' \
    "$(head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')" >"$key_file")
demo_key="$(cat "$key_file")"
key_sha="$(printf '%s' "$demo_key" | sha256sum)"
psql -X -q -v ON_ERROR_STOP=1 -d "$AIGW_DATABASE_OWNER_URL" -v sha="${key_sha%% *}" -v prefix="${demo_key:0:13}" \
    >/dev/null <<'EOF_SQL'
INSERT INTO api_keys (tenant_id, name, prefix, secret_sha256, scopes)
VALUES ('22222222-2222-4222-8222-222222222222', 'demo key (make run)', :'prefix', decode(:'sha', 'hex'),
        '{query,chat}')
ON CONFLICT (secret_sha256) DO NOTHING;
EOF_SQL

cat <<EOF_BANNER

aigw local stack is up (PostgreSQL, Redis, mock model servers in $AIGW_STACK_DIR).
Demo tokens (valid 12 h):
EOF_BANNER
ops="$(build/aigw-token -c config/aigw.json -k platform -u demo-operator -e 43200)"
printf '  %-11s %-40s %s\n' "platform" "operator, /api/v1/tenants (platform_admin)" "$ops"
first=""
for t in "clinic_001 admin Vision Care Clinic (pro)" "clinic_002 admin Optical Express (enterprise)" \
         "clinic_003 optician Family Eye Center (standard)" "clinic_004 admin Closed Optics (suspended)"; do
    read -r code role label <<<"$t"
    tok="$(build/aigw-token -c config/aigw.json -t "$code" -r "$role" -u "demo-$role" -e 43200)"
    printf '  %-11s %-40s %s\n' "$code" "$label" "$tok"
    [[ -n "$first" ]] || first="$tok"
done
cat <<EOF_BANNER

Demo API key of clinic_002 (scopes query, chat):
  $demo_key

Try:
  curl -s http://127.0.0.1:$port/api/ai/limits -H "Authorization: Bearer $first"
  curl -s http://127.0.0.1:$port/api/ai/query -H "X-API-Key: $demo_key" \\
       -H 'Content-Type: application/json' -d '{"question":"How do I clean anti-reflective lenses?"}'

Ctrl-C stops aigw and the stack (KEEP_STACK=1 keeps the stack).

EOF_BANNER
build/aigw -c config/aigw.json
