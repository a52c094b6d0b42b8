"""The pure detection core: align ranks, aggregate across ranks, detect anomalies.

No Kafka, Faust, clocks or I/O here: the stream jobs and ``rankstream replay``
are thin shells around :class:`Engine`.

Public API:

* :class:`Engine`: validated events in, aligned steps and alerts out (``process``,
  ``process_many``, ``advance``, ``finish``; ``export_state`` / ``import_state``);
* :class:`Output`: what one call produced (``steps``, ``alerts``);
* :func:`load_rules` and :class:`RulesConfig`: settings from a rules YAML file
  (defaults, then overrides by team / run_name); :class:`RulesError` when it cannot be used;
* :class:`RuleSet`, :class:`AlignmentParams`: the typed settings a run resolves to
  (one frozen dataclass per rule in ``params``, documented in docs/rules.md).

Inside: ``align`` (dedup, step alignment), ``aggregate`` (cross-rank summaries),
``detect_run`` / ``detect_ranks`` / ``liveness`` (detectors returning ``Finding``
values) and ``alerts`` (alert policy: warmup mode, cooldown, ids), ``run`` (one run's
pipeline), ``rules_doc`` (the generated tables of docs/rules.md).
"""

from rankstream.stream_jobs.core.engine import Engine, Output
from rankstream.stream_jobs.core.params import AlignmentParams, RuleSet
from rankstream.stream_jobs.core.rules import RulesConfig, RulesError, load_rules

__all__ = ["AlignmentParams", "Engine", "Output", "RuleSet", "RulesConfig", "RulesError", "load_rules"]
