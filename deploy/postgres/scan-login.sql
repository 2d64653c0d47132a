-- PostgreSQL for wechat-callback on several hosts: a least-privilege login
-- role `scan_login`, a database `scan_login` that the role does not own, and
-- a schema `scan_login` that it does. wechat-callback creates and migrates
-- its own tables (users, events, signatures, pending, scan_login_schema) in
-- the first schema of its search_path, under an advisory lock, at every
-- start; this script only makes the place for them.
--
-- Run it once on the database server as a superuser (the `postgres` OS
-- user), with the role's password in the psql variable `password`. Pass the
-- password on stdin, not as `-v password=...` (other users see command
-- lines in ps):
--
--   pw=$(openssl rand -hex 24)   # hex: goes into a URL without escaping
--   { printf '\\set password %s\n' "$pw"; cat deploy/postgres/scan-login.sql; } |
--       sudo -u postgres psql -X -v ON_ERROR_STOP=1 -f -
--   echo "SCAN_LOGIN_DB=postgres://scan_login:$pw@db.example.com/scan_login?sslmode=require"
--
-- Running it again is safe: it creates what is missing, resets the role's
-- attributes and settings, and sets the password anew (that is how to
-- rotate it). It never drops anything. Needs PostgreSQL 13 or newer.
--
-- On a managed service (no superuser), run it as the service's admin user:
-- that user needs CREATEROLE and CREATEDB, and is made a member of
-- scan_login (below) so that it may hand the schema to it.

\set ON_ERROR_STOP on

\if :{?password}
\else
    \echo 'scan-login.sql: set the psql variable password (see the comment at the top)'
    SELECT 1 / 0 AS no_password;
\endif

SELECT rolsuper AS is_superuser FROM pg_roles WHERE rolname = current_user \gset

-- The password travels in the ALTER ROLE statement below. Keep that
-- statement out of the server log (log_statement = ddl or all would write
-- it there in clear), and store only a SCRAM verifier, never an MD5 hash.
-- log_* settings need a superuser; an admin user on a managed service
-- should check that its log_statement is not ddl or all.
\if :is_superuser
SET log_statement = 'none';
SET log_min_duration_statement = -1;
SET log_min_error_statement = panic;
\endif
SET password_encryption = 'scram-sha-256';

-- The role the callbacks log in as.
--   LOGIN                 it connects; nothing more:
--   NOSUPERUSER           no bypassing of any permission check;
--   NOCREATEDB            it cannot create databases;
--   NOCREATEROLE          it cannot create, alter or grant roles (it may
--                         change its own password, like any role; an
--                         admin rotates it with this script instead);
--   NOREPLICATION         it cannot stream the WAL (a copy of everything);
--   NOBYPASSRLS           row-level security applies to it;
--   NOINHERIT             it does not silently use the rights of roles it
--                         is a member of (it is a member of none).
--   CONNECTION LIMIT 80   each wechat-callback instance keeps a pool of at
--                         most 16 connections. deploy/two-hosts runs 4
--                         instances (2 per host): 64, plus 16 spare for a
--                         restarting instance, a psql session, and the
--                         connections of a host that died until the TCP
--                         keepalives below drop them. Size it as
--                         instances x 16 + 16 (3 instances: 64), and keep
--                         the sum of all roles' limits under the server's
--                         max_connections (default 100).
SELECT 'CREATE ROLE scan_login NOSUPERUSER NOREPLICATION NOBYPASSRLS'
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'scan_login') \gexec
-- Only a superuser may even name these three in ALTER ROLE; CREATE ROLE
-- above set them for a new role.
\if :is_superuser
ALTER ROLE scan_login WITH NOSUPERUSER NOREPLICATION NOBYPASSRLS;
\endif
ALTER ROLE scan_login WITH LOGIN NOCREATEDB NOCREATEROLE NOINHERIT
    CONNECTION LIMIT 80 PASSWORD :'password';

-- PostgreSQL 16 and newer: an admin with CREATEROLE but without superuser
-- must be a member of a role to make it a schema's owner.
\if :is_superuser
\else
GRANT scan_login TO CURRENT_USER;
\endif

-- The database, owned by the admin running this script, not by scan_login:
-- the role cannot drop it, rename it, change its settings or grant access
-- to it. UTF8 for WeChat nicknames (emoji); C collation, because nothing
-- is sorted for people and a C-library update cannot corrupt its indexes.
SELECT 'CREATE DATABASE scan_login TEMPLATE template0 ENCODING ''UTF8'' LC_COLLATE ''C'' LC_CTYPE ''C'''
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'scan_login') \gexec

-- Every role may connect to a new database and create temporary tables in
-- it (the PUBLIC defaults CONNECT and TEMPORARY). Take both away from
-- everybody ...
REVOKE ALL ON DATABASE scan_login FROM PUBLIC;
-- ... and give back only what the callbacks need: CONNECT. Not CREATE (no
-- new schemas), not TEMPORARY (no temporary tables).
GRANT CONNECT ON DATABASE scan_login TO scan_login;

-- The role's settings in this database, applied at every login:
--   search_path = scan_login: the callbacks create and find their tables
--     in their own schema, never in public;
--   idle_in_transaction_session_timeout: a session that stays inside an
--     open transaction (a hung instance) is ended and its row locks
--     released, so the other instances are not blocked by it;
--   tcp_keepalives_*: the server notices within about a minute that a
--     host died (no FIN, no RST), ends its sessions (rolling back what
--     they had open) and frees their CONNECTION LIMIT slots. The default
--     is the kernel's, about two hours.
ALTER ROLE scan_login IN DATABASE scan_login SET search_path = scan_login;
ALTER ROLE scan_login IN DATABASE scan_login SET idle_in_transaction_session_timeout = '30s';
ALTER ROLE scan_login IN DATABASE scan_login SET tcp_keepalives_idle = 30;
ALTER ROLE scan_login IN DATABASE scan_login SET tcp_keepalives_interval = 10;
ALTER ROLE scan_login IN DATABASE scan_login SET tcp_keepalives_count = 3;

\connect scan_login

-- The callbacks' own schema, owned by scan_login: it may create, alter and
-- drop tables and indexes in it (its migrations) and read and write them.
-- That is all of its write access: it owns no other object anywhere.
CREATE SCHEMA IF NOT EXISTS scan_login AUTHORIZATION scan_login;
-- The schema existed already (a second run): make sure of its owner.
ALTER SCHEMA scan_login OWNER TO scan_login;

-- The public schema: before PostgreSQL 15 every role may create objects in
-- it, and every role may use it. scan_login needs neither; nobody else
-- connects to this database.
REVOKE ALL ON SCHEMA public FROM PUBLIC;

-- What the role ends up with, for the record.
SELECT r.rolname, r.rolsuper, r.rolcreatedb, r.rolcreaterole, r.rolconnlimit,
       has_database_privilege('scan_login', 'scan_login', 'CONNECT') AS can_connect,
       has_database_privilege('scan_login', 'scan_login', 'CREATE') AS can_create_schema,
       has_database_privilege('scan_login', 'scan_login', 'TEMPORARY') AS can_create_temp,
       has_schema_privilege('scan_login', 'scan_login', 'CREATE') AS can_create_tables
  FROM pg_roles r
 WHERE r.rolname = 'scan_login';
