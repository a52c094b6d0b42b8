"""rankstream.producer: the library inside training jobs that publishes per-rank step events.

One line per integration::

    from rankstream.producer import Reporter
    reporter = Reporter(meta={"team": "nlp", "project": "chat"})
    reporter.log(step, loss=loss, lr=lr)          # hot path: ~µs, never blocks, never raises
    reporter.close()

See ``docs/producer.md`` for the Hugging Face, Lightning and plain-loop helpers.
"""

from rankstream.producer.identity import RunIdentity, detect_identity
from rankstream.producer.reporter import Reporter
from rankstream.producer.spool import flush_spool

__all__ = ["Reporter", "RunIdentity", "detect_identity", "flush_spool"]
