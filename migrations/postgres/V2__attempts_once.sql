-- Each attempt is recorded once. A batch the delivery log retries after a
-- commit whose answer was lost (the connection dropped after PostgreSQL
-- kept it) writes its attempts again: they are known by their delivery,
-- number and start (a replay's attempts start over at 1, later), and the
-- second write of one is skipped. Duplicates an older hookd wrote go first,
-- the first recorded kept.

DELETE FROM attempts a
    USING attempts b
    WHERE a.delivery_id = b.delivery_id
      AND a.delivery_at = b.delivery_at
      AND a.attempt = b.attempt
      AND a.started_at = b.started_at
      AND a.seq > b.seq;

CREATE UNIQUE INDEX attempts_once ON attempts (delivery_id, delivery_at, attempt, started_at);
