-- Turn off the non-replicated insert deduplication log that 0001 enabled.
--
-- ClickHouse records an insert's block id in that log before the part holding its
-- rows is committed (MergeTreeDeduplicationLog::addPart runs before the part is
-- renamed into place). If the rows never become visible (a crash between the two
-- steps, a failed commit, or rows deleted later) the id outlives them, and a retry
-- of the same batch with the same insert_deduplication_token is dropped as a
-- duplicate: a silent loss. Idempotence does not need it: every table is a
-- ReplacingMergeTree on natural keys and the documented queries read with FINAL.
-- Replicated tables (a cluster's own DDL) keep their Keeper-based deduplication,
-- which commits the block id together with the part.
ALTER TABLE rankstream.metrics MODIFY SETTING non_replicated_deduplication_window = 0;
ALTER TABLE rankstream.events MODIFY SETTING non_replicated_deduplication_window = 0;
ALTER TABLE rankstream.steps MODIFY SETTING non_replicated_deduplication_window = 0;
ALTER TABLE rankstream.step_metrics MODIFY SETTING non_replicated_deduplication_window = 0;
ALTER TABLE rankstream.alerts MODIFY SETTING non_replicated_deduplication_window = 0;
ALTER TABLE rankstream.runs MODIFY SETTING non_replicated_deduplication_window = 0;
