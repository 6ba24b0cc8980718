"""The ``liv`` command: what patients, clinicians and engineers type.

Every expected failure ends in one clear sentence on stderr and a non-zero exit status
(docs/cli.md): 0 ok, 1 a failure (refused, tripped, nobody on the plate, out of time, an
error), 2 a usage error (bad argument), 130 interrupted (Ctrl-C, SIGTERM, SIGHUP, a closed
output pipe).

One module per seam:

- ``app``: ``main``, which runs a command's handler and turns failures into one sentence;
- ``parser``: the argument parser; each command names its handler's module, imported only
  when the command runs (``liv --help`` loads no command code: docs/performance.md);
- ``helptext``: each command's description and example; ``completion``: shell completion;
- ``errors``: exit statuses, ``UsageError`` and the engineer-only refusal;
- the engineers' commands: ``device`` (``liv device info|drive``, ``liv sim serve``),
  ``calibrate``, ``run``, and what they share, ``engineering`` (the run's record, progress).

The patients' and clinicians' handlers are in ``sessions.commands``.
"""

import os

# The program computes on one thread (firmware_bridge/realtime.py). OpenBLAS reads this when
# numpy is first imported, which the entry point ('liv', python -m sessions.cli, python -m liv)
# always precedes: without it OpenBLAS starts a thread per core at import, CPU spent before the
# plate moves (docs/performance.md). A value the user set is kept.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from sessions.cli.app import main
from sessions.cli.completion import completion_script
from sessions.cli.errors import (
    ENGINEER_SENTENCE,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    EngineerOnlyError,
    UsageError,
)
from sessions.cli.helptext import subcommands
from sessions.cli.parser import build_parser, package_version

__all__ = [
    "ENGINEER_SENTENCE",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "EngineerOnlyError",
    "UsageError",
    "build_parser",
    "completion_script",
    "main",
    "package_version",
    "subcommands",
]
