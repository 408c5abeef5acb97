"""`tempo-lens` command line: argument parsing and messages only.

Every subcommand is a `(name, add_arguments, run)` triple in `COMMANDS`. Library errors
(`TempoError`) and OS errors about a path (`OSError` with a file name: permission denied,
disk full, ...) become one-line messages with exit code 2; nothing else is caught here, so
a real bug still shows its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from tempo_lens.errors import TempoError
from tempo_lens.storage import check_target

Command = tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[[Any], int]]


def _quiet() -> None:
    """Keep library chatter (TL's 'Moving model to device', HF warnings) off the screen."""
    import logging

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    logging.getLogger("transformer_lens").setLevel(logging.ERROR)
    logging.getLogger("root").setLevel(logging.ERROR)
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    try:  # transformers' GGUF de-quantization bars on a first (uncached) load
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def load_model_quietly(name: str | None, device: str | None = None) -> Any:
    import contextlib
    import io

    from tempo_lens.loading import load_model

    with contextlib.redirect_stdout(io.StringIO()):
        return load_model(name, device=device)


def check_out_dir(out: str | None, kind: str = "run") -> None:
    """Fail before any work when --out cannot be written or holds something that is not a
    tempo_lens artefact of `kind` (`tempo_lens.storage.check_target`)."""
    if out is not None:
        check_target(out, kind)


# -- info ---------------------------------------------------------------------------------


def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=None, help="model (default: embedded SmolLM2)")
    p.add_argument("--json", action="store_true", help="print JSON")


def _info(args: Any) -> int:
    import time

    from tempo_lens.loading import describe

    t0 = time.perf_counter()
    model = load_model_quietly(args.model)
    info = describe(model) | {"load_seconds": round(time.perf_counter() - t0, 2)}
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        width = max(len(k) for k in info)
        for k, v in info.items():
            print(f"{k:<{width}}  {v}")
    return 0


# -- generate -----------------------------------------------------------------------------


def _generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt")
    p.add_argument("--threshold", type=float, default=0.1, help="keep tokens with p >= this")
    p.add_argument("--max-steps", type=int, default=15, help="logical steps (default 15)")
    p.add_argument("--visible", action="store_true", help="let set members see each other")
    p.add_argument("--next-from", default="mixture", help="mixture (default), last or first")
    p.add_argument("--max-parallel", type=int, default=None, help="cap on set size")
    p.add_argument("--model", default=None, help="model (default: embedded SmolLM2)")
    p.add_argument("--cache", nargs="*", default=None, help="hooks to capture, e.g. hook_pattern")
    p.add_argument("--out", default=None, help="save the run to this directory")
    p.add_argument("--json", action="store_true", help="print the run as JSON")


def _generate(args: Any) -> int:
    from tempo_lens.generate import _validate, generate

    _validate(args.threshold, args.max_steps, args.next_from, args.max_parallel)
    if not args.prompt.strip():
        raise TempoError("the prompt is empty; pass some text")
    check_out_dir(args.out)
    model = load_model_quietly(args.model)
    run = generate(
        model,
        args.prompt,
        threshold=args.threshold,
        max_steps=args.max_steps,
        isolate=not args.visible,
        next_from=args.next_from,
        max_parallel=args.max_parallel,
        cache=args.cache,
        progress=sys.stderr.isatty(),
    )
    if args.out is not None:
        run.save(args.out)
    if args.json:
        print(json.dumps(run.to_json(), indent=1))
        return 0
    print(args.prompt + run.text(color=sys.stdout.isatty()))
    s = run.stats()
    line = (
        f"steps {s['steps']} | physical tokens {s['physical_tokens']} | max set "
        f"{s['max_set_size']} | {s['seconds']:.2f} s | {s['steps_per_s']} steps/s | "
        f"{'isolated' if not args.visible else 'visible'} | stop: {s['stop_reason']}"
    )
    if args.out is not None:
        line += f" | saved to {args.out}"
    print(line)
    return 0


COMMANDS: list[Command] = [
    ("info", "describe a model (layers, heads, positions, load time)", _info_args, _info),
    ("generate", "generate with TEMPO and print bracket text", _generate_args, _generate),
]


# Subcommands that live beside their feature modules: name -> (module, help). The module
# (and torch, TransformerLens) is imported only when its command runs, so `--help` is fast;
# tests/test_cli.py checks this table against each module's own COMMANDS.
OPTIONAL_COMMANDS: dict[str, tuple[str, str]] = {
    "experiment": (
        "tempo_lens.analysis.cli",
        "run an experiment config (YAML) into an output directory",
    ),
    "findings": ("tempo_lens.analysis.cli", "write docs/findings.md from a sweep's summary.json"),
    "report": ("tempo_lens.viz.cli", "write one self-contained HTML report of a run or experiment"),
    "bench": ("tempo_lens.bench", "time TEMPO steps against greedy and Hugging Face"),
}


def _optional_command(name: str) -> Command:
    import importlib

    module = importlib.import_module(OPTIONAL_COMMANDS[name][0])
    return next(c for c in module.COMMANDS if c[0] == name)


def _chosen(argv: Sequence[str] | None) -> str | None:
    args = sys.argv[1:] if argv is None else list(argv)
    return next((a for a in args if not a.startswith("-")), None)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; of the optional commands only the one `argv` names is imported."""
    from tempo_lens import __version__

    parser = argparse.ArgumentParser(
        prog="tempo-lens",
        description="TEMPO parallel-token generation on TransformerLens",
    )
    parser.add_argument("--version", action="version", version=f"tempo-lens {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = _chosen(argv)
    commands = list(COMMANDS)
    for name, (_, help_text) in OPTIONAL_COMMANDS.items():
        if name == chosen:
            commands.append(_optional_command(name))
        else:  # listed in --help; its arguments are added when it is the one run
            commands.append((name, help_text, lambda p: None, lambda a: 0))
    for name, help_text, add_args, run in commands:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(func=run)
    return parser


def _one_line(text: str) -> str:
    return " ".join(text.split("\n"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)  # --help and --version exit here, before any heavy import
    _quiet()
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


if __name__ == "__main__":
    sys.exit(main())
