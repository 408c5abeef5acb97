"""Experiment configs: the one place where every key and its default is written down.

A config file is YAML holding ONE experiment: the common keys below plus the keys its
`kind` declares (`registry.experiment_kind(..., schema=...)`). Unknown or misspelled keys
are an error that names the nearest valid key, so nothing is silently ignored.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml

from tempo_lens.errors import TempoError


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()

MODES = ("isolated", "visible")

# Every common key, its default and what it means. `prompts` and `prompt_suite` are
# alternatives (exactly one is needed); scalars are accepted where a list is expected.
COMMON: dict[str, Any] = {
    "name": REQUIRED,  # experiment name; default --out is runs/experiments/<name>
    "kind": REQUIRED,  # registered experiment kind (tempo_lens.analysis.registry.KINDS)
    "description": "",  # one line, copied into report.md
    "model": None,  # model name (None = embedded SmolLM2); --model overrides it
    "prompts": None,  # list of prompt strings
    "prompt_suite": None,  # YAML file {category: [prompts]}, relative to the config file
    "categories": None,  # restrict prompt_suite to these categories
    "max_prompts": None,  # keep the first N prompts (per the suite's order)
    "thresholds": [0.1],  # selection thresholds, each in (0, 1]
    "max_steps": 15,  # logical steps per run
    "modes": list(MODES),  # isolated and/or visible
    "next_from": ["mixture"],  # mixture, last and/or first (DESIGN.md selection rule)
    "max_parallel": None,  # cap on set size (None = no cap)
    "stop_at_eos": True,  # stop after a step whose top member is EOS
    "seed": 42,  # seed of every resampling (bootstrap, permutation tests)
    "bootstrap": 2000,  # bootstrap resamples behind each 95% CI
    "permutations": 10000,  # sign-flip resamples of the paired test (exact when n <= 14)
}

LIST_KEYS = ("thresholds", "modes", "next_from", "prompts", "categories")


def _nearest(key: str, valid: list[str]) -> str:
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean {near[0]!r}?" if near else f"; valid keys: {', '.join(valid)}"


def resolve(raw: dict[str, Any], base_dir: Path | None = None) -> dict[str, Any]:
    """Validate a raw config dict and fill in every default (common and kind keys).

    `base_dir` is where a relative `prompt_suite` is looked up. Returns the resolved
    section with `prompts` expanded to a list of `{"id", "category", "text"}`."""
    from tempo_lens.analysis.experiment import kinds

    if not isinstance(raw, dict):
        raise TempoError("an experiment config is a YAML mapping of keys (name:, kind:, ...)")
    registered = kinds()
    kind = raw.get("kind")
    if kind is None:
        raise TempoError(f"the config needs a 'kind:' key, one of {', '.join(sorted(registered))}")
    if kind not in registered:
        raise TempoError(f"unknown kind {kind!r}{_nearest(str(kind), sorted(registered))}")
    schema = getattr(registered[kind], "schema", {}) or {}
    valid = sorted(set(COMMON) | set(schema))
    for key in raw:
        if key not in valid:
            raise TempoError(f"unknown config key {key!r}{_nearest(str(key), valid)}")
    out: dict[str, Any] = {}
    for key, default in {**COMMON, **schema}.items():
        value = raw.get(key, default)
        if value is REQUIRED:
            raise TempoError(f"the config needs a {key!r} key")
        if key in LIST_KEYS and value is not None and not isinstance(value, list):
            value = [value]
        out[key] = value
    _check_values(out)
    out["prompts"] = _prompts(out, base_dir or Path.cwd())
    return out


def _check_values(c: dict[str, Any]) -> None:
    for t in c["thresholds"]:
        if not isinstance(t, int | float) or not 0 < t <= 1:
            raise TempoError(f"thresholds: each must lie in (0, 1], got {t!r}")
    if not isinstance(c["max_steps"], int) or c["max_steps"] < 1:
        raise TempoError(f"max_steps must be an integer >= 1, got {c['max_steps']!r}")
    for m in c["modes"]:
        if m not in MODES:
            raise TempoError(f"modes: {m!r} is not a mode{_nearest(str(m), list(MODES))}")
    for nf in c["next_from"]:
        if nf not in ("mixture", "last", "first"):
            raise TempoError(f"next_from: {nf!r} is not one of mixture, last, first")
    if (c["prompts"] is None) == (c["prompt_suite"] is None):
        raise TempoError("give exactly one of 'prompts:' (a list) or 'prompt_suite:' (a file)")


def _prompts(c: dict[str, Any], base_dir: Path) -> list[dict[str, str]]:
    if c["prompts"] is not None:
        items = [("prompts", str(p)) for p in c["prompts"]]
    else:
        path = Path(c["prompt_suite"])
        if not path.is_absolute():
            path = base_dir / path
        if not path.is_file():
            raise TempoError(f"prompt_suite {c['prompt_suite']!r} not found (looked at {path})")
        suite = yaml.safe_load(path.read_text())
        if not isinstance(suite, dict):
            raise TempoError(f"{path} must map category names to lists of prompts")
        wanted = c["categories"]
        for cat in wanted or []:
            if cat not in suite:
                raise TempoError(f"categories: {cat!r} not in {path}{_nearest(cat, list(suite))}")
        items = [
            (cat, str(p))
            for cat, prompts in suite.items()
            if wanted is None or cat in wanted
            for p in prompts
        ]
    if c["max_prompts"] is not None:
        items = items[: c["max_prompts"]]
    if not items or any(not text.strip() for _, text in items):
        raise TempoError("the config's prompts are empty; give at least one non-empty prompt")
    return [
        {"id": f"p{i:03d}", "category": cat, "text": text} for i, (cat, text) in enumerate(items)
    ]


def load_config(path: str | Path) -> dict[str, Any]:
    """Read, validate and resolve a YAML experiment config file."""
    p = Path(path)
    if not p.is_file():
        raise TempoError(
            f"config {path} not found; pass a YAML file such as experiments/sweep.yaml"
        )
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise TempoError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from err
    return resolve(raw, p.parent)
