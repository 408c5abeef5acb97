"""Experiment configs: the one place where every common key and its default is written down.

A config file is YAML holding ONE experiment: the common keys of `CommonKeys` plus the keys
its kind declares (`Kind.keys`, a pydantic model: `tempo_lens.analysis.experiments.kind`).
Every value is checked by those strict models before any model loads. Unknown or misspelled
keys are an error that names the nearest valid key; a common key the kind does not read
(`Kind.unused`), or more than one value of a list key it reads once (`Kind.single`), is
refused too, so nothing is silently ignored. YAML is read with `yaml.safe_load` only.
"""

from __future__ import annotations

import difflib
import itertools
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
)

from tempo_lens.analysis.experiments.kind import Kind, PositiveInt
from tempo_lens.analysis.experiments.registry import kind as find_kind
from tempo_lens.analysis.experiments.registry import names
from tempo_lens.errors import TempoError

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}"

MODES = ("isolated", "visible")

# Keys that take a list; a scalar given for one is read as a one-element list.
LIST_KEYS = ("thresholds", "modes", "next_from", "prompts", "categories")

Threshold = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
Text = Annotated[StrictStr, Field(min_length=1)]
Resamples = Annotated[StrictInt, Field(ge=1, le=10_000_000)]


class CommonKeys(BaseModel):
    """The common keys of every experiment config, typed and bounded, with their defaults.

    `prompts` and `prompt_suite` are alternatives (exactly one is needed)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    # experiment name; default --out is runs/experiments/<name>
    name: Annotated[StrictStr, Field(pattern=f"^{NAME_PATTERN}$")]
    # experiment kind (tempo_lens.analysis.experiments.registry.KINDS)
    kind: StrictStr
    # one line, copied into report.md
    description: StrictStr = ""
    # model name (None = embedded SmolLM2); --model overrides it
    model: Text | None = None
    # list of prompt strings
    prompts: list[Text] | None = Field(default=None, min_length=1)
    # YAML file {category: [prompts]}, relative to the config file
    prompt_suite: Text | None = None
    # restrict prompt_suite to these categories
    categories: list[Text] | None = Field(default=None, min_length=1)
    # keep N prompts: the first N in the suite's order, or (sample: stratified) N taken
    # round-robin across the categories
    max_prompts: PositiveInt | None = None
    # how max_prompts picks: "first" N, or "stratified" across every category
    sample: Literal["first", "stratified"] = "first"
    # selection thresholds, each in (0, 1]
    thresholds: list[Threshold] = Field(default=[0.1], min_length=1)
    # logical steps per run
    max_steps: Annotated[StrictInt, Field(ge=1, le=100_000)] = 15
    # isolated and/or visible
    modes: list[Literal["isolated", "visible"]] = Field(default=list(MODES), min_length=1)
    # mixture, last and/or first (docs/design.md selection rule)
    next_from: list[Literal["mixture", "last", "first"]] = Field(default=["mixture"], min_length=1)
    # cap on set size (None = no cap)
    max_parallel: PositiveInt | None = None
    # stop after a step whose top member is EOS
    stop_at_eos: StrictBool = True
    # seed of every resampling (bootstrap, permutation tests)
    seed: Annotated[StrictInt, Field(ge=0, le=10_000_000)] = 42
    # bootstrap resamples behind each 95% CI
    bootstrap: Resamples = 2000
    # sign-flip resamples of the paired test (exact when n <= 14)
    permutations: Resamples = 10000


COMMON = tuple(CommonKeys.model_fields)


class PromptSuite(RootModel[dict[Text, list[Text]]]):
    """A prompt-suite file: `{category: [prompt, ...]}`."""


def _nearest(key: str, valid: list[str]) -> str:
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean {near[0]!r}?" if near else f"; valid keys: {', '.join(valid)}"


def _problem(err: ValidationError, raw: dict[str, Any]) -> str:
    first = err.errors()[0]
    loc = first["loc"]
    key = ".".join(str(p) for p in loc)
    value = raw.get(loc[0]) if loc else raw
    msg = first["msg"]
    if first["type"] == "missing":
        return f"the config needs a {key!r} key"
    if loc and loc[0] == "name":
        return (
            f"name: {value!r} is not a valid experiment name; use letters, digits, '_', '.' "
            "and '-' (e.g. exp1_attention), no path"
        )
    return f"{key}: {msg}, got {value!r}"


def resolve(raw: dict[str, Any], base_dir: Path | None = None) -> dict[str, Any]:
    """Validate a raw config dict and fill in every default (common and kind keys).

    `base_dir` is where a relative `prompt_suite` is looked up. Returns the resolved
    section with `prompts` expanded to a list of `{"id", "category", "text"}`."""
    if not isinstance(raw, dict):
        raise TempoError("an experiment config is a YAML mapping of keys (name:, kind:, ...)")
    if raw.get("kind") is None:
        raise TempoError(f"the config needs a 'kind:' key, one of {', '.join(names())}")
    kind = find_kind(raw["kind"])
    own_keys = tuple(kind.keys.model_fields)
    valid = sorted(set(COMMON) | set(own_keys))
    for key in raw:
        if key not in valid:
            raise TempoError(f"unknown config key {key!r}{_nearest(str(key), valid)}")
    listed = {
        k: ([v] if k in LIST_KEYS and v is not None and not isinstance(v, list) else v)
        for k, v in raw.items()
    }
    _check_kind_use(kind, listed)
    try:
        common = CommonKeys.model_validate({k: v for k, v in listed.items() if k in COMMON})
        own = kind.keys.model_validate({k: v for k, v in listed.items() if k in own_keys})
    except ValidationError as err:
        raise TempoError(_problem(err, listed)) from None
    out: dict[str, Any] = {**common.model_dump(), **own.model_dump()}
    _check_values(out)
    out["prompts"] = _prompts(out, base_dir or Path.cwd())
    return out


def _check_kind_use(kind: Kind, listed: dict[str, Any]) -> None:
    """Refuse a common key the kind does not read, and several values of one it reads once."""
    for key in kind.unused:
        if key in listed:
            raise TempoError(f"{key}: the {kind.name} kind does not read {key!r}; remove it")
    for key in kind.single:
        value = listed.get(key)
        if isinstance(value, list) and len(value) > 1:
            raise TempoError(
                f"{key}: the {kind.name} kind reads one value, got {value!r}; give one"
            )


def _check_values(c: dict[str, Any]) -> None:
    if (c["prompts"] is None) == (c["prompt_suite"] is None):
        raise TempoError("give exactly one of 'prompts:' (a list) or 'prompt_suite:' (a file)")
    if c["categories"] is not None and c["prompt_suite"] is None:
        raise TempoError("categories: selects from a prompt_suite; give 'prompt_suite:' too")
    if c["sample"] == "stratified" and (c["prompt_suite"] is None or c["max_prompts"] is None):
        raise TempoError(
            "sample: stratified picks max_prompts prompts across a prompt_suite's "
            "categories; give 'prompt_suite:' and 'max_prompts:' too"
        )


def load_prompt_suite(path: Path) -> dict[str, list[str]]:
    """Read a prompt-suite YAML file (`yaml.safe_load`), checked against `PromptSuite`."""
    raw = _read_yaml(path, "prompt suite")
    try:
        return PromptSuite.model_validate(raw).root
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the top level"
        raise TempoError(
            f"{path}: {where}: {first['msg']}; a prompt suite maps category names to lists of "
            "prompt strings"
        ) from None


def _prompts(c: dict[str, Any], base_dir: Path) -> list[dict[str, str]]:
    if c["prompts"] is not None:
        items = [("prompts", p) for p in c["prompts"]]
    else:
        path = Path(c["prompt_suite"])
        if not path.is_absolute():
            path = base_dir / path
        if not path.is_file():
            raise TempoError(f"prompt_suite {c['prompt_suite']!r} not found (looked at {path})")
        suite = load_prompt_suite(path)
        wanted = c["categories"]
        for cat in wanted or []:
            if cat not in suite:
                raise TempoError(f"categories: {cat!r} not in {path}{_nearest(cat, list(suite))}")
        items = [
            (cat, p)
            for cat, prompts in suite.items()
            if wanted is None or cat in wanted
            for p in prompts
        ]
    if c["max_prompts"] is not None:
        items = sample(items, c["max_prompts"], c["sample"])
    if not items or any(not text.strip() for _, text in items):
        raise TempoError("the config's prompts are empty; give at least one non-empty prompt")
    for _, text in items:
        _check_text(text)
    return [
        {"id": f"p{i:03d}", "category": cat, "text": text} for i, (cat, text) in enumerate(items)
    ]


def sample(
    items: list[tuple[str, str]], n: int, how: Literal["first", "stratified"]
) -> list[tuple[str, str]]:
    """`n` of the `(category, prompt)` items, kept in their order: the first `n`, or
    (`stratified`) round-robin across the categories — the first prompt of each category
    in suite order, then the second of each, ... — so every category is represented
    before any has two."""
    if how == "first":
        return items[:n]
    by_category: dict[str, list[int]] = {}
    for i, (cat, _) in enumerate(items):
        by_category.setdefault(cat, []).append(i)
    rounds = itertools.zip_longest(*by_category.values())
    chosen = [i for i in itertools.chain.from_iterable(rounds) if i is not None][:n]
    return [items[i] for i in sorted(chosen)]


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise TempoError(f"prompt {text!r} is not valid UTF-8; fix the text") from None


def _read_yaml(path: Path, what: str) -> Any:
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise TempoError(f"cannot read {what} {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise TempoError(f"{what} {path} is not UTF-8 text; save it as UTF-8") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise TempoError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None


def load_config(path: str | Path) -> dict[str, Any]:
    """Read, validate and resolve a YAML experiment config file (every value checked
    before any model loads); errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise TempoError(
            f"config {path} not found; pass a YAML file such as experiments/sweep.yaml"
        )
    raw = _read_yaml(p, "config")
    try:
        return resolve(raw, p.parent)
    except TempoError as err:
        raise TempoError(f"{p}: {err}") from None
