"""``python -m lpldstore.cli``: the ``lpldstore`` command."""

import sys

from lpldstore.cli import main

sys.exit(main())
