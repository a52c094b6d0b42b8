"""rankstream: real-time, per-rank observability for distributed training.

The top-level package is the shared kernel (wire schema, config, topic names,
CLI). The producer, stream jobs and sinks live in ``rankstream.producer``,
``rankstream.stream_jobs`` and ``rankstream.sinks``.
"""

__version__ = "0.1.0"
