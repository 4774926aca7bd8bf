"""``python -m benchmarks.suite``: see `benchmarks.suite._command`."""

from ._command import main

raise SystemExit(main())
