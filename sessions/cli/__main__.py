"""``python -m sessions.cli``: the ``liv`` command."""

import sys

from sessions.cli.app import main

if __name__ == "__main__":
    sys.exit(main())
