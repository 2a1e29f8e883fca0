-- pgbench: the SQL of one VerifyToken of a login link (no PKCE, no OAuth, no enchanted attempt),
-- as latchkey's PostgreSQL store runs it (src/store/postgres/mod.rs, PgStore::redeem_link), with
-- values of the same shapes. bench/run --store postgres seeds the links and their pending users
-- first (verify_seed.sql: the rows IssueLoginLink writes) and runs this with -M prepared,
-- -D base=<phase base> -D n=0; :n counts this client's transactions, so each transaction redeems
-- a link of its own, as the bench's verify calls do (each pre-issued token once).
--
--   redeem_link (one transaction)                          statements below
--   BEGIN                                                  BEGIN
--   the link, locked: SELECT {LINK} ... FOR UPDATE         1 SELECT ... FROM links ... FOR UPDATE
--   its user, locked: SELECT {USER} ... FOR NO KEY UPDATE  2 SELECT ... FROM users ... FOR NO KEY UPDATE
--   (the domain's decision: usable, user may log in)
--   mark used: UPDATE links SET used_at                    3 UPDATE links SET used_at
--   update_user_row: every column, status pending ->       4 UPDATE users SET (all 12 columns)
--     active, email_verified, last_login_at, updated_at
--   insert_session_row                                     5 INSERT INTO sessions
--   COMMIT                                                 COMMIT
--
-- The server sends the values it read back (user id, created_at, names); here they are computed
-- from the key, which gives the same values. Sessions: `session-<uuid>` ids, a 32-byte token
-- digest, empty claims, 1,440 minutes (the default), purged 24 hours after they end.
\set n :n + 1
\set k :base + :client_id * 1000000 + :n
\set now 1764000000000 + :k
BEGIN;
SELECT token_digest, seed, kind, user_id, redirect_url, created_at, expires_at, used_at, code_challenge, reuse_key, attempt, oauth FROM links WHERE token_digest = sha256(('pgb-verify-token-' || :k::bigint)::bytea) FOR UPDATE;
SELECT id, email, first_name, last_name, status, role, mfa_enabled, email_verified, created_at, updated_at, last_login_at, sessions_revoked_at FROM users WHERE id = 'user-01900000-0000-7000-9000-' || lpad(:k::bigint::text, 12, '0') FOR NO KEY UPDATE;
UPDATE links SET used_at = :now::bigint WHERE token_digest = sha256(('pgb-verify-token-' || :k::bigint)::bytea);
UPDATE users SET email = 'pgb-verify-' || :k::bigint || '@bench.example.com', email_key = 'pgb-verify-' || :k::bigint || '@bench.example.com', first_name = 'Bench', last_name = 'User', status = 1, role = 0, mfa_enabled = false, email_verified = true, created_at = :now::bigint - 60000, updated_at = :now::bigint, last_login_at = :now::bigint, sessions_revoked_at = NULL WHERE id = 'user-01900000-0000-7000-9000-' || lpad(:k::bigint::text, 12, '0');
INSERT INTO sessions (id, user_id, token_digest, created_at, expires_at, revoked_at, link_kind, claims, purge_at) VALUES ('session-01900000-0000-7000-8000-' || lpad(:k::bigint::text, 12, '0'), 'user-01900000-0000-7000-9000-' || lpad(:k::bigint::text, 12, '0'), sha256(('pgb-session-' || :k::bigint)::bytea), :now::bigint, :now::bigint + 86400000, NULL, 0, '{}', :now::bigint + 86400000 + 86400000);
COMMIT;
