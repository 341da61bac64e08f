-- The processes that run scans (scans.owner), each with its last heartbeat.
--
-- A server records itself here at start and every OWNER_HEARTBEAT_S after; a scan still
-- pending or running whose owner has not been seen for OWNER_TIMEOUT_S (or has no owner)
-- was left by a process that died, and any live server marks it interrupted. The scans of
-- another live server on the same database are left alone. Times are the database's
-- clock, so servers on several machines agree on them.

CREATE TABLE scan_owners (
    owner       text        PRIMARY KEY,
    started_at  timestamptz NOT NULL DEFAULT now(),
    seen_at     timestamptz NOT NULL DEFAULT now()
);

-- mark_interrupted looks up the owners of pending and running scans only.
CREATE INDEX scans_unfinished_owner_idx ON scans (owner) WHERE status IN ('pending', 'running');
