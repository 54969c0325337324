"""Benchmark harness: continuum-celery against plain Celery and DBOS Transact.

Run ``python -m bench --help``. Every system runs on the same PostgreSQL
database (``continuum_bench``, recreated per invocation), the same Redis
database number (12 by default, the only one ever flushed, and only while
it holds nothing but the benchmark's own keys) and real worker
processes started as subprocesses with the same concurrency.

Modules, in the order data flows through them:

- ``config``       settings and connection URLs shared by harness and workers
- ``workloads``    sequential, queued, fanout, timers, and continuum's targets in each
- ``procs``        starting, readiness-checking and stopping subprocesses
- ``celery_chain`` plain Celery: chains and chords of N trivial tasks (and a one-commit variant)
- ``continuum_flow`` continuum-celery: workflows of N trivial activities
- ``dbos_flow``    DBOS Transact: workflows of N steps
- ``drive``        the subprocess entry point that submits work and times it
- ``systems``      one orchestrator per system: prepare, start workers, run phases
- ``runner``       one repetition: counters around the throughput phase, then latency
- ``measure``      counters (pg_stat_database, pg_stat_wal, INFO commandstats) and math
- ``cpu``          CPU time of workers, driver, PostgreSQL and Redis during a phase
- ``rss``          ``--rss``: worker memory after 1,000 and after 10,000 runs
- ``profiling``    optional pyinstrument profile of continuum worker processes
- ``report``       medians across repetitions, the tables and the ratios against the targets

``python -m bench.scale`` (``scale``) measures a start, a step and a sweep on a
journal of millions of runs against an empty one: ``fill`` copies runs the
engine wrote inside PostgreSQL, ``scale_app`` is its workers' app and
``scale_drive`` its driver.
"""
