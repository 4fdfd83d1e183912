"""``python -m gridgen.cli``: the ``gridgen`` command."""

import sys

from . import main

sys.exit(main())
