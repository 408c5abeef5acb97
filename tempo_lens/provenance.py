"""Where a run came from: what a reader needs to trust (or redo) it.

Every `TempoRun` made by `generate` carries a `Provenance`: the user's forward hooks
described (hook point and the function's qualified name: code cannot be saved, but it can
be named), an optional label, the package versions, the model's name, weight processing and
a hash of its weights. The generation settings themselves are the run's `config`.

A run with forward hooks cannot be replayed faithfully from disk (the hooks are not
there): `Provenance.replayable` says so, and the report says it at the top.
"""

from __future__ import annotations

import functools
import hashlib
import platform
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

from pydantic import BaseModel, ConfigDict

PACKAGES = ("tempo_lens", "transformer_lens", "torch", "transformers")


class HookDescription(BaseModel):
    """One forward hook: the hook point (or filter) and the function's qualified name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hook: str
    function: str


class Provenance(BaseModel):
    """What made a run, beyond its generation settings (`TempoRun.config`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    label: str | None = None
    fwd_hooks: list[HookDescription] = []
    model_name: str
    weight_hash: str
    weight_processing: dict[str, bool] = {}
    versions: dict[str, str] = {}

    @property
    def replayable(self) -> bool:
        """False when the run had forward hooks: a replay from disk runs without them."""
        return not self.fwd_hooks

    def summary(self) -> str:
        """One line: label, hooks, model and hash."""
        hooks = ", ".join(f"{h.hook} <- {h.function}" for h in self.fwd_hooks) or "none"
        label = f"{self.label!r}; " if self.label else ""
        return f"{label}fwd_hooks: {hooks}; model {self.model_name} ({self.weight_hash})"


def qualified_name(fn: Any) -> str:
    """`module.qualname` of a callable; partials and callable objects named by what they
    wrap (`functools.partial(mod.f, k=1)`, `mod.Class instance`)."""
    if isinstance(fn, functools.partial):
        args = [repr(a) for a in fn.args] + [f"{k}={v!r}" for k, v in fn.keywords.items()]
        inner = ", ".join([qualified_name(fn.func), *args])
        return f"functools.partial({inner})"
    name = getattr(fn, "__qualname__", None)
    if name is None:
        cls = type(fn)
        return f"{cls.__module__}.{cls.__qualname__} instance"
    module = getattr(fn, "__module__", None)
    return f"{module}.{name}" if module else name


def describe_hooks(fwd_hooks: Sequence[tuple[Any, Callable[..., Any]]]) -> list[HookDescription]:
    """`(name or filter, function)` pairs as plain descriptions."""
    out = []
    for point, fn in fwd_hooks:
        hook = point if isinstance(point, str) else f"filter {qualified_name(point)}"
        out.append(HookDescription(hook=hook, function=qualified_name(fn)))
    return out


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def weight_hash(model: Any) -> str:
    """`blake2b:` + 16 hex digits over every parameter's name, dtype, shape and bytes.

    Remembered on the model until a parameter changes (in place or replaced), so a
    second run of the same model does not hash again."""
    import torch

    params = list(model.named_parameters())
    key = tuple((n, p.data_ptr(), p._version, p.dtype) for n, p in params)
    memo = getattr(model, "_tempo_lens_weight_hash", None)
    if memo is not None and memo[0] == key:
        return memo[1]
    h = hashlib.blake2b(digest_size=8)
    with torch.no_grad():
        for name, p in params:
            h.update(f"{name}:{p.dtype}:{tuple(p.shape)};".encode())
            h.update(p.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy().tobytes())
    digest = "blake2b:" + h.hexdigest()
    model._tempo_lens_weight_hash = (key, digest)
    return digest


def describe_run(
    model: Any, fwd_hooks: Sequence[tuple[Any, Callable[..., Any]]] = (), label: str | None = None
) -> Provenance:
    """The provenance of a run `generate` is about to make on `model`."""
    from tempo_lens.loading import weight_processing

    return Provenance(
        label=label,
        fwd_hooks=describe_hooks(fwd_hooks),
        model_name=model.cfg.model_name,
        weight_hash=weight_hash(model),
        weight_processing=weight_processing(model).to_dict(),
        versions=versions(),
    )
