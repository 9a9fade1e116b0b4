-- The conversation store: one row per answered exchange (app/storage/postgres_conversations.py).
-- messages and answer are `json`, not text or jsonb: PostgreSQL's text and jsonb cannot hold U+0000, which a
-- client may send and a model may echo back; `json` keeps the exact text (escapes and key order included).
-- The answer is a JSON string: `answer #>> '{}'` reads it as text.
CREATE TABLE exchanges (
    request_id text PRIMARY KEY,
    key_id     text NOT NULL,
    route      text NOT NULL,
    messages   json NOT NULL,
    answer     json NOT NULL,
    usage      jsonb NOT NULL,
    latency_s  double precision NOT NULL,
    created_at timestamptz NOT NULL
);

-- Listing and export walk (created_at, request_id); the retention purge walks created_at.
CREATE INDEX exchanges_created ON exchanges (created_at, request_id);
CREATE INDEX exchanges_key_created ON exchanges (key_id, created_at, request_id);
