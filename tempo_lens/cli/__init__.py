"""`tempo-lens` command line: argument parsing and messages only.

Every command is a module of this package with `NAME`, `HELP`, `add_arguments(parser)` and
`run(args) -> exit code`, listed in `COMMANDS` (imported explicitly, nothing registers
itself). A command module imports torch, TransformerLens and the library inside `run`, so
`--help` stays fast.

This is the only place that turns errors into messages: library errors (`TempoError`) and
OS errors about a path (`OSError` with a file name: permission denied, disk full, ...)
become one-line `tempo-lens: error: ...` messages with exit code 2; nothing else is caught
here, so a real bug still shows its traceback. The library never imports this package.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tempo_lens.cli import experiment, generate, info, report
from tempo_lens.errors import TempoError

COMMANDS = (info, generate, experiment, report)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command."""
    from tempo_lens import __version__

    parser = argparse.ArgumentParser(
        prog="tempo-lens",
        description="TEMPO parallel-token generation on TransformerLens",
    )
    parser.add_argument("--version", action="version", version=f"tempo-lens {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        p = sub.add_parser(command.NAME, help=command.HELP, description=command.HELP)
        command.add_arguments(p)
        p.set_defaults(func=command.run)
    return parser


def _one_line(text: str) -> str:
    return " ".join(text.split("\n"))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default `sys.argv[1:]`); return the exit code."""
    from tempo_lens.quiet import quiet

    parser = build_parser()
    args = parser.parse_args(argv)  # --help and --version exit here, before any heavy import
    quiet()
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except TempoError as err:
        print(f"tempo-lens: error: {_one_line(str(err))}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.filename is None:
            raise  # not about a user's path: a bug, keep the traceback
        where = err.filename if err.filename2 is None else f"{err.filename} -> {err.filename2}"
        print(f"tempo-lens: error: {where}: {err.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tempo-lens: interrupted", file=sys.stderr)
        return 130
