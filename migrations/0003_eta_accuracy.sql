-- How good each completed scan's time estimates were, and the history its kind's priors learn
-- from (engine/eta.py).
--
-- Written once per completed scan by Repository.record_accuracy; scans finished before this
-- migration (or that failed, were cancelled or interrupted) simply have none of it. Nothing
-- here is needed to run a scan, so every new scans column is nullable and without a default
-- (adding them is a catalogue change, not a rewrite of the table).

-- Seconds a stage ran after its last unit was counted (writing the fetched block to disk,
-- building it from a bar store): its own part of the stage's prior, because no rate of units
-- predicts it (engine/eta.py).
ALTER TABLE stage_timings
    ADD COLUMN tail_s double precision
        CONSTRAINT stage_timings_tail_s_within CHECK (tail_s >= 0 AND tail_s <= duration_s);

ALTER TABLE scans
    -- scan_kind(): the provider, then '@' and the rate limit for a network provider
    -- (polygon@300/min). Set only on completed scans; the part before any '@' is always the
    -- scan's provider (the repository checks it), which the window queries read from here
    -- rather than from config, so that they stay index-only.
    ADD COLUMN eta_kind text
        CONSTRAINT scans_eta_kind_named CHECK (eta_kind <> ''),
    -- share of the fetch stage's symbols served from the local cache
    ADD COLUMN cache_hit_ratio double precision
        CONSTRAINT scans_cache_hit_ratio_share CHECK (cache_hit_ratio BETWEEN 0 AND 1),
    -- R-squared of a progress bar against the straight line from 0 to 100 over the scan's
    -- time: 1 is perfectly steady, and it is negative for a bar worse than a flat line
    ADD COLUMN time_linearity double precision
        CONSTRAINT scans_time_linearity_r2 CHECK (time_linearity <= 1),
    ADD COLUMN overall_linearity double precision
        CONSTRAINT scans_overall_linearity_r2 CHECK (overall_linearity <= 1),
    -- the longest stretch during which that bar did not visibly move
    ADD COLUMN time_stall_s double precision
        CONSTRAINT scans_time_stall_s_nonnegative CHECK (time_stall_s >= 0),
    ADD COLUMN overall_stall_s double precision
        CONSTRAINT scans_overall_stall_s_nonnegative CHECK (overall_stall_s >= 0);

-- eta_history: the last N completed scans of one kind, newest finished first; each then reads
-- its four stage_timings rows by primary key.
CREATE INDEX scans_eta_kind_finished_idx ON scans (eta_kind, finished_at DESC, id DESC)
    WHERE status = 'completed' AND eta_kind IS NOT NULL;

-- accuracy_stats: the scans with an accuracy record finished inside a window. Everything the
-- per-scan figures (linearity, stalls, the provider from eta_kind) and the newest-first list
-- read is in the index, so both are index-only range scans of the window.
CREATE INDEX scans_accuracy_window_idx ON scans (finished_at, id)
    INCLUDE (eta_kind, universe_size, time_linearity, overall_linearity, time_stall_s)
    WHERE eta_kind IS NOT NULL;

-- The overall ETA at each checkpoint of a completed scan (engine/eta.py EtaCheckpoint).
CREATE TABLE eta_checkpoints (
    scan_id               uuid             NOT NULL REFERENCES scans (id) ON DELETE CASCADE,
    -- percent of the scan's expected time at which the ETA was taken (eta.CHECKPOINTS)
    checkpoint            smallint         NOT NULL
        CONSTRAINT eta_checkpoints_known CHECK (checkpoint IN (10, 25, 50, 75, 90)),
    elapsed_s             double precision NOT NULL CHECK (elapsed_s >= 0),
    predicted_remaining_s double precision NOT NULL CHECK (predicted_remaining_s >= 0),
    actual_remaining_s    double precision NOT NULL CHECK (actual_remaining_s >= 0),
    -- signed, positive when the ETA said more time than it took; null when no time remained
    -- (nothing to be wrong about)
    error_pct             double precision,
    -- copies of the scan's finished_at, provider (config->>'provider') and universe_size,
    -- written with the row: a scan's are fixed once it completed, and with them the
    -- statistics over a window read one index and never join scans
    finished_at           timestamptz      NOT NULL,
    provider              text             NOT NULL,
    universe_size         integer          CHECK (universe_size >= 0),
    PRIMARY KEY (scan_id, checkpoint),
    CONSTRAINT eta_checkpoints_error_iff_time_remained CHECK (
        (error_pct IS NULL) = (actual_remaining_s = 0))
);

-- accuracy_stats: per checkpoint, the rows finished inside a window, already grouped by
-- checkpoint (one index-only range scan each, as stage_timings_completed_window_idx does for
-- stages).
CREATE INDEX eta_checkpoints_window_idx ON eta_checkpoints (checkpoint, finished_at)
    INCLUDE (provider, universe_size, error_pct);
