"""ClickHouse sinks: schema migrations, batched idempotent writers, the sink worker and its HTTP interface."""
