-- Retention (RESULTS_RETENTION_DAYS, TIMINGS_RETENTION_DAYS; storage/retention.py).
--
-- A scan's results and failures are pruned some days after it finished; the scan record and
-- its stage timings stay, so the history stays complete. results_pruned_at is stamped before
-- the first row goes, so from that moment GET /scan/results answers 410 Gone (never a
-- half-deleted page), and it tells a pruned scan apart from one that had no results.
-- results_prune_done is set once every row is gone: a prune stopped midway (a restart) is
-- finished by the next one. Both are catalogue-only changes (no rewrite of scans).

ALTER TABLE scans
    ADD COLUMN results_pruned_at timestamptz,
    ADD COLUMN results_prune_done boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT scans_prune_done_after_pruned CHECK (
        NOT results_prune_done OR results_pruned_at IS NOT NULL);

-- results pruning: the finished scans whose results are not yet all gone, oldest first. The
-- index holds only those (a retention period's worth of scans), however long history grows.
CREATE INDEX scans_results_to_prune_idx ON scans (finished_at, id)
    WHERE finished_at IS NOT NULL AND NOT results_prune_done;

-- timings pruning: every finished scan by age (whole scans go once their timings expire).
CREATE INDEX scans_finished_idx ON scans (finished_at, id) WHERE finished_at IS NOT NULL;
