-- Alert resolution: an alert that stops holding gets a second record with the same alert_id and
-- state = 'resolved' (docs/rules.md, "Resolution"). With `state` at the end of the sorting key, the
-- firing row and its resolution are two rows: the firing message and time stay, and "what is firing
-- now" is the firing rows without a resolved row of the same alert_id (docs/sql-cookbook.md).
-- Rows written before this migration read state = '' (the type's default; ClickHouse allows a new
-- key column only without a DEFAULT expression), which the queries treat as firing.
ALTER TABLE rankstream.alerts
    ADD COLUMN IF NOT EXISTS state LowCardinality(String) AFTER evidence,
    MODIFY ORDER BY (team, rule, run_id, alert_id, state);
ALTER TABLE rankstream.alerts
    ADD COLUMN IF NOT EXISTS resolved_step Int64 CODEC(ZSTD(1)) AFTER state;
