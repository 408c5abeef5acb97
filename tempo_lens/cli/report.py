"""`tempo-lens report`: one self-contained HTML file for a run or an experiment directory."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from tempo_lens.errors import TempoError

NAME = "report"
HELP = "write one self-contained HTML report of a run or experiment"


def _parse_layers(text: str | None) -> list[int] | None:
    if text is None or text == "all":
        return None
    try:
        layers = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise TempoError(
            f"--layers takes comma-separated integers or 'all', got {text!r}"
        ) from None
    if not layers:
        raise TempoError("--layers is empty; give e.g. 0,4,8 or 'all'")
    return layers


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="RUN_OR_EXPERIMENT_DIR")
    p.add_argument("--out", default=None, help="HTML file (default: DIR/report.html)")
    p.add_argument(
        "--model", default=None, help="model to replay attention on (default: the run's)"
    )
    p.add_argument(
        "--layers",
        default=None,
        help="e.g. 0,4,8 or 'all' (default: the captured layers, else all)",
    )
    p.add_argument(
        "--max-layers",
        type=int,
        default=None,
        help="cap on attention layers, spread over the depth (default: no cap, the budget decides)",
    )
    p.add_argument(
        "--budget-mb",
        type=float,
        default=None,
        help="inlined data in MB (default: tempo_lens.viz.report.BUDGET_MB)",
    )
    p.add_argument(
        "--attention-runs",
        type=int,
        default=None,
        help="experiment dirs: runs with attention (default: tempo_lens.viz.report.ATTENTION_RUNS)",
    )
    p.add_argument("--no-attention", action="store_true", help="skip attention (no model load)")
    p.add_argument("--screenshot", default=None, help="also save a PNG taken in headless Chromium")


def run(args: Any) -> int:
    from tempo_lens.loading import EMBEDDED_NAME
    from tempo_lens.quiet import load_model_quietly
    from tempo_lens.storage import check_target
    from tempo_lens.viz.report import build_report, write_report

    src = Path(args.path)
    if not src.exists():
        raise TempoError(
            f"{src} does not exist; pass a run directory (tempo-lens generate --out DIR) "
            "or an experiment directory"
        )
    if args.max_layers is not None and args.max_layers < 1:
        raise TempoError(f"--max-layers must be >= 1, got {args.max_layers}")
    if args.budget_mb is not None and (not math.isfinite(args.budget_mb) or args.budget_mb <= 0):
        raise TempoError(f"--budget-mb must be a positive number, got {args.budget_mb}")
    if args.attention_runs is not None and args.attention_runs < 0:
        raise TempoError(f"--attention-runs must be >= 0, got {args.attention_runs}")
    given = {"budget_mb": args.budget_mb, "attention_runs": args.attention_runs}
    out = (
        Path(args.out) if args.out is not None else (src / "report.html" if src.is_dir() else None)
    )
    if out is not None:
        check_target(out, "report")  # before any model loads

    def load(name: str) -> Any:
        wanted = args.model or (None if name == EMBEDDED_NAME else name)
        return load_model_quietly(wanted)

    html_text = build_report(
        src,
        load=load,
        layers=_parse_layers(args.layers),
        max_layers=args.max_layers,
        attention=not args.no_attention,
        on_note=lambda text: print(f"tempo-lens: note: {text}", file=sys.stderr),
        **{k: v for k, v in given.items() if v is not None},  # else the report's defaults
    )
    assert out is not None  # build_report rejected a non-directory path
    path = write_report(html_text, out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    if args.screenshot:
        from tempo_lens.viz.browser import check_page

        page = check_page(path, args.screenshot)
        problems = page.errors + [m["message"] for m in page.console_errors]
        print(f"screenshot {page.screenshot} ({len(page.roots)} circuitsvis views drawn)")
        for msg in problems:
            print(f"tempo-lens: browser: {msg}", file=sys.stderr)
        return 1 if problems else 0
    return 0
