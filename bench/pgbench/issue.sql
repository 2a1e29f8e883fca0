-- pgbench: the SQL of one IssueLoginLink for a new email, as latchkey's PostgreSQL store runs it
-- (src/store/postgres/mod.rs), with values of the same shapes. bench/run --store postgres runs it
-- with -M prepared, -D base=<phase base> -D n=0; :n counts this client's transactions, so every
-- key k is new (the bench's own issue calls use a new email each call too).
--
--   domain (links.rs)                    store method                      statements below
--   resolve_link_user: email unknown     Store::user_by_email (autocommit)  1 SELECT ... WHERE email_key
--   insert_link with the new user        Store::insert_link (transaction)   BEGIN; insert_user (INSERT
--                                                                           ... ON CONFLICT (email_key)
--                                                                           DO NOTHING); insert_link_row
--                                                                           (INSERT INTO links, with the
--                                                                           reuse key); COMMIT
--
-- Values: user ids shaped like `user-<uuid>`, 32-byte digests (sha256 of the key, so that index
-- inserts land at random places as the server's random tokens do), times in Unix milliseconds
-- that grow like the clock, 2-hour links (the default), 24-hour retention (the default) (rows' purge_at).
\set n :n + 1
\set k :base + :client_id * 1000000 + :n
\set now 1764000000000 + :k
SELECT id, email, first_name, last_name, status, role, mfa_enabled, email_verified, created_at, updated_at, last_login_at, sessions_revoked_at FROM users WHERE email_key = 'pgb-issue-' || :k::bigint || '@bench.example.com';
BEGIN;
INSERT INTO users (id, email, email_key, first_name, last_name, status, role, mfa_enabled, email_verified, created_at, updated_at, last_login_at, sessions_revoked_at) VALUES ('user-01900000-0000-7000-8000-' || lpad(:k::bigint::text, 12, '0'), 'pgb-issue-' || :k::bigint || '@bench.example.com', 'pgb-issue-' || :k::bigint || '@bench.example.com', 'Bench', 'User', 0, 0, false, false, :now::bigint, :now::bigint, NULL, NULL) ON CONFLICT (email_key) DO NOTHING;
INSERT INTO links (token_digest, seed, kind, user_id, redirect_url, created_at, expires_at, used_at, code_challenge, reuse_key, attempt, oauth, purge_at) VALUES (sha256(('pgb-token-' || :k::bigint)::bytea), sha256(('pgb-seed-' || :k::bigint)::bytea), 0, 'user-01900000-0000-7000-8000-' || lpad(:k::bigint::text, 12, '0'), 'https://app.example.com/auth/callback', :now::bigint, :now::bigint + 7200000, NULL, NULL, sha256(('pgb-reuse-' || :k::bigint)::bytea), NULL, NULL, :now::bigint + 7200000 + 86400000);
COMMIT;
