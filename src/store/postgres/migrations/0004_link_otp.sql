-- One-time codes beside email links: the code's keyed digest (never the code), its length and
-- the wrong codes tried so far. All three are set together or not at all.
ALTER TABLE links
    ADD COLUMN otp_digest bytea,
    ADD COLUMN otp_digits smallint,
    ADD COLUMN otp_failures smallint;
