"""``python -m numpy_attention``: the same as the ``numpy-attention`` command."""

import sys

from .app.cli import main

sys.exit(main())
