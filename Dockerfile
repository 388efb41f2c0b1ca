# pg_quota: PostgreSQL 15 with the pg_quota extension preloaded, plus the quota-sidecar binary.
#
#   docker build -t pg_quota .
#   docker run -d --name pg_quota -e POSTGRES_PASSWORD=secret -e QUOTA_SIDECAR_PASSWORD=s3cret \
#       -p 5432:5432 pg_quota
#       -> database $POSTGRES_DB (default postgres) has the extension; its worker connects there;
#          the login role quota_sidecar (a member of quota_admin, not a superuser) is created
#          when QUOTA_SIDECAR_PASSWORD is set.
#   docker run -d --name quota-sidecar --network container:pg_quota \
#       -e QUOTA_LISTEN=0.0.0.0:8080 \
#       -e QUOTA_DATABASE_URL='host=127.0.0.1 port=5432 user=quota_sidecar password=s3cret dbname=postgres' \
#       -e QUOTA_ADMIN_TOKEN=... -e QUOTA_SERVICE_TOKEN=... \
#       pg_quota quota-sidecar
#
# Stage 1 builds with cargo-pgrx 0.18.0 against Debian bookworm's PostgreSQL 15 headers; stage 2 is
# the official postgres:15-bookworm image (same major version and paths) with the packaged files.

ARG PG_MAJOR=15

# ------------------------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS build
ARG PG_MAJOR

RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        "postgresql-server-dev-${PG_MAJOR}" libclang-dev clang pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*

# As root, `cargo pgrx init` only records the pg_config path (it skips initdb).
RUN cargo install cargo-pgrx --version 0.18.0 --locked \
 && cargo pgrx init "--pg${PG_MAJOR}" "/usr/lib/postgresql/${PG_MAJOR}/bin/pg_config"

WORKDIR /src
COPY . .

# The extension: pg_quota.so, pg_quota.control, pg_quota--<version>.sql (+ upgrade scripts) under
# /out/ext/usr/{lib,share}/postgresql/15/...
RUN cd extension \
 && cargo pgrx package --pg-config "/usr/lib/postgresql/${PG_MAJOR}/bin/pg_config" --out-dir /out/ext \
 && find /out/ext -type f | sort

# The sidecar (the AiGateway mock is a test double: tests/aigateway-mock, not shipped).
RUN cargo build --release -p quota-sidecar --bin quota-sidecar \
 && mkdir -p /out/bin \
 && cp target/release/quota-sidecar /out/bin/ \
 && ls -l /out/bin

# ------------------------------------------------------------------------------------------------
FROM postgres:15-bookworm

COPY --from=build /out/ext/usr/ /usr/
COPY --from=build /out/bin/ /usr/local/bin/

# Preload the extension in every new cluster (the image's initdb copies this sample), and create
# it in $POSTGRES_DB on first start; the worker's database (quota.database) follows $POSTGRES_DB.
RUN echo "shared_preload_libraries = 'pg_quota'" >> /usr/share/postgresql/postgresql.conf.sample \
 && printf '%s\n' \
        '-- pg_quota: create the extension in $POSTGRES_DB and point its background worker there.' \
        "SELECT format('ALTER SYSTEM SET quota.database = %L', current_database()) \\gexec" \
        'CREATE EXTENSION IF NOT EXISTS pg_quota;' \
        > /docker-entrypoint-initdb.d/10-pg_quota.sql

COPY scripts/docker-init-sidecar-role.sh /docker-entrypoint-initdb.d/20-pg_quota-sidecar-role.sh

EXPOSE 5432 8080

# Also on the command line, so an existing data directory (initialised without the sample
# above) still preloads it.
CMD ["postgres", "-c", "shared_preload_libraries=pg_quota"]
