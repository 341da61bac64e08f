-- Stage-timing trends (GET /stats/stages/trend): per hour, stage, provider and universe-size
-- decade, how many runs completed, their units and seconds, and a histogram of their
-- durations in fixed log-spaced bins (engine/trend.py reads p50/p90 from it within 2.5 %).
-- A 30-day trend then adds up a few thousand rows of this table instead of sorting every run
-- of the window.
--
-- Triggers on stage_timings keep it in step with every write (a stage completing, a
-- completed stage's universe size learned later, a scan deleted), so it is always the sum of
-- the completed rows, and the backfill at the end counts the rows stored before this file.

-- copy of scans.config->>'provider', written with the row: the rollup triggers read it from
-- here, also when the scan row is already gone (ON DELETE CASCADE)
ALTER TABLE stage_timings ADD COLUMN provider text;

UPDATE stage_timings t SET provider = s.config->>'provider' FROM scans s WHERE s.id = t.scan_id;

-- The bin of a duration: bin k counts [1 ms x 1.05^k, 1 ms x 1.05^(k+1)); bin 0 also holds
-- shorter durations, bin 600 longer ones. engine/trend.py (BIN_FLOOR_S, BIN_RATIO, MAX_BIN)
-- maps bins back to seconds and must agree with this.
CREATE FUNCTION stage_duration_bin(duration_s double precision) RETURNS smallint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN duration_s < 0.001 THEN 0
                ELSE least(600, floor(ln(duration_s / 0.001) / ln(1.05)))::smallint END
$$;

CREATE TABLE stage_timing_rollup (
    stage       text        NOT NULL,
    -- the UTC hour in which the runs finished
    hour        timestamptz NOT NULL,
    -- '' when the scan's config named none
    provider    text        NOT NULL,
    -- digits of the universe size (SizeBucket: 1 is 0-9, 4 is 1000-9999); 0 when unknown
    size_digits smallint    NOT NULL,
    bin         smallint    NOT NULL,
    n           integer     NOT NULL,
    -- symbols/s of a trend interval = units / unit_s (the runs with a duration and units)
    units       bigint      NOT NULL,
    unit_s      double precision NOT NULL,
    total_s     double precision NOT NULL,
    -- the trend query reads one stage's hours of a window: one index-only range scan
    PRIMARY KEY (stage, hour, provider, size_digits, bin) INCLUDE (n, units, unit_s)
);

-- Adds the completed rows of `source` (columns of stage_timings plus `sign`, +1 or -1) to the
-- rollup. Keys are locked in key order, so two concurrent writers cannot deadlock on them.
CREATE FUNCTION stage_timing_rollup_apply() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    source text := CASE TG_OP
        WHEN 'INSERT' THEN 'SELECT n.*, 1 AS sign FROM new_rows n'
        WHEN 'DELETE' THEN 'SELECT o.*, -1 AS sign FROM old_rows o'
        ELSE 'SELECT o.*, -1 AS sign FROM old_rows o UNION ALL SELECT n.*, 1 FROM new_rows n'
    END;
BEGIN
    EXECUTE format($sql$
        INSERT INTO stage_timing_rollup AS r
            (stage, hour, provider, size_digits, bin, n, units, unit_s, total_s)
        SELECT c.stage, date_trunc('hour', c.finished_at, 'UTC'), coalesce(c.provider, ''),
               coalesce(length(c.universe_size::text), 0), stage_duration_bin(c.duration_s),
               sum(c.sign),
               coalesce(sum(c.sign * c.units_done) FILTER (WHERE c.duration_s > 0), 0),
               coalesce(sum(c.sign * c.duration_s)
                   FILTER (WHERE c.duration_s > 0 AND c.units_done IS NOT NULL), 0),
               sum(c.sign * c.duration_s)
        FROM (%s) AS c
        WHERE c.status = 'completed'
        GROUP BY 1, 2, 3, 4, 5
        HAVING sum(c.sign) <> 0 OR sum(c.sign * c.duration_s) <> 0
            OR sum(c.sign * c.units_done) <> 0
        ORDER BY 1, 2, 3, 4, 5
        ON CONFLICT (stage, hour, provider, size_digits, bin) DO UPDATE SET
            n = r.n + excluded.n, units = r.units + excluded.units,
            unit_s = r.unit_s + excluded.unit_s, total_s = r.total_s + excluded.total_s
    $sql$, source);
    RETURN NULL;
END;
$$;

CREATE TRIGGER stage_timings_rollup_insert AFTER INSERT ON stage_timings
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION stage_timing_rollup_apply();

CREATE TRIGGER stage_timings_rollup_update AFTER UPDATE ON stage_timings
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION stage_timing_rollup_apply();

CREATE TRIGGER stage_timings_rollup_delete AFTER DELETE ON stage_timings
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION stage_timing_rollup_apply();

-- the rows stored before this file
INSERT INTO stage_timing_rollup (stage, hour, provider, size_digits, bin, n, units, unit_s, total_s)
SELECT stage, date_trunc('hour', finished_at, 'UTC'), coalesce(provider, ''),
       coalesce(length(universe_size::text), 0), stage_duration_bin(duration_s), count(*),
       coalesce(sum(units_done) FILTER (WHERE duration_s > 0), 0),
       coalesce(sum(duration_s) FILTER (WHERE duration_s > 0 AND units_done IS NOT NULL), 0),
       sum(duration_s)
FROM stage_timings
WHERE status = 'completed'
GROUP BY 1, 2, 3, 4, 5;
