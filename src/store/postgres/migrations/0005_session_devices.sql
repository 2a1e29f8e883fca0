-- A user's sessions, listed for device management: how each was made (with the email's one-time
-- code or its link), the device the caller saw, and when it last authenticated (to the minute).
-- The client columns are both NULL when the caller sent no client.
ALTER TABLE sessions
    ADD COLUMN via_otp boolean NOT NULL DEFAULT false,
    ADD COLUMN client_ip_address text,
    ADD COLUMN client_user_agent text,
    ADD COLUMN last_authenticated_at bigint;
-- ListUserSessions pages through a user's sessions in id (creation) order.
CREATE INDEX sessions_by_user_and_id ON sessions (user_id, id);
