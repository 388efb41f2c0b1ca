-- The background worker and its settings.
\set VERBOSITY terse
SHOW quota.database;
SHOW quota.worker_naptime_ms;
SELECT state IN ('starting', 'waiting_for_extension', 'running') AS worker_alive, database
  FROM quota.worker_status();
SELECT extname, extversion FROM pg_extension WHERE extname = 'pg_quota';
