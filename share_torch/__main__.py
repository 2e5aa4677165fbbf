"""``python -m share_torch`` runs the ``lorashare`` command."""

import sys

from .cli import main

sys.exit(main())
