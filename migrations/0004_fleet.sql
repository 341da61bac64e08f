-- The fleet's queue and cancel requests (several `technic serve` sharing this database,
-- REDIS_URL set). PostgreSQL is the control plane: durable, already shared, and a Redis
-- outage must never stop scans, cancels or the queue.
--
-- A fleet scan is stored pending with no owner the moment POST /scan/start accepts it; any
-- instance with a free slot claims the oldest one (FOR UPDATE SKIP LOCKED) by setting itself
-- as owner, then runs it. A pending fleet scan whose owner died is released (owner back to
-- NULL, claimable again), never interrupted: it has not started anywhere. Scans of a single
-- server (no REDIS_URL) keep fleet = false and today's rules.

ALTER TABLE scans
    ADD COLUMN fleet boolean NOT NULL DEFAULT false,
    -- set by POST /scan/cancel on an instance that does not run the scan; the owner, told by
    -- NOTIFY (or its next poll), stops the scan
    ADD COLUMN cancel_requested_at timestamptz;

-- claim_scan: the oldest unclaimed pending fleet scan, one index range.
CREATE INDEX scans_fleet_queue_idx ON scans (created_at, id)
    WHERE fleet AND status = 'pending' AND owner IS NULL;
