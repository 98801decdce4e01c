-- The key that signs VAST view tokens when VAST_SIGNING_KEY is not set.
-- The first process to start makes it (INSERT ... ON CONFLICT DO NOTHING),
-- every later one reads it, so all processes of a database sign and verify
-- alike and a restart keeps the views already served. One row at most.
CREATE TABLE vast_signing_key (
    id         boolean PRIMARY KEY DEFAULT true CHECK (id),
    key        bytea NOT NULL CHECK (length(key) >= 32),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- A catalogue ad's targetUrl is where /c/{view} redirects viewers: an
-- http(s) URL without control characters (CR/LF would split the Location
-- header). Checked on every write from now on; NOT VALID leaves rows
-- already there unchecked instead of failing the migration on them (the
-- click redirect refuses such a row itself).
ALTER TABLE ads ADD CONSTRAINT ads_target_url_check
    CHECK (target_url ~* '^https?://[^[:cntrl:]]+$') NOT VALID;
