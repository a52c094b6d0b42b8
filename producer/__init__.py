"""rankstream.producer: the library inside training jobs that publishes per-rank step events.

One line per integration::

    from rankstream.producer import Reporter
    reporter = Reporter(meta={"team": "nlp", "project": "chat"})
    reporter.log(step, loss=loss, lr=lr)          # hot path: ~µs, never blocks, never raises
    reporter.close()

Public API: :class:`Reporter` (``log``, ``log_eval``, ``close``, ``stats``; ``transport=`` swaps
the kafka-python default for any :class:`~rankstream.producer.transport.Transport`),
:func:`detect_identity` / :class:`RunIdentity` (rank and run id without a reporter), and
:func:`flush_spool` (what ``rankstream spool flush`` runs). Framework helpers:
``rankstream.producer.hf.RankstreamCallback``, ``rankstream.producer.lightning.RankstreamLightningCallback``,
``rankstream.producer.loop.StepTimer``. See ``docs/producer.md``.
"""

from rankstream.producer.flush import flush_spool
from rankstream.producer.identity import RunIdentity, detect_identity
from rankstream.producer.reporter import Reporter

__all__ = ["Reporter", "RunIdentity", "detect_identity", "flush_spool"]
