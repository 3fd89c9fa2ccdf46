"""Benchmarks of btu_twisted against real MariaDB and Redis (``python -m bench.run``).

Nothing here is imported by the daemon or its tests.  See ``bench/README.rst``.
"""
