"""Lets `python -m fogline.workloads.trainer` run the trainer's command line; nothing else
belongs here."""

import sys

from fogline.workloads.trainer.cli import main

sys.exit(main())
