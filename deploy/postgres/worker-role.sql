-- The worker's own PostgreSQL role: rows in, rows out, nothing else.
--
-- Run by the one-shot `db-roles` service (docker-compose.yml) right after
-- `dropzone migrate`, as the schema owner, in the ledger's database:
--
--   WORKER_DB_PASSWORD=… psql -v ON_ERROR_STOP=1 -f worker-role.sql
--
-- The password comes from the environment (\getenv), never from the command
-- line. Idempotent: a rerun (every `docker compose up`) resets the password and
-- the privileges. The role gets SELECT, INSERT and UPDATE on the ledger's tables
-- (now and, through default privileges, tables later migrations add), SELECT on
-- dropzone_alembic_version, and no DDL, no DELETE, no TRUNCATE, no superuser, no role or
-- database creation. tests/test_compose.py runs this script against a real
-- PostgreSQL and checks what the role can and cannot do.

\set ON_ERROR_STOP on
\set worker_password ''
\getenv worker_password WORKER_DB_PASSWORD
SELECT length(:'worker_password') < 16 AS weak_password \gset
\if :weak_password
  DO $$ BEGIN RAISE EXCEPTION 'WORKER_DB_PASSWORD is not set or shorter than 16 characters'; END $$;
\endif
\if :{?worker_role}
\else
  \set worker_role dropzone_worker
\endif

SELECT format('CREATE ROLE %I', :'worker_role')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'worker_role')
\gexec

SELECT format(
  'ALTER ROLE %I WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD %L',
  :'worker_role', :'worker_password'
)
\gexec

-- Tables in public are created by the owner only (the default since PostgreSQL 15; said again here).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
SELECT format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), :'worker_role')
\gexec
SELECT format('GRANT USAGE ON SCHEMA public TO %I', :'worker_role')
\gexec
SELECT format('GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO %I', :'worker_role')
\gexec
SELECT format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO %I', :'worker_role')
\gexec
-- The migration history is the owner's to write.
SELECT format('REVOKE INSERT, UPDATE ON dropzone_alembic_version FROM %I', :'worker_role')
WHERE to_regclass('public.dropzone_alembic_version') IS NOT NULL
\gexec
SELECT format('ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE ON TABLES TO %I',
              :'worker_role')
\gexec
SELECT format('ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO %I', :'worker_role')
\gexec
