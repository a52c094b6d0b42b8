"""The pure detection core: align ranks, aggregate across ranks, detect anomalies.

No Kafka, Faust, clocks or I/O here: the stream jobs and ``rankstream replay``
are thin shells around :class:`Engine`.
"""

from rankstream.stream_jobs.core.engine import Engine, Output
from rankstream.stream_jobs.core.rules import RulesConfig, RulesError, load_rules

__all__ = ["Engine", "Output", "RulesConfig", "RulesError", "load_rules"]
