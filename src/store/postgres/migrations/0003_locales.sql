-- The language of a user's emails (a canonical BCP 47 tag; NULL: none chosen), and the language
-- each queued email is rendered in (empty for an email queued before languages: the default).
ALTER TABLE users ADD COLUMN locale text;
ALTER TABLE emails ADD COLUMN locale text NOT NULL DEFAULT '';
