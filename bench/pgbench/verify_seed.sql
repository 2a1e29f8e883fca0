-- The rows verify.sql redeems, written before it runs: for each client 0 .. :clients - 1 and each
-- n in 1 .. :per_client, key k = :base + client * 1000000 + n, a pending user and its unused
-- login link: the rows one IssueLoginLink for a new email writes (the columns, sizes and index
-- keys of issue.sql). latchkey-bench runs it with psql -v base=... -v clients=... -v per_client=...
-- once for the warm-up's keys and once for the measured run's, then ANALYZE, then CHECKPOINT.
CREATE TEMP TABLE pgb_keys AS
    SELECT :base::bigint + c * 1000000 + n AS k
    FROM generate_series(0, :clients - 1) c, generate_series(1, :per_client) n;
INSERT INTO users (id, email, email_key, first_name, last_name, status, role, mfa_enabled, email_verified, created_at, updated_at, last_login_at, sessions_revoked_at)
    SELECT 'user-01900000-0000-7000-9000-' || lpad(k::text, 12, '0'), 'pgb-verify-' || k || '@bench.example.com', 'pgb-verify-' || k || '@bench.example.com', 'Bench', 'User', 0, 0, false, false, 1764000000000 + k - 60000, 1764000000000 + k - 60000, NULL, NULL
    FROM pgb_keys ORDER BY k;
INSERT INTO links (token_digest, seed, kind, user_id, redirect_url, created_at, expires_at, used_at, code_challenge, reuse_key, attempt, oauth, purge_at)
    SELECT sha256(('pgb-verify-token-' || k)::bytea), sha256(('pgb-verify-seed-' || k)::bytea), 0, 'user-01900000-0000-7000-9000-' || lpad(k::text, 12, '0'), 'https://app.example.com/auth/callback', 1764000000000 + k - 60000, 1764000000000 + k - 60000 + 7200000, NULL, NULL, sha256(('pgb-verify-reuse-' || k)::bytea), NULL, NULL, 1764000000000 + k - 60000 + 7200000 + 86400000
    FROM pgb_keys ORDER BY k;
ANALYZE users, links;
