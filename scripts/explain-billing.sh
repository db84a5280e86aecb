#!/usr/bin/env bash
# explain-billing.sh [ROWS] - the plan of the monthly billing-usage query on a
# big ai_usage_logs: start a private stack ('explain'), generate ROWS usage
# rows (default 2,000,000) for 200 tenants over 12 months plus one heavy
# tenant with ROWS/10 rows in the current month, VACUUM ANALYZE, then
# EXPLAIN (ANALYZE, BUFFERS) the query of GET /api/v1/tenants/{id}/usage as
# the daemon's role under RLS, for a typical and for the heavy tenant. The
# stack is removed afterwards.
set -euo pipefail
repo="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$repo"
rows="${1:-2000000}"
[[ "$rows" =~ ^[0-9]+$ ]] || { echo "usage: $0 [ROWS]" >&2; exit 2; }

bash scripts/install-deps.sh >/dev/null
stop_stack() { bash "$repo/scripts/devstack.sh" --name explain down >/dev/null 2>&1 || true; }
trap stop_stack EXIT
bash scripts/devstack.sh --name explain up >/dev/null
stack_env="$(bash scripts/devstack.sh --name explain env)"  # set -e sees a failure here, not inside eval
set -a; eval "$stack_env"; set +a  # exports the stack's AIGW_* lines only, not stack_env itself
psql_owner() { "$AIGW_PG_BIN/psql" -qX -v ON_ERROR_STOP=1 "$AIGW_DATABASE_OWNER_URL" "$@"; }

echo "generating $rows usage rows for 200 tenants over 12 months ..." >&2
psql_owner <<SQL
INSERT INTO tenants (code, name, tier)
    SELECT 'bill_' || lpad(g::text, 3, '0'), 'Billing ' || g, 'pro' FROM generate_series(1, 200) g;
INSERT INTO ai_usage_logs (id, tenant_id, request_id, route, query_type, status_code, success, billed,
                           from_cache, prompt_tokens, completion_tokens, response_ms, created_at)
    SELECT gen_random_uuid(), t.id, 'gen-' || g, '/api/ai/query',
           (ARRAY['knowledge', 'sales', 'inventory', 'patient_analytics'])[1 + h / 12 % 4],
           CASE WHEN h % 47 = 0 THEN 502 WHEN h % 41 = 0 THEN 429 ELSE 200 END, h % 47 <> 0 AND h % 41 <> 0,
           h % 3 <> 0 AND h % 47 <> 0 AND h % 41 <> 0, h % 3 = 0, 20 + h % 30, 40 + h % 200, 5 + h % 900,
           date_trunc('month', now()) - (h % 12) * interval '1 month'
               + ((g::bigint * 7919) % 2419200) * interval '1 second'
    FROM generate_series(1, $rows) g
    CROSS JOIN LATERAL (SELECT g / 200 AS h) per_tenant
    JOIN (SELECT id, row_number() OVER (ORDER BY code) - 1 AS n FROM tenants WHERE code LIKE 'bill_%') t
      ON t.n = g % 200;
INSERT INTO tenants (code, name, tier) VALUES ('bill_big', 'Billing Heavy', 'enterprise');
INSERT INTO ai_usage_logs (id, tenant_id, request_id, route, query_type, status_code, success, billed,
                           from_cache, prompt_tokens, completion_tokens, response_ms, created_at)
    SELECT gen_random_uuid(), (SELECT id FROM tenants WHERE code = 'bill_big'), 'big-' || g, '/api/ai/query',
           (ARRAY['knowledge', 'sales', 'inventory', 'patient_analytics'])[1 + g % 4], 200, true, g % 3 <> 0,
           g % 3 = 0, 30, 90, 50, date_trunc('month', now()) + ((g::bigint * 7919) % 2419200) * interval '1 second'
    FROM generate_series(1, $rows / 10) g;
VACUUM (ANALYZE) ai_usage_logs;
SQL
from="$(psql_owner -At -c "SELECT to_char(date_trunc('month', now() AT TIME ZONE 'UTC'), 'YYYY-MM-DD\"T00:00:00Z\"')")"
to="$(psql_owner -At -c "SELECT to_char(date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month', 'YYYY-MM-DD\"T00:00:00Z\"')")"
psql_owner -At -c "SELECT 'table: ' || count(*) || ' rows, ' || pg_size_pretty(pg_total_relation_size('ai_usage_logs'))
                   FROM ai_usage_logs"
# The statement of src/api/billing.c (USAGE_SQL) with its two parameters spelled out.
for code in bill_042 bill_big; do
    tenant="$(psql_owner -At -c "SELECT id FROM tenants WHERE code = '$code'")"
    echo "== $code, $from .. $to"
    "$AIGW_PG_BIN/psql" -qX -v ON_ERROR_STOP=1 "$AIGW_DATABASE_URL" \
        -c "BEGIN" \
        -c "SELECT set_config('app.current_tenant', '$tenant', true) IS NOT NULL AS tenant_set" \
        -c "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
            SELECT COALESCE(query_type, 'other'), grouping(COALESCE(query_type, 'other')) AS is_total,
             count(*), count(*) FILTER (WHERE billed), count(*) FILTER (WHERE from_cache),
             count(*) FILTER (WHERE status_code >= 500), count(*) FILTER (WHERE status_code BETWEEN 400 AND 499),
             count(*) FILTER (WHERE success),
             COALESCE(sum(prompt_tokens) FILTER (WHERE billed), 0),
             COALESCE(sum(completion_tokens) FILTER (WHERE billed), 0)
            FROM ai_usage_logs
            WHERE tenant_id = aigw_current_tenant()
              AND created_at >= '$from'::timestamptz AND created_at < '$to'::timestamptz
            GROUP BY ROLLUP (COALESCE(query_type, 'other')) ORDER BY is_total, 1" \
        -c "COMMIT"
done
