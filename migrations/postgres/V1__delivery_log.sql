-- hookd's delivery log (history.postgres_url): deliveries, their attempts
-- and events as ingested, partitioned by day of creation so retention
-- drops whole partitions; per-subscription counters; per-minute activity.
-- Times are milliseconds since the Unix epoch (bigint), as everywhere in
-- hookd. Ids sort as bytes (COLLATE "C"), as cursors compare them.
-- Partitions (`deliveries_d<day>`, `attempts_d<day>`, `events_d<day>`,
-- <day> = at / 86400000) are created by hookd as days arrive.

CREATE TABLE deliveries (
    id text COLLATE "C" NOT NULL,
    -- created_at, clamped at 0: the partition and sort key.
    at bigint NOT NULL,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL,
    event_id text COLLATE "C" NOT NULL,
    -- `<tenant>/<event id>`, or the event id for an event of no tenant.
    event_key text COLLATE "C" NOT NULL,
    event_type text NOT NULL,
    subscription text COLLATE "C" NOT NULL,
    tenant text COLLATE "C",
    -- Whose delivery log it is in: the tenant for a subscription made
    -- through the API, NULL for the operator's.
    owner text COLLATE "C",
    state text NOT NULL,
    attempts integer NOT NULL,
    last_status integer,
    last_error text,
    next_attempt_at bigint,
    note text,
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);

CREATE INDEX deliveries_time ON deliveries (at, id);
CREATE INDEX deliveries_by_subscription ON deliveries (subscription, at, id);
CREATE INDEX deliveries_by_state ON deliveries (state, at, id);
CREATE INDEX deliveries_by_subscription_state ON deliveries (subscription, state, at, id);
CREATE INDEX deliveries_by_owner ON deliveries (owner, at, id) WHERE owner IS NOT NULL;
CREATE INDEX deliveries_by_owner_state ON deliveries (owner, state, at, id) WHERE owner IS NOT NULL;
CREATE INDEX deliveries_by_event ON deliveries (event_key);

CREATE TABLE attempts (
    delivery_id text COLLATE "C" NOT NULL,
    -- The delivery's `at`: attempts live in their delivery's partition.
    delivery_at bigint NOT NULL,
    -- Order of recording (attempts read back oldest first).
    seq bigint GENERATED ALWAYS AS IDENTITY,
    attempt integer NOT NULL,
    started_at bigint NOT NULL,
    duration_ms bigint NOT NULL,
    request_headers jsonb NOT NULL,
    status integer,
    response_headers jsonb NOT NULL,
    response_body text NOT NULL,
    error_kind text,
    error text,
    next_attempt_at bigint
) PARTITION BY RANGE (delivery_at);

CREATE INDEX attempts_of_delivery ON attempts (delivery_id, seq);

CREATE TABLE events (
    event_key text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    tenant text COLLATE "C",
    event_type text NOT NULL,
    created_at bigint NOT NULL,
    at bigint NOT NULL,
    body bytea NOT NULL
) PARTITION BY RANGE (at);

CREATE INDEX events_by_key ON events (event_key);
CREATE INDEX events_time ON events (at, event_key);

-- Retained deliveries per subscription and state (every state), so stats
-- and the count bound never scan the log.
CREATE TABLE subscription_counts (
    subscription text COLLATE "C" NOT NULL,
    state text NOT NULL,
    n bigint NOT NULL,
    PRIMARY KEY (subscription, state)
);

-- When each subscription last succeeded and failed; not lowered by trimming.
CREATE TABLE subscription_last (
    subscription text COLLATE "C" PRIMARY KEY,
    last_success_at bigint,
    last_failure_at bigint
);

-- Retained event records, for the count bound.
CREATE TABLE event_count (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    n bigint NOT NULL
);
INSERT INTO event_count (n) VALUES (0);

-- Attempts per minute and view ('' for every attempt, else a tenant's):
-- outcome counts, a latency histogram, and (all view) attempts per tenant.
CREATE TABLE activity (
    minute bigint NOT NULL,
    view text COLLATE "C" NOT NULL,
    succeeded bigint NOT NULL,
    failed bigint NOT NULL,
    latency bigint[] NOT NULL,
    tenants jsonb NOT NULL,
    PRIMARY KEY (minute, view)
);
