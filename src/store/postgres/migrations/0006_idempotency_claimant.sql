-- Who holds each idempotency key: 16 random bytes per claim, replaced by a takeover, so that a call
-- settles its key only while it still holds it. Rows claimed before have none: no call settles
-- them, and they wait out their lease as before.
ALTER TABLE idempotency_keys ADD COLUMN claimant bytea;
