"""The passcode task interface: what a passcode experiment needs from a task, and the toy implementation.

A passcode task places a random passcode (``n_digits`` digits, 0..9 each) into one block (``target_block``)
of a sequence with block mementos, and tells the experiment where everything is. The experiment
(:mod:`.sweep`) only talks to a task through :class:`PasscodeTask`; it never asks which task it has.

Contract for an implementation (the real-trace one lives in :mod:`.real`, see :class:`TracePasscodeTask`):

* ``samples(n, seed) -> PasscodeSamples``: ``token_ids [n, T]`` int64 with the passcode placed (every row
  has the same layout and length ``T``: only the passcode's own tokens differ, or for the toy the block digits)
  and ``labels [n, n_digits]`` int64, the passcode digits, most significant first. Deterministic in ``seed``.
  Samples that cannot be built are dropped and counted in ``skipped`` / ``skip_reasons``, never changed.
* ``worlds -> tuple[str, ...]``: the worlds this task supports, always ``normal`` and ``restart`` first, then
  any of :data:`REFERENCE_WORLDS` it can build. A *world* is a (tokens, visibility) pair over the *same samples
  and labels*; the probe reads memento K/V of the world's replay and predicts the normal sample's passcode.
* ``world_tokens(samples, world, seed) -> [n, T] int64``: the token ids replayed in ``world`` (default: the
  samples' own tokens). Deterministic in ``seed`` (its own random stream, never the samples' or the split's).
* ``visibility(world, device) -> [T, T] bool`` (query row attends to key column) for every ``world`` in
  ``worlds``:

  ``"normal"``: the block-masking schedule the model runs under (keep 0: a memento sees its own block while
  it is written, later tokens do not). ``"restart"``: the paper's restart mode, every memento recomputed
  without its block, so memento K/V carry only what the memento *text* (and earlier memento text) says.
  Both come from :func:`memento_lens.runtime.schedule.compute_schedule`, never hand-built.

  On-distribution references (:data:`REFERENCE_WORLDS`; the normal mask unless said otherwise):
  ``"same_sum"``: the target block replaced by another block with the same memento text (toy: same digit
  sum; a passcode segment, which no memento summarises, redrawn), so only what the text says survives.
  ``"foreign"``: another passcode (uniform, independent of the label) in the target block, everything else
  the same. ``"delimiter_hidden"``: normal tokens and memento attention, but the target block's kept
  delimiters (visible after eviction in Qwen3-style masking) hidden from every token after the target's
  memento (:func:`hide_delimiters` from the first position after its ``<|summary_end|>``), so a later memento
  can learn about the block only through the target memento's K/V.
* ``memento_positions(memento_block) -> [n_positions]``: the positions whose K/V are the probe's features.
* ``text_positions(memento_block) -> [n_text]``: positions whose token *identities* make up the text channel
  of that memento: every non-block token it can see in the restart world that can vary with the sample
  (for the toy: the digits of mementos ``0 .. memento_block``). The text-only probe reads one-hot
  identities of these tokens.
* ``text_ceiling(condition) -> float | None``: the exact Bayes accuracy (mean over digits) of predicting the
  passcode from the text channel of ``condition``'s memento, where the label distribution makes it
  computable; ``None`` otherwise. Never estimated by a probe.
* ``n_blocks``, ``target_block``, ``n_digits``, ``chance`` (``1 / 10``), ``name``, ``info`` (JSON-safe).
* ``shared_prefix_len`` (default 0): leading positions whose tokens are the same in every sample; feature
  extraction computes their K/V once and forwards each batch only from there on.
* ``conditions(distances, conditions)`` is shared (:func:`.features.passcode_conditions`): direct = memento of
  the target block, masked +k = memento of ``target + k``, causal control = memento of ``target - 1``.

Positions are 0-based token indices into ``token_ids``; blocks are 0-based (the paper's T2 is block 1).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .features import CONDITIONS, Condition, ProbeInputError, Skip, passcode_conditions

WORLDS = ("normal", "restart")  # every task supports these
REFERENCE_WORLDS = ("same_sum", "foreign", "delimiter_hidden")  # on-distribution references, where a task can
ALL_WORLDS = WORLDS + REFERENCE_WORLDS
N_CLASSES = 10


def hide_delimiters(
    visible: torch.Tensor, delimiter_positions: Sequence[int] | np.ndarray, from_position: int
) -> torch.Tensor:
    """``visible [T, T]`` (or ``[..., T, T]``) with key columns ``delimiter_positions`` hidden from query rows
    ``>= from_position``; a new tensor (the input is not modified).

    The delimiter-hidden world: the target block's kept delimiters (``<|block_start|>``/``<|block_end|>`` stay
    visible after eviction when ``mask_delimiters=False``) are taken away from every later token, so whatever a
    later memento knows about the block reaches it through the target memento's K/V alone.
    """
    pos = torch.as_tensor(np.asarray(delimiter_positions, dtype=np.int64), device=visible.device)
    t = visible.shape[-1]
    if pos.numel() and (int(pos.min()) < 0 or int(pos.max()) >= t):
        raise ValueError(f"delimiter positions {pos.tolist()} outside a {t}-token mask")
    if not 0 <= from_position <= t:
        raise ValueError(f"from_position {from_position} outside a {t}-token mask")
    if pos.numel() and int(pos.max()) >= from_position:
        raise ValueError(f"delimiters {pos.tolist()} must precede from_position {from_position}")
    out = visible.clone()
    out[..., from_position:, pos] = False
    return out


@dataclass
class PasscodeSamples:
    """``token_ids [n, T]`` and ``labels [n, n_digits]`` of the kept samples, plus how many were skipped and why."""

    token_ids: np.ndarray
    labels: np.ndarray
    skipped: int = 0
    skip_reasons: dict[str, int] = field(default_factory=dict)


class PasscodeTask(ABC):
    """A passcode task (see the module docstring for the contract)."""

    name: str = "task"
    n_digits: int = 5
    chance: float = 1.0 / N_CLASSES

    @property
    @abstractmethod
    def n_blocks(self) -> int:
        """Blocks with a complete memento."""

    @property
    @abstractmethod
    def target_block(self) -> int:
        """0-based block holding the passcode."""

    @abstractmethod
    def samples(self, n: int, seed: int) -> PasscodeSamples: ...

    @property
    def worlds(self) -> tuple[str, ...]:
        """Worlds this task supports (``normal``, ``restart``, then any of :data:`REFERENCE_WORLDS`)."""
        return WORLDS

    def world_tokens(self, samples: PasscodeSamples, world: str, seed: int) -> np.ndarray:
        """``[n, T]`` token ids replayed in ``world`` (default: the samples' own tokens)."""
        self.check_world(world)
        return np.asarray(samples.token_ids)

    @abstractmethod
    def visibility(self, world: str, device: torch.device | str | None = None) -> torch.Tensor:
        """``[T, T]`` bool for every world in :attr:`worlds` (see the module docstring)."""

    @abstractmethod
    def memento_positions(self, memento_block: int) -> np.ndarray: ...

    @abstractmethod
    def text_positions(self, memento_block: int) -> np.ndarray: ...

    def text_ceiling(self, condition: Condition) -> float | None:
        return None

    @property
    def shared_prefix_len(self) -> int:
        return 0

    @property
    def info(self) -> dict[str, Any]:
        return {"task": self.name, "target_block": self.target_block, "n_blocks": self.n_blocks}

    def conditions(
        self, distances: Iterable[int] = range(1, 8), conditions: Sequence[str] = CONDITIONS
    ) -> tuple[list[Condition], list[Skip]]:
        return passcode_conditions(self.target_block, self.n_blocks, distances, conditions)

    def check_world(self, world: str) -> None:
        if world not in self.worlds:
            extra = f" (this task cannot build {world!r})" if world in ALL_WORLDS else ""
            raise ProbeInputError(f"world {world!r}{extra}: choose from {', '.join(self.worlds)}")


# -- exact text-channel ceiling for digit sums ------------------------------------------------------------------
@lru_cache(maxsize=None)
def digit_sum_ceiling(n_digits: int, n_classes: int = N_CLASSES) -> float:
    """Bayes accuracy (mean over digit positions) of guessing each of ``n_digits`` uniform digits from their sum.

    For every sum ``s`` the best guess of one digit is its most frequent value among the ``n_classes ** n_digits``
    passcodes with that sum; the ceiling is ``sum_s max_v count(s, digit = v) / n_classes ** n_digits`` (the
    digits are exchangeable, so every position has the same ceiling). 5 digits: 0.1600 (exact enumeration).
    """
    # count[s, v]: passcodes with digit sum s whose first digit is v (the rest sum to s - v).
    rest = np.zeros(1, dtype=np.int64)
    rest[0] = 1
    for _ in range(n_digits - 1):  # distribution of the sum of the other n_digits - 1 digits
        nxt = np.zeros(len(rest) + n_classes - 1, dtype=np.int64)
        for v in range(n_classes):
            nxt[v : v + len(rest)] += rest
        rest = nxt
    max_sum = (n_classes - 1) * n_digits
    count = np.zeros((max_sum + 1, n_classes), dtype=np.int64)
    for v in range(n_classes):
        count[v : v + len(rest), v] += rest
    return float(count.max(axis=1).sum() / n_classes**n_digits)


@lru_cache(maxsize=4)
def _tuples_by_sum(width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every ``width``-digit tuple sorted by digit sum: ``(tuples [10**width, width], start [S+1], count [S+1])``."""
    all_t = (np.arange(N_CLASSES**width)[:, None] // N_CLASSES ** np.arange(width - 1, -1, -1)) % N_CLASSES
    sums = all_t.sum(1)
    order = np.argsort(sums, kind="stable")
    count = np.bincount(sums, minlength=(N_CLASSES - 1) * width + 1)
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    return all_t[order], start, count


def same_sum_tuples(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``[n, width]`` digits -> digits drawn uniformly among the *other* tuples with the same digit sum (the tuple
    itself only when it is the only one: sums 0 and 9 * width)."""
    digits = np.asarray(digits, dtype=np.int64)
    width = digits.shape[1]
    if width > 6:
        raise ValueError(f"same-sum resampling enumerates 10**width tuples; width {width} is too large")
    tuples, start, count = _tuples_by_sum(width)
    s = digits.sum(1)
    c = count[s]
    # rank of the sample's own tuple within its sum group, then a uniform draw among the c - 1 others
    keys = digits @ (N_CLASSES ** np.arange(width - 1, -1, -1))
    tuple_keys = tuples @ (N_CLASSES ** np.arange(width - 1, -1, -1))
    rank = np.empty(len(tuple_keys), dtype=np.int64)
    rank[tuple_keys] = np.arange(len(tuple_keys)) - start[tuples.sum(1)]
    own_rank = rank[keys]
    draw = np.floor(rng.random(len(s)) * np.maximum(c - 1, 1)).astype(np.int64)
    draw = np.where(c > 1, draw + (draw >= own_rank), own_rank)  # skip the own tuple
    return tuples[start[s] + draw]


# -- the toy -------------------------------------------------------------------------------------------------
@dataclass
class ToyPasscodeTask(PasscodeTask):
    """The toy running-sum task: the passcode is the digits of ``target`` (uniform random, as every block's).

    ``positions``: ``span`` reads ``<|summary_start|>`` .. ``<|summary_end|>`` of a memento, ``digits`` only its
    digits. The text channel of memento ``m`` is the digits of mementos ``0..m`` (the running sums ``S_0..S_m``):
    from them the target block's digit sum ``S_t - S_{t-1}`` is exact once ``m >= t``, and nothing about the
    target once ``m < t`` (later blocks are independent of it).
    """

    layout: Any = None
    target: int = 1
    positions: str = "span"
    name: str = "toy"

    def __post_init__(self):
        from memento_lens.runtime.toy.task import ToyLayout

        self.layout = self.layout or ToyLayout()
        if not 0 <= self.target < self.layout.n_blocks:
            raise ProbeInputError(f"--target-block {self.target} outside the toy's {self.layout.n_blocks} blocks")
        if self.positions not in ("span", "digits"):
            raise ProbeInputError(f"--positions must be 'span' or 'digits', got {self.positions!r}")
        self.n_digits = self.layout.passcode_digits or self.layout.block_digits  # toy-channel: the unsummed segment
        self._vis: dict[str, torch.Tensor] = {}

    @property
    def n_blocks(self) -> int:
        return self.layout.n_blocks

    @property
    def target_block(self) -> int:
        return self.target

    def samples(self, n: int, seed: int) -> PasscodeSamples:
        from memento_lens.runtime.toy.task import passcode_labels, sample

        batch = sample(n, np.random.default_rng(seed), self.layout)
        return PasscodeSamples(batch.token_ids, passcode_labels(batch, self.target))

    @property
    def worlds(self) -> tuple[str, ...]:
        return ALL_WORLDS

    def _passcode_positions(self) -> np.ndarray:
        lay = self.layout
        return lay.passcode(self.target) if lay.passcode_digits else lay.block_content(self.target)

    def world_tokens(self, samples: PasscodeSamples, world: str, seed: int) -> np.ndarray:
        """``same_sum``: the target block's summed digits redrawn uniformly among the tuples with the same digit
        sum (the exact conditional given the memento text; another tuple whenever one exists) and its passcode
        segment, if any, redrawn uniformly. ``foreign``: the passcode positions (the segment, or for the plain toy
        the block digits) redrawn uniformly; every memento keeps its text. Other worlds: the samples' tokens."""
        from memento_lens.runtime.toy.task import DIGIT0

        self.check_world(world)
        ids = np.array(samples.token_ids, dtype=np.int64, copy=True)
        if world not in ("same_sum", "foreign"):
            return ids
        lay, n = self.layout, len(ids)
        rng = np.random.default_rng([int(seed), ALL_WORLDS.index(world), 0x5A5E])  # the world's own stream
        if world == "foreign":
            pos = self._passcode_positions()
            ids[:, pos] = DIGIT0 + rng.integers(0, N_CLASSES, size=(n, len(pos)))
            return ids
        content = lay.block_content(self.target)
        digits = ids[:, content] - DIGIT0
        ids[:, content] = DIGIT0 + same_sum_tuples(digits, rng)
        if lay.passcode_digits:
            seg = lay.passcode(self.target)
            ids[:, seg] = DIGIT0 + rng.integers(0, N_CLASSES, size=(n, len(seg)))
        return ids

    def visibility(self, world: str, device: torch.device | str | None = None) -> torch.Tensor:
        self.check_world(world)
        if world not in self._vis:
            if world == "delimiter_hidden":
                lay = self.layout
                delims = [lay.block_start(self.target), lay.block_end(self.target)]
                self._vis[world] = hide_delimiters(self.visibility("normal"), delims, lay.summary_end(self.target) + 1)
            elif world != "restart" and world != "normal":
                self._vis[world] = self.visibility("normal")
            else:
                from memento_lens.runtime.config import world_config
                from memento_lens.runtime.masks import visibility_mask
                from memento_lens.runtime.schedule import compute_schedule
                from memento_lens.runtime.toy.task import TOY_MASKING, TOY_TOKENS, sample

                config = TOY_TOKENS.resolve_config(world_config(TOY_MASKING, world))
                ids = sample(1, 0, self.layout).token_ids[0]
                self._vis[world] = visibility_mask(compute_schedule(ids.tolist(), config, TOY_TOKENS, prompt_len=1))
        return self._vis[world].to(device) if device is not None else self._vis[world]

    def memento_positions(self, memento_block: int) -> np.ndarray:
        lay = self.layout
        return lay.memento_span(memento_block) if self.positions == "span" else lay.memento(memento_block)

    def text_positions(self, memento_block: int) -> np.ndarray:
        return np.concatenate([self.layout.memento(b) for b in range(memento_block + 1)])

    def text_ceiling(self, condition: Condition) -> float | None:
        if condition.memento_block < self.target or self.layout.passcode_digits:  # segment: text is independent
            return self.chance
        return digit_sum_ceiling(self.n_digits)

    @property
    def info(self) -> dict[str, Any]:
        return {
            **super().info,
            "passcode": f"digits of block {self.target} (0-based)",
            "positions": self.positions,
            "text_channel": "digits of mementos 0..m (running sums)",
        }


# The real-trace implementation, TracePasscodeTask, lives in .real (owner: realmodels).
