"""``rankstream ui``: a live web dashboard over the store (runs, one run's curves and per-rank views, compare).

* :mod:`.queries`: the SQL, downsampled in the store, and pure functions shaping rows into chart JSON;
* :mod:`.reader`: store access (through a running sink's HTTP interface, or a ClickHouse DSN);
* :mod:`.api`: what each chart draws; :mod:`.app`: the Starlette app; :mod:`.server`: uvicorn.

Needs the ``ui`` extra (starlette, uvicorn); the pages' chart library (uPlot) ships in ``static/vendor``.
"""
