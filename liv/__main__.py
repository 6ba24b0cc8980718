"""Run the ``liv`` command as ``python -m liv``."""

import sys

from sessions.cli import main

if __name__ == "__main__":
    sys.exit(main())
