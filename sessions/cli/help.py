"""Usage errors in one sentence, and ``liv help [COMMAND]``.

A mistyped command or option gets one plain sentence on stderr naming what is wrong, the
closest command or option when there is one, and what is allowed, then exit status 2
(docs/cli.md, "Exit status"). argparse's own messages (a usage block and
"invalid choice: ... (choose from ...)") are reworded here; ``--help`` pages are unchanged.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

from sessions.cli.errors import EXIT_USAGE, UsageError

_REQUIRED = "the following arguments are required: "


def closest(word: str, allowed: Iterable[str]) -> str | None:
    """The allowed word nearest to a mistyped one, or None when none is near."""
    found = difflib.get_close_matches(word, list(allowed), n=1, cutoff=0.6)
    return found[0] if found else None


def help_hint(prog: str) -> str:
    """The command that shows ``prog``'s help: ``liv help start`` for ``liv start``."""
    words = prog.split()[1:]
    return " ".join(["liv help", *words])


def _sub_action(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[Any] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def _options(parser: argparse.ArgumentParser) -> list[str]:
    """The long options of a command (and -h), in the order of its help."""
    found: list[str] = []
    for action in parser._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        found += longs or action.option_strings
    return found


def _join(words: Sequence[str]) -> str:
    return ", ".join(words[:-1]) + f" or {words[-1]}" if len(words) > 1 else "".join(words)


def choice_sentence(prog: str, action: argparse.Action, value: object) -> str:
    """A value outside an argument's choices: a command, an action or an option's value."""
    allowed = [str(c) for c in action.choices or ()]
    near = closest(str(value), allowed)
    guess = f" did you mean {near!r}?" if near else ""
    if isinstance(action, argparse._SubParsersAction):
        kind = "command" if prog == "liv" else "action"
        return (
            f"{value!r} is not {_a(kind)} of {prog}:{guess} the {kind}s are {_join(allowed)} "
            f"('{help_hint(prog)}' describes them)"
        )
    name = "/".join(action.option_strings) or str(action.metavar or action.dest)
    return f"{prog}: {name} {value!r} is not allowed:{guess} use {_join(allowed)}"


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def unknown_sentence(parser: argparse.ArgumentParser, extras: Sequence[str]) -> str:
    """Words a command does not take: an unknown option (the nearest named) or a stray word."""
    prog = parser.prog
    word = extras[0]
    if word.startswith("-"):
        name = word.split("=", 1)[0]
        options = _options(parser)
        near = closest(name, options)
        guess = f" did you mean {near}?" if near else ""
        return (
            f"{prog} has no option {name}:{guess} its options are {_join(options)} "
            f"('{help_hint(prog)}' describes them)"
        )
    return f"{prog} does not take {word!r} here ('{help_hint(prog)}' says what it takes)"


def usage_sentence(parser: argparse.ArgumentParser, message: str) -> str:
    """argparse's message for ``parser`` as one sentence that says what is allowed."""
    prog = parser.prog
    if message.startswith(_REQUIRED):
        missing = message[len(_REQUIRED) :]
        sub = _sub_action(parser)
        if sub is not None and missing == sub.metavar:
            kind = "command" if prog == "liv" else "action"
            return (
                f"{prog} needs {_a(kind)}: "
                f"{_join(list(sub.choices))} ('{help_hint(prog)}' describes them)"
            )
        return f"{prog} needs {missing} ('{help_hint(prog)}' says what each one is)"
    if message.startswith("argument "):
        name, _, rest = message[len("argument ") :].partition(": ")
        if name.split("/")[0] not in rest:
            rest = f"{name}: {rest}"
        return f"{prog}: {rest}"
    return f"{prog}: {message}"


def _line(sentence: str) -> str:
    """The line on stderr: every error starts 'liv', once (a sentence naming 'liv ...' does)."""
    return f"{sentence}\n" if sentence.startswith("liv") else f"liv: {sentence}\n"


class LivParser(argparse.ArgumentParser):
    """The ``liv`` parser and its subcommands' (``add_subparsers`` uses the parent's class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, _line(usage_sentence(self, message)))

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is not None and value not in action.choices:
            self.exit(EXIT_USAGE, _line(choice_sentence(self.prog, action, value)))


def chosen_parser(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> argparse.ArgumentParser:
    """The (sub)command's parser that ``args`` were parsed by: ``liv start``'s for ``start``."""
    sub = _sub_action(parser)
    while sub is not None:
        name = getattr(args, sub.dest, None)
        if name not in sub.choices:
            break
        parser = sub.choices[name]
        sub = _sub_action(parser)
    return parser


def parse_command_line(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> argparse.Namespace:
    """Parse ``argv``; words a command does not take are told about by that command."""
    for word in sys.argv[1:] if argv is None else argv:
        if not word.startswith("-"):
            break  # the command: its own options are its parser's
        if word.split("=", 1)[0] not in parser._option_string_actions:
            parser.exit(EXIT_USAGE, _line(unknown_sentence(parser, [word])))
    args, extras = parser.parse_known_args(argv)
    if extras:
        chosen = chosen_parser(parser, args)
        chosen.exit(EXIT_USAGE, _line(unknown_sentence(chosen, extras)))
    return args


def cmd_help(args: argparse.Namespace) -> int:
    """``liv help [COMMAND ...]``: the same page as ``liv [COMMAND ...] --help``."""
    from sessions.cli.parser import build_parser

    parser = build_parser()
    for word in args.topic:
        sub = _sub_action(parser)
        if sub is None:
            raise UsageError(
                f"there is no command below {parser.prog!r} ('{help_hint(parser.prog)}' "
                "describes it)"
            )
        if word not in sub.choices:
            raise UsageError(choice_sentence(parser.prog, sub, word))
        parser = sub.choices[word]
    print(parser.format_help(), end="")
    return 0
