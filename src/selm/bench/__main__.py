"""`python -m selm.bench NAME ...` (the names: selm.bench.BENCHMARKS)."""

import sys

from selm.bench import main

sys.exit(main())
