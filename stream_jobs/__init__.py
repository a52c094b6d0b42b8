"""The stream worker (`rankstream worker`): a Faust shell around the pure detection core.

Public API: :func:`.app.create_app` builds a :class:`.app.StreamJob` (its ``.app`` is the
Faust app), run by :class:`.runner.StreamWorkerRunner`; :func:`.detector_state.ensure_state_topic`
prepares the state topic first. A job keeps one :class:`.lanes.Lane` per events topic (a shared
``RANKSTREAM_TEAM=*`` worker: one per team, found by :mod:`.team_watch`).
:class:`.pipeline.PartitionedPipeline` and :class:`.publisher.Publisher`
are the Kafka-free parts (unit tested); :mod:`.faust_patches` holds every change made to Faust
and aiokafka, applied when a job is built. ``rankstream.stream_jobs.core`` is the detection core
that `rankstream replay` runs too. Importing this package imports neither Faust nor the core.
"""
