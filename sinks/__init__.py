"""ClickHouse sinks: Kafka topics -> batched, idempotent inserts into ClickHouse or an embedded chDB store.

Public API (importable from here; no Kafka or store client is loaded until used):

* :class:`SinkWorker`, :class:`SinkStats` (:mod:`.worker`): the consumer loop that ``rankstream sink`` runs;
* :class:`BatchWriter`, :func:`batch_token`, :func:`insert_batch` (:mod:`.writer`): rows and inserts;
* :class:`Batch`, :class:`InvalidRecord`, :func:`validate_step`, :func:`validate_alert` (:mod:`.records`):
  pure conversion and validation;
* :class:`Rejected`, :func:`rejection_reason`, :func:`is_refusal` (:mod:`.rejections`): rows the store refuses;
* :class:`StoreError`, :func:`open_store`, :func:`parse_dsn` (:mod:`.store`): the read side that the
  write side and the ``sql``, ``runs`` and ``store`` commands share (DSNs, the HTTP interface over chDB,
  its port file, query helpers, migrations).
"""

from rankstream.sinks.records import Batch, InvalidRecord, validate_alert, validate_step
from rankstream.sinks.rejections import Rejected, is_refusal, rejection_reason
from rankstream.sinks.store import StoreError, open_store, parse_dsn
from rankstream.sinks.worker import SinkStats, SinkWorker
from rankstream.sinks.writer import BatchWriter, batch_token, insert_batch

__all__ = [
    "Batch",
    "BatchWriter",
    "InvalidRecord",
    "Rejected",
    "SinkStats",
    "SinkWorker",
    "StoreError",
    "batch_token",
    "insert_batch",
    "is_refusal",
    "open_store",
    "parse_dsn",
    "rejection_reason",
    "validate_alert",
    "validate_step",
]
