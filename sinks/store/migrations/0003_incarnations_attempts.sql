-- One run, many lives: a run_id may span several launches (resume, relaunch, elastic restart).
--
-- Raw events: seq restarts at 0 in every incarnation (`inc`, one per process start of a rank),
-- so `(run_id, rank, seq)` no longer names one event: without `inc` in the key, a relaunch's
-- rows would replace the first launch's. Aligned steps: a step repeated after a resume is
-- aligned again with a higher `restart` (the attempt); without `attempt` in the key the second
-- attempt would replace the first. Both lives are kept; the documented queries pick the latest.
--
-- ClickHouse lets a column join the end of the sorting key only in the ALTER that adds it, and
-- only without a DEFAULT expression: the types' own defaults ('' and 0) are what rows written
-- before this migration (and old producers, which send no `inc`) read as. The versions of the
-- ReplacingMergeTrees stay: a step re-published with more ranks still replaces its partial self
-- within its attempt. Re-running a statement is a no-op (IF NOT EXISTS, same key).
ALTER TABLE rankstream.events
    ADD COLUMN IF NOT EXISTS inc LowCardinality(String) AFTER seq,
    MODIFY ORDER BY (run_id, rank, seq, inc);
ALTER TABLE rankstream.metrics
    ADD COLUMN IF NOT EXISTS inc LowCardinality(String) AFTER seq,
    MODIFY ORDER BY (run_id, metric, kind, step, rank, seq, inc);
ALTER TABLE rankstream.steps
    ADD COLUMN IF NOT EXISTS attempt UInt32 CODEC(ZSTD(1)) AFTER step,
    MODIFY ORDER BY (run_id, step, attempt);
ALTER TABLE rankstream.step_metrics
    ADD COLUMN IF NOT EXISTS attempt UInt32 CODEC(ZSTD(1)) AFTER step,
    MODIFY ORDER BY (run_id, metric, step, attempt);
