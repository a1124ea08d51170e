"""``python -m qtorch``: the same as the ``qtorch`` command."""

import sys

from qtorch.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
