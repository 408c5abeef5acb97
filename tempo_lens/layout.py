"""The Layout: every token in physical order, its logical position and its set.

A generation, a teacher-forced replay and an ablation all run the same thing. Visibility
is causal over physical order, minus (when isolated) every pair of distinct tokens that
share a `step >= 0`. Positions are free: shared positions, offsets, gaps and fractional
positions (rotary only) are all just values in `positions`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Float, Int

from tempo_lens.errors import TempoError


@dataclass(frozen=True)
class ParallelSet:
    """One logical step: the kept tokens (descending probability) at one shared position."""

    tokens: list[int]
    probs: list[float]
    position: int

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True)
class PrunedMember:
    """A member hidden by live retroactive pruning: member `member` (rank in its set) of
    step `set_step`'s set, token `token`, hidden from every query of a step after `step`
    (its attention score then: `score`)."""

    step: int
    set_step: int
    member: int
    token: int
    score: float


@dataclass
class Layout:
    """`tokens`, `positions`, `step` — three aligned 1-D tensors of length n.

    `positions` is float only for fractional-position ablations (rotary models)."""

    tokens: Int[torch.Tensor, "n_tokens"]
    positions: Int[torch.Tensor, "n_tokens"] | Float[torch.Tensor, "n_tokens"]
    step: Int[torch.Tensor, "n_tokens"]
    _same_set: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = (self.tokens, self.positions, self.step)
        if not all(isinstance(t, torch.Tensor) for t in parts):
            raise TempoError("Layout needs three 1-D tensors (tokens, positions, step)")
        n = self.tokens.shape[0] if self.tokens.ndim else -1
        if self.tokens.ndim != 1 or self.positions.shape != (n,) or self.step.shape != (n,):
            raise TempoError("Layout needs three 1-D tensors of equal length")
        if self.tokens.is_floating_point() or self.step.is_floating_point():
            raise TempoError("Layout tokens and step must be integer tensors")
        if self.positions.is_floating_point() and not bool(torch.isfinite(self.positions).all()):
            raise TempoError("Layout positions must be finite numbers (no NaN or inf)")
        if n and int(self.tokens.min()) < 0:
            raise TempoError(f"Layout token ids must be >= 0, got {int(self.tokens.min())}")

    # -- construction -----------------------------------------------------------------
    @classmethod
    def from_prompt(cls, prompt_tokens: Sequence[int] | torch.Tensor) -> Layout:
        toks = torch.as_tensor(prompt_tokens, dtype=torch.long).flatten()
        if toks.numel() == 0:
            raise TempoError("the prompt is empty; give at least one token")
        n = toks.numel()
        return cls(toks, torch.arange(n), torch.full((n,), -1, dtype=torch.long))

    @classmethod
    def from_sets(
        cls, prompt_tokens: Sequence[int] | torch.Tensor, sets: Sequence[Sequence[int]]
    ) -> Layout:
        """A TEMPO layout: prompt at 0..P-1, then set i all at position P+i."""
        layout = cls.from_prompt(prompt_tokens)
        for members in sets:
            layout = layout.append_set(members)
        return layout

    def append_set(self, members: Sequence[int], position: float | None = None) -> Layout:
        """A new Layout with `members` appended as the next step's set."""
        if len(members) == 0:
            raise TempoError("a parallel set needs at least one token")
        k = len(members)
        if position is None:
            position = self.next_position
        step = self.n_steps
        return Layout(
            torch.cat([self.tokens, torch.as_tensor(list(members), dtype=torch.long)]),
            torch.cat([self.positions, torch.full((k,), position, dtype=self.positions.dtype)]),
            torch.cat([self.step, torch.full((k,), step, dtype=torch.long)]),
        )

    # -- queries ------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_prompt(self) -> int:
        return int((self.step < 0).sum())

    @property
    def n_steps(self) -> int:
        return int(self.step.max().item()) + 1 if len(self) and self.step.max() >= 0 else 0

    @property
    def next_position(self) -> int:
        return int(self.positions.max().item()) + 1

    def set_slice(self, step: int) -> slice:
        """Physical indices of step `step`'s set (sets are contiguous)."""
        idx = (self.step == step).nonzero().flatten()
        if idx.numel() == 0:
            raise TempoError(f"layout has no step {step} (it has {self.n_steps})")
        return slice(int(idx[0]), int(idx[-1]) + 1)

    def prefix(self, n: int) -> Layout:
        """The first `n` physical tokens."""
        return Layout(self.tokens[:n], self.positions[:n], self.step[:n])

    def same_set(self) -> Bool[torch.Tensor, "n_tokens n_tokens"]:
        """`[i, j]` True where i != j belong to the same generated set (cached)."""
        if self._same_set is None:
            s = self.step
            same = (s[:, None] == s[None, :]) & (s[:, None] >= 0)
            same.fill_diagonal_(False)
            self._same_set = same
        return self._same_set

    def attention_mask(self, isolate: bool) -> Bool[torch.Tensor, "n_tokens n_tokens"]:
        """`[q, k]` True where query q may attend to key k."""
        n = len(self)
        allowed = torch.ones(n, n, dtype=torch.bool).tril()
        if isolate:
            allowed &= ~self.same_set()
        return allowed

    def to_dict(self) -> dict[str, list]:
        return {
            "tokens": self.tokens.tolist(),
            "positions": self.positions.tolist(),
            "step": self.step.tolist(),
        }


PAD_STEP = -2  # `step` value of a pad slot in a LayoutBatch


@dataclass
class LayoutBatch:
    """Several layouts on one padded physical grid `[batch, n]`.

    Row b holds layout b's tokens in physical order, with pad slots (`step == PAD_STEP`)
    wherever the batch needs them: after a shorter layout (right padding), or after a
    row's set inside a step block wider than it (generation). A pad is a hidden key: no
    query but the pad itself attends to it (`hooks.batch_hidden`), so every row computes
    exactly what its layout alone computes. Pads sit at their physical position, so they
    move nothing."""

    tokens: Int[torch.Tensor, "batch n"]
    positions: Int[torch.Tensor, "batch n"] | Float[torch.Tensor, "batch n"]
    step: Int[torch.Tensor, "batch n"]

    def __post_init__(self) -> None:
        if self.tokens.ndim != 2 or self.positions.shape != self.tokens.shape:
            raise TempoError("LayoutBatch needs three 2-D tensors of equal shape")
        if self.step.shape != self.tokens.shape:
            raise TempoError("LayoutBatch needs three 2-D tensors of equal shape")

    @classmethod
    def of(cls, layouts: Layout | LayoutBatch | Sequence[Layout]) -> LayoutBatch:
        """A batch of one Layout (broadcasts over any forward batch), or of several
        right-padded to the longest."""
        if isinstance(layouts, LayoutBatch):
            return layouts
        if isinstance(layouts, Layout):
            return cls(layouts.tokens[None], layouts.positions[None], layouts.step[None])
        layouts = list(layouts)
        if not layouts:
            raise TempoError("an empty batch of layouts; give at least one")
        n = max(len(lay) for lay in layouts)
        fractional = any(lay.positions.is_floating_point() for lay in layouts)
        dtype = torch.float64 if fractional else torch.long
        b = len(layouts)
        tokens = torch.zeros(b, n, dtype=torch.long)
        positions = torch.arange(n, dtype=dtype).repeat(b, 1)
        step = torch.full((b, n), PAD_STEP, dtype=torch.long)
        for i, lay in enumerate(layouts):
            m = len(lay)
            tokens[i, :m] = lay.tokens
            positions[i, :m] = lay.positions.to(dtype)
            step[i, :m] = lay.step
        return cls(tokens, positions, step)

    def __len__(self) -> int:
        """Physical length n (the key length of a forward over the batch)."""
        return int(self.tokens.shape[1])

    @property
    def batch_size(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def pad(self) -> Bool[torch.Tensor, "batch n"]:
        return self.step == PAD_STEP

    def real_columns(self, row: int) -> Int[torch.Tensor, "m"]:
        """Physical columns of row `row`'s own tokens."""
        return (self.step[row] != PAD_STEP).nonzero().flatten()

    def row(self, row: int) -> Layout:
        """Row `row`'s layout, pads removed."""
        cols = self.real_columns(row)
        return Layout(self.tokens[row, cols], self.positions[row, cols], self.step[row, cols])

    def append_block(
        self, members: Sequence[Sequence[int]], positions: Sequence[float], steps: Sequence[int]
    ) -> LayoutBatch:
        """Append one step block as wide as the widest row's `members`; row b's members
        first, then pads (an empty list: all pads)."""
        width = max(len(m) for m in members)
        b = self.batch_size
        tokens = torch.zeros(b, width, dtype=torch.long)
        pos = torch.arange(len(self), len(self) + width, dtype=self.positions.dtype).repeat(b, 1)
        step = torch.full((b, width), PAD_STEP, dtype=torch.long)
        for i, (m, p, s) in enumerate(zip(members, positions, steps, strict=True)):
            k = len(m)
            tokens[i, :k] = torch.as_tensor(list(m), dtype=torch.long)
            pos[i, :k] = p
            step[i, :k] = s
        return LayoutBatch(
            torch.cat([self.tokens, tokens], 1),
            torch.cat([self.positions, pos], 1),
            torch.cat([self.step, step], 1),
        )

    def select_rows(self, rows: Sequence[int]) -> LayoutBatch:
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        return LayoutBatch(self.tokens[idx], self.positions[idx], self.step[idx])

    def select_columns(self, cols: torch.Tensor) -> LayoutBatch:
        """Keep physical columns `cols`; pads keep sitting at their (new) physical place."""
        positions = self.positions[:, cols].clone()
        pad = self.step[:, cols] == PAD_STEP
        phys = torch.arange(cols.numel(), dtype=positions.dtype).expand_as(positions)
        positions[pad] = phys[pad]
        return LayoutBatch(self.tokens[:, cols], positions, self.step[:, cols])
