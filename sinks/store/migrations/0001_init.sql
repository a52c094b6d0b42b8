-- rankstream schema v1 (ClickHouse >= 25.8; runs unchanged on chDB).
-- Design notes and the comparison with the OpenTelemetry exporter and SigNoz: docs/schema.md.
-- Every table carries `team` (row policies in infra/clickhouse/rbac.sql filter on it).
-- Idempotence: the sink inserts with insert_deduplication_token (needs
-- non_replicated_deduplication_window on plain MergeTree storage) and every table is a
-- ReplacingMergeTree keyed by the record's natural key, so replays and upstream
-- duplicates collapse; documented queries that must be exact use FINAL.

CREATE DATABASE IF NOT EXISTS rankstream;

-- One row per (event, metric): the raw per-rank values. The key serves the loss curve
-- of one run (run_id, metric, kind, step) and the per-rank spread at a step; seq ends
-- the key so a producer's duplicate (same run, rank, seq) replaces itself.
CREATE TABLE IF NOT EXISTS rankstream.metrics
(
    team LowCardinality(String),
    run_id String CODEC(ZSTD(1)),
    metric LowCardinality(String),
    kind LowCardinality(String),
    step Int64 CODEC(Delta(8), ZSTD(1)),
    rank UInt32 CODEC(ZSTD(1)),
    seq UInt64 CODEC(Delta(8), ZSTD(1)),
    ts DateTime64(6, 'UTC') CODEC(Delta(8), ZSTD(1)),
    value Float64 CODEC(Gorilla, ZSTD(1)),
    host LowCardinality(String),
    world_size UInt32 CODEC(ZSTD(1)),
    INDEX idx_team team TYPE set(256) GRANULARITY 4
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (run_id, metric, kind, step, rank, seq)
SETTINGS non_replicated_deduplication_window = 10000;

-- One row per raw event (also heartbeats and run_start/run_end without metrics):
-- completeness checks (every seq per rank), heartbeat history, lateness per rank.
CREATE TABLE IF NOT EXISTS rankstream.events
(
    team LowCardinality(String),
    run_id String CODEC(ZSTD(1)),
    rank UInt32 CODEC(ZSTD(1)),
    seq UInt64 CODEC(Delta(8), ZSTD(1)),
    kind LowCardinality(String),
    step Int64 CODEC(Delta(8), ZSTD(1)),
    ts DateTime64(6, 'UTC') CODEC(Delta(8), ZSTD(1)),
    host LowCardinality(String),
    local_rank UInt32 CODEC(ZSTD(1)),
    world_size UInt32 CODEC(ZSTD(1)),
    n_metrics UInt16 CODEC(ZSTD(1)),
    tags Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    INDEX idx_team team TYPE set(256) GRANULARITY 4
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (run_id, rank, seq)
SETTINGS non_replicated_deduplication_window = 10000;

-- One row per aligned step (from the stream jobs). A step re-emitted with more ranks
-- wins (version = ranks_reported). Fields the stream jobs add later land in `extra` (JSON).
CREATE TABLE IF NOT EXISTS rankstream.steps
(
    team LowCardinality(String),
    run_id String CODEC(ZSTD(1)),
    step Int64 CODEC(Delta(8), ZSTD(1)),
    world_size UInt32 CODEC(ZSTD(1)),
    ranks_reported UInt32 CODEC(ZSTD(1)),
    missing_ranks Array(UInt32) CODEC(ZSTD(1)),
    complete Bool,
    ts_first DateTime64(6, 'UTC') CODEC(Delta(8), ZSTD(1)),
    ts_last DateTime64(6, 'UTC') CODEC(Delta(8), ZSTD(1)),
    extra String CODEC(ZSTD(3))
)
ENGINE = ReplacingMergeTree(ranks_reported)
PARTITION BY toYYYYMM(ts_first)
ORDER BY (run_id, step)
SETTINGS non_replicated_deduplication_window = 10000;

-- Cross-rank aggregates of each aligned step, one row per (step, metric): spread
-- (max - min), which rank was slowest (argmax), straggler history.
CREATE TABLE IF NOT EXISTS rankstream.step_metrics
(
    team LowCardinality(String),
    run_id String CODEC(ZSTD(1)),
    metric LowCardinality(String),
    step Int64 CODEC(Delta(8), ZSTD(1)),
    ts_first DateTime64(6, 'UTC') CODEC(Delta(8), ZSTD(1)),
    mean Float64 CODEC(Gorilla, ZSTD(1)),
    min Float64 CODEC(Gorilla, ZSTD(1)),
    max Float64 CODEC(Gorilla, ZSTD(1)),
    std Float64 CODEC(Gorilla, ZSTD(1)),
    argmin Int32 CODEC(ZSTD(1)),
    argmax Int32 CODEC(ZSTD(1)),
    n UInt32 CODEC(ZSTD(1))
)
ENGINE = ReplacingMergeTree(n)
PARTITION BY toYYYYMM(ts_first)
ORDER BY (run_id, metric, step)
SETTINGS non_replicated_deduplication_window = 10000;

-- Alerts: deterministic alert_id, so a re-emitted alert replaces itself.
CREATE TABLE IF NOT EXISTS rankstream.alerts
(
    team LowCardinality(String),
    rule LowCardinality(String),
    severity LowCardinality(String),
    run_id String CODEC(ZSTD(1)),
    alert_id String CODEC(ZSTD(1)),
    step Int64 CODEC(ZSTD(1)),
    ranks Array(UInt32) CODEC(ZSTD(1)),
    ts DateTime64(6, 'UTC') CODEC(Delta(8), ZSTD(1)),
    message String CODEC(ZSTD(3)),
    evidence String CODEC(ZSTD(3))
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY (team, rule, run_id, alert_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- Latest metadata and status per run (version = updated_at: run_end beats run_start).
CREATE TABLE IF NOT EXISTS rankstream.runs
(
    run_id String,
    team LowCardinality(String),
    run_name String,
    project LowCardinality(String),
    task_type LowCardinality(String),
    model_name LowCardinality(String),
    model_architecture LowCardinality(String),
    config String CODEC(ZSTD(3)),
    world_size UInt32,
    status LowCardinality(String),
    started_at DateTime64(6, 'UTC'),
    ended_at Nullable(DateTime64(6, 'UTC')),
    updated_at DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY run_id
SETTINGS non_replicated_deduplication_window = 10000;
