-- The first schema of the PostgreSQL store. Times are Unix milliseconds (bigint); digests are the
-- 32 raw bytes; enums are small integers (see rows.rs). `purge_at` is when a row's retention ends.

CREATE TABLE users (
    id text PRIMARY KEY,
    email text NOT NULL,
    -- The canonical, lower-case address: one user per mailbox.
    email_key text NOT NULL UNIQUE,
    first_name text NOT NULL,
    last_name text NOT NULL,
    status smallint NOT NULL,
    role smallint NOT NULL,
    mfa_enabled boolean NOT NULL,
    email_verified boolean NOT NULL,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL,
    last_login_at bigint,
    sessions_revoked_at bigint
);
CREATE INDEX users_by_status ON users (status, id);

CREATE TABLE links (
    token_digest bytea PRIMARY KEY,
    seed bytea NOT NULL,
    kind smallint NOT NULL,
    user_id text NOT NULL,
    redirect_url text NOT NULL,
    created_at bigint NOT NULL,
    expires_at bigint NOT NULL,
    used_at bigint,
    code_challenge text,
    reuse_key bytea,
    attempt bytea,
    oauth jsonb,
    purge_at bigint NOT NULL
);
CREATE INDEX links_by_user ON links (user_id, reuse_key);
CREATE INDEX links_by_purge ON links (purge_at);

CREATE TABLE sessions (
    id text PRIMARY KEY,
    user_id text NOT NULL,
    token_digest bytea NOT NULL UNIQUE,
    created_at bigint NOT NULL,
    expires_at bigint NOT NULL,
    revoked_at bigint,
    link_kind smallint NOT NULL,
    claims jsonb NOT NULL,
    purge_at bigint NOT NULL
);
CREATE INDEX sessions_by_user ON sessions (user_id);
CREATE INDEX sessions_by_purge ON sessions (purge_at);

CREATE TABLE attempts (
    ref_digest bytea PRIMARY KEY,
    user_id text NOT NULL,
    status smallint NOT NULL,
    right_link bytea NOT NULL,
    created_at bigint NOT NULL,
    expires_at bigint NOT NULL,
    verified_at bigint,
    claims jsonb NOT NULL,
    session_id text,
    purge_at bigint NOT NULL
);
CREATE INDEX attempts_by_purge ON attempts (purge_at);

CREATE TABLE codes (
    code_digest bytea PRIMARY KEY,
    user_id text NOT NULL,
    request jsonb NOT NULL,
    created_at bigint NOT NULL,
    expires_at bigint NOT NULL,
    auth_time bigint NOT NULL,
    used_at bigint,
    session_id text,
    purge_at bigint NOT NULL
);
CREATE INDEX codes_by_purge ON codes (purge_at);

CREATE TABLE emails (
    id text PRIMARY KEY,
    recipient text NOT NULL,
    user_id text NOT NULL,
    first_name text NOT NULL,
    last_name text NOT NULL,
    kind smallint NOT NULL,
    template_id text,
    links jsonb NOT NULL,
    link_expires_at bigint NOT NULL,
    status smallint NOT NULL,
    attempts integer NOT NULL,
    last_error text,
    created_at bigint NOT NULL,
    next_attempt_at bigint NOT NULL,
    sent_at bigint,
    purge_at bigint NOT NULL
);
-- The outbox: QUEUED (0) emails by when they fall due, SENDING (1) ones by when their lease ends.
CREATE INDEX emails_outbox ON emails (next_attempt_at) WHERE status IN (0, 1);
CREATE INDEX emails_by_purge ON emails (purge_at);

CREATE TABLE rate_buckets (
    key text PRIMARY KEY,
    tokens double precision NOT NULL,
    updated_at bigint NOT NULL,
    -- Full again then: from then on the same as no bucket, and purged.
    full_at bigint NOT NULL
);
CREATE INDEX rate_buckets_by_full ON rate_buckets (full_at);

-- The JWT signing key set: one row, replaced whole by compare-and-swap.
CREATE TABLE signing_keys (
    id smallint PRIMARY KEY CHECK (id = 1),
    keys jsonb NOT NULL
);
INSERT INTO signing_keys VALUES (1, '[]');
