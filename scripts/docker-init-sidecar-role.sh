#!/bin/sh
# pg_quota in Docker: creates the sidecar's login role, quota_sidecar, a member of quota_admin
# (never a superuser), when QUOTA_SIDECAR_PASSWORD is set. Installed by the Dockerfile into
# /docker-entrypoint-initdb.d/, which the postgres image's entrypoint sources on first start
# (after 10-pg_quota.sql created the extension and its roles): no `exit` here.
if [ -n "${QUOTA_SIDECAR_PASSWORD:-}" ]; then
    printf '%s\n' "SELECT format('CREATE ROLE quota_sidecar LOGIN PASSWORD %L IN ROLE quota_admin', :'pw') \\gexec" |
        psql -v ON_ERROR_STOP=1 -v pw="$QUOTA_SIDECAR_PASSWORD" \
            --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}"
fi
