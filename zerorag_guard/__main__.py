"""``python -m zerorag_guard`` is the ``zerorag-guard`` command."""

import sys

from .cli import main

sys.exit(main())
