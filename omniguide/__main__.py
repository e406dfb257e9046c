"""``python -m omniguide ...`` is the ``omniguide`` command."""

import sys

from omniguide.recipes.cli import main

if __name__ == "__main__":
    sys.exit(main())
