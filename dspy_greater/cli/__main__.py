"""``python -m dspy_greater.cli``: the ``dspy-greater`` command."""

import sys

from . import main

sys.exit(main())
