-- Calls made under an idempotency key: the digest of the caller and key, the digest of the
-- request (never the request), and the answer sealed under the server key once there is one.
CREATE TABLE idempotency_keys (
    key_digest bytea PRIMARY KEY,
    request_digest bytea NOT NULL,
    answer bytea,
    lease_until bigint NOT NULL,
    expires_at bigint NOT NULL
);
CREATE INDEX idempotency_keys_expires_at ON idempotency_keys (expires_at);
