"""``python -m amo_oauth``: the ``amo-oauth`` command, where its script is not on PATH."""

import sys

from .cli import main

sys.exit(main())
