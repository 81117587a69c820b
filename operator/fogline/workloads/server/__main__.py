"""`python -m fogline.workloads.server`: the same program as `fogline serve`.
Only forwards to the CLI."""

import sys

from fogline.workloads.server.cli import main

sys.exit(main())
