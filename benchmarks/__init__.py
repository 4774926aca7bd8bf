"""Benchmark scripts, the benchmark suite and the soak suite of trio-sessions.

Run each from the repository's root as a module, e.g. ``python -m benchmarks.directory``
or ``python -m benchmarks.suite --quick``. Nothing here is part of the installed package.
"""
