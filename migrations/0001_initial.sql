-- Scans, their stage timings, their results and the symbols they could not score.
--
-- Status vocabularies are CHECK constraints that mirror storage/models.py, so a bug in Python
-- cannot store a status the state machine does not know. Timestamps are timestamptz (UTC on
-- the wire); durations are double precision seconds, named *_s.

CREATE TABLE scans (
    id              uuid        PRIMARY KEY,
    status          text        NOT NULL DEFAULT 'pending'
        CONSTRAINT scans_status_known CHECK (
            status IN ('pending', 'running', 'completed', 'failed', 'cancelled', 'interrupted')),
    config          jsonb       NOT NULL DEFAULT '{}'::jsonb
        CONSTRAINT scans_config_is_object CHECK (jsonb_typeof(config) = 'object'),
    -- who runs the scan (e.g. host name), so a restarted server interrupts only its own scans
    owner           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- bumped by every write about the scan: a scan whose updated_at stops moving is orphaned
    updated_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    universe_size   integer     CHECK (universe_size >= 0),
    symbols_scanned integer     CHECK (symbols_scanned >= 0),
    symbols_failed  integer     CHECK (symbols_failed >= 0),
    result_count    integer     NOT NULL DEFAULT 0 CHECK (result_count >= 0),
    -- key order of this scan's result rows; scan_results.data holds their values in it
    result_keys     text[],
    error           text,
    metrics         jsonb,
    CONSTRAINT scans_finished_iff_terminal CHECK (
        (status IN ('pending', 'running')) = (finished_at IS NULL)),
    CONSTRAINT scans_started_before_finished CHECK (
        started_at IS NULL OR finished_at IS NULL OR finished_at >= started_at)
);

-- list_scans: newest first, keyset on (created_at, id), with or without a status filter.
CREATE INDEX scans_created_idx ON scans (created_at DESC, id DESC);
CREATE INDEX scans_status_created_idx ON scans (status, created_at DESC, id DESC);
-- eta_priors: the most recently finished completed scans, filtered by size.
CREATE INDEX scans_completed_finished_idx ON scans (finished_at DESC)
    INCLUDE (universe_size) WHERE status = 'completed';

CREATE TABLE stage_timings (
    scan_id       uuid        NOT NULL REFERENCES scans (id) ON DELETE CASCADE,
    stage         text        NOT NULL
        CONSTRAINT stage_timings_stage_known CHECK (
            stage IN ('universe_loading', 'data_fetching', 'symbol_scanning', 'finalization')),
    status        text        NOT NULL DEFAULT 'pending'
        CONSTRAINT stage_timings_status_known CHECK (
            status IN ('pending', 'running', 'completed', 'failed', 'skipped')),
    started_at    timestamptz,
    finished_at   timestamptz,
    duration_s    double precision CHECK (duration_s >= 0),
    units_done    integer     CHECK (units_done >= 0),
    units_total   integer     CHECK (units_total >= 0),
    throughput    double precision CHECK (throughput >= 0),  -- units per second
    -- copy of scans.universe_size, kept in step by the repository, so the history queries
    -- read one index and never join a million timings to their scans
    universe_size integer     CHECK (universe_size >= 0),
    PRIMARY KEY (scan_id, stage),
    CONSTRAINT stage_timings_completed_has_duration CHECK (
        status <> 'completed' OR (finished_at IS NOT NULL AND duration_s IS NOT NULL))
);

-- stage_stats: per stage, the completed runs finished inside a time window. Every column the
-- query reads is in the index, so each stage is one index-only range scan, already grouped by
-- stage (no sort of the window by stage name before aggregating).
CREATE INDEX stage_timings_completed_window_idx ON stage_timings (stage, finished_at)
    INCLUDE (duration_s, units_done, universe_size) WHERE status = 'completed';

-- One row per ranked symbol. Deliberately no foreign key to scans: its per-row check costs
-- about a third of the 10,000-row save budget. The repository writes results only while
-- holding the scan's row lock (so the scan exists and cannot vanish before commit), and the
-- trigger below deletes a scan's results with the scan, as ON DELETE CASCADE would.
CREATE TABLE scan_results (
    scan_id           uuid    NOT NULL,
    rank              integer NOT NULL CHECK (rank >= 1),
    symbol            text    NOT NULL,
    sector            text,
    signal            text,
    -- the UI sorts signals from Strong Buy to Strong Sell, not alphabetically
    signal_order      smallint GENERATED ALWAYS AS (
        CASE signal
            WHEN 'Strong Buy' THEN 1 WHEN 'Buy' THEN 2 WHEN 'Neutral' THEN 3
            WHEN 'Sell' THEN 4 WHEN 'Strong Sell' THEN 5
        END) STORED,
    tech_rating       double precision,
    close             double precision,
    rsi14             double precision,
    ret_21d           double precision,
    rel_volume        double precision,
    dollar_volume_20d double precision,
    reward_risk       double precision,
    -- The whole row exactly as the engine produced it: a JSON array of its values in the
    -- order of scans.result_keys (every row of a scan has the same keys), or a JSON object
    -- for a row whose keys differ. The view scan_result_rows below shows every row as an
    -- object. Why not a jsonb object: nothing queries inside it (the typed columns above
    -- serve sorting and filtering), and for 10,000 rows of ~40 fields jsonb costs ~400 ms of
    -- server time, a json object ~140 ms and a json array ~95 ms, measured against the 200 ms
    -- save budget. json keeps the text as sent, so every float reads back bit for bit.
    data              json    NOT NULL,
    PRIMARY KEY (scan_id, rank)
);
-- The primary key is the only index: other sort keys are sorted in memory (one scan holds at
-- most a universe's worth of rows), and each extra index would slow the bulk save. Symbols
-- are unique per scan; the repository checks that before it writes.

-- Result rows as JSON objects, for people querying with SQL.
CREATE VIEW scan_result_rows AS
SELECT r.scan_id, r.rank,
       CASE WHEN json_typeof(r.data) = 'array' THEN (
           SELECT json_object_agg(k.key, r.data -> (k.n::integer - 1) ORDER BY k.n)
           FROM unnest(s.result_keys) WITH ORDINALITY AS k (key, n))
       ELSE r.data END AS row
FROM scan_results r JOIN scans s ON s.id = r.scan_id;

CREATE FUNCTION scans_delete_results() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM scan_results r USING deleted_scans d WHERE r.scan_id = d.id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER scans_delete_results AFTER DELETE ON scans
    REFERENCING OLD TABLE AS deleted_scans
    FOR EACH STATEMENT EXECUTE FUNCTION scans_delete_results();

CREATE TABLE scan_failures (
    scan_id uuid    NOT NULL REFERENCES scans (id) ON DELETE CASCADE,
    seq     integer NOT NULL CHECK (seq >= 1),
    symbol  text    NOT NULL,
    reason  text    NOT NULL,
    PRIMARY KEY (scan_id, seq)
);
