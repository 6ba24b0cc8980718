"""``python -m liv``: the ``liv`` command (sessions/cli.py), the top layer of the package."""
