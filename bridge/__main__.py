"""``python -m bridge``: the same CLI as the ``bridge`` console script."""

import sys

from app.cli import main

sys.exit(main())
