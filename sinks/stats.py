"""The sink worker's counters (tests, the CLI and ``/metrics`` read them while it runs) and its last log line."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SinkStats:
    """Counters a caller (tests, the CLI) can read while the worker runs."""

    messages: int = 0
    batches: int = 0
    rows_written: int = 0
    dlq: int = 0
    rejected: int = 0  # messages the store refused for their data (also counted in dlq)
    outages: int = 0
    max_buffered_rows: int = 0  # rows of the batch being filled
    max_held_rows: int = 0  # that plus the batch being inserted (the bound: two batches)
    restamped_runs: int = 0  # runs whose rows stored without a team got it (rankstream.sinks.teams)
    team_corrected: int = 0  # run_start events that claimed another team than their topic's (corrected)
    foreign_runs: int = 0  # messages of a run another team owns (sent to their team's DLQ, also counted in dlq)
    polls: int = 0  # rounds of the consumer loop (a test waits for one to pass)
    dropped_batches: int = 0  # batches dropped on a rebalance, to be read again
    committed: dict[str, int] = field(default_factory=dict)

    def summary(self, rewound: int) -> str:
        """The sink's last log line (``rewound``: messages left in Kafka by outage waits)."""
        return (
            f"sink: stopped after {self.batches} batches, {self.rows_written} rows, {self.dlq} message(s) to the "
            f"dead-letter topic ({self.rejected} refused by the store, {self.foreign_runs} of another team's runs), "
            f"at most {self.max_buffered_rows} rows buffered (plus the batch being inserted: {self.max_held_rows} "
            f"rows held at most), {rewound} message(s) left in Kafka by outage waits, {self.restamped_runs} run(s) "
            "re-stamped with their team"
        )


__all__ = ["SinkStats"]
