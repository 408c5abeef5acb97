"""Experiment configs: the one place where every key and its default is written down.

A config file is YAML holding ONE experiment: the common keys below plus the keys its
`kind` declares (`registry.experiment_kind(..., schema=...)`). Every value is checked by a
strict pydantic model (`CommonKeys`; a kind key's type follows its default) before any model
loads. Unknown or misspelled keys are an error that names the nearest valid key, so nothing
is silently ignored. YAML is read with `yaml.safe_load` only.
"""

from __future__ import annotations

import difflib
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
    create_model,
)

from tempo_lens.errors import TempoError

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}"


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
    "next_from": ["mixture"],  # mixture, last and/or first (docs/design.md selection rule)
    "max_parallel": None,  # cap on set size (None = no cap)
    "stop_at_eos": True,  # stop after a step whose top member is EOS
    "seed": 42,  # seed of every resampling (bootstrap, permutation tests)
    "bootstrap": 2000,  # bootstrap resamples behind each 95% CI
    "permutations": 10000,  # sign-flip resamples of the paired test (exact when n <= 14)
}


def _nearest(key: str, valid: list[str]) -> str:
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean {near[0]!r}?" if near else f"; valid keys: {', '.join(valid)}"


LIST_KEYS = ("thresholds", "modes", "next_from", "prompts", "categories")

PositiveInt = Annotated[StrictInt, Field(ge=1)]
Count = Annotated[StrictInt, Field(ge=0, le=10_000_000)]
Threshold = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]
Text = Annotated[StrictStr, Field(min_length=1)]


class CommonKeys(BaseModel):
    """The common keys of every experiment config, typed and bounded (see `COMMON`)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: Annotated[StrictStr, Field(pattern=f"^{NAME_PATTERN}$")]
    kind: StrictStr
    description: StrictStr = ""
    model: Text | None = None
    prompts: list[Text] | None = Field(default=None, min_length=1)
    prompt_suite: Text | None = None
    categories: list[Text] | None = Field(default=None, min_length=1)
    max_prompts: PositiveInt | None = None
    thresholds: list[Threshold] = Field(default=[0.1], min_length=1)
    max_steps: Annotated[StrictInt, Field(ge=1, le=100_000)] = 15
    modes: list[Literal["isolated", "visible"]] = Field(default=list(MODES), min_length=1)
    next_from: list[Literal["mixture", "last", "first"]] = Field(default=["mixture"], min_length=1)
    max_parallel: PositiveInt | None = None
    stop_at_eos: StrictBool = True
    seed: Count = 42
    bootstrap: Annotated[StrictInt, Field(ge=1, le=10_000_000)] = 2000
    permutations: Annotated[StrictInt, Field(ge=1, le=10_000_000)] = 10000


class PromptSuite(RootModel[dict[Text, list[Text]]]):
    """A prompt-suite file: `{category: [prompt, ...]}`."""


def _kind_field(default: Any) -> Any:
    """The type of a kind's own key, from its declared default: integers are counts
    (>= 0), floats finite and >= 0, lists of those, None an optional positive number."""
    if default is REQUIRED:
        return (Any, ...)
    if isinstance(default, bool):
        return (StrictBool, default)
    if isinstance(default, int):
        return (Count, default)
    if isinstance(default, float):
        return (Annotated[float, Field(ge=0, allow_inf_nan=False)], default)
    if isinstance(default, list) and default and all(isinstance(x, str) for x in default):
        return (list[StrictStr], default)
    if isinstance(default, list) and any(isinstance(x, dict) for x in default):
        return (list[dict[str, Any]], default)  # checked by the kind (e.g. a schedule spec)
    if isinstance(default, list):
        item = Count if all(isinstance(x, int) for x in default) else float
        return (list[Annotated[item, Field(ge=0, allow_inf_nan=False)]], default)  # type: ignore[valid-type]
    if isinstance(default, str):
        return (StrictStr, default)
    if default is None:
        return (Annotated[float, Field(gt=0, allow_inf_nan=False)] | None, None)
    return (Any, default)


def _kind_model(kind: str, schema: dict[str, Any]) -> type[BaseModel]:
    fields = {key: _kind_field(default) for key, default in schema.items()}
    return create_model(  # type: ignore[call-overload]
        f"{kind}_keys", __config__=ConfigDict(extra="ignore", strict=True), **fields
    )


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
    from tempo_lens.analysis.experiment import kinds

    if not isinstance(raw, dict):
        raise TempoError("an experiment config is a YAML mapping of keys (name:, kind:, ...)")
    registered = kinds()
    kind = raw.get("kind")
    if kind is None:
        raise TempoError(f"the config needs a 'kind:' key, one of {', '.join(sorted(registered))}")
    if not isinstance(kind, str) or kind not in registered:
        raise TempoError(f"unknown kind {kind!r}{_nearest(str(kind), sorted(registered))}")
    schema = getattr(registered[kind], "schema", {}) or {}
    valid = sorted(set(COMMON) | set(schema))
    for key in raw:
        if key not in valid:
            raise TempoError(f"unknown config key {key!r}{_nearest(str(key), valid)}")
    listed = {
        k: ([v] if k in LIST_KEYS and v is not None and not isinstance(v, list) else v)
        for k, v in raw.items()
    }
    common_raw = {k: v for k, v in listed.items() if k in COMMON}
    try:
        common = CommonKeys.model_validate(common_raw).model_dump()
        own = _kind_model(kind, schema).model_validate(listed).model_dump()
    except ValidationError as err:
        raise TempoError(_problem(err, listed)) from None
    out: dict[str, Any] = {**common, **own}
    _check_values(out)
    out["prompts"] = _prompts(out, base_dir or Path.cwd())
    return out


def _check_values(c: dict[str, Any]) -> None:
    if (c["prompts"] is None) == (c["prompt_suite"] is None):
        raise TempoError("give exactly one of 'prompts:' (a list) or 'prompt_suite:' (a file)")
    if c["categories"] is not None and c["prompt_suite"] is None:
        raise TempoError("categories: selects from a prompt_suite; give 'prompt_suite:' too")


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
        items = items[: c["max_prompts"]]
    if not items or any(not text.strip() for _, text in items):
        raise TempoError("the config's prompts are empty; give at least one non-empty prompt")
    for _, text in items:
        _check_text(text)
    return [
        {"id": f"p{i:03d}", "category": cat, "text": text} for i, (cat, text) in enumerate(items)
    ]


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
