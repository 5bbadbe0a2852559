"""The passcode task interface: what a passcode experiment needs from a task, and the toy implementation.

A passcode task places a random passcode (``n_digits`` digits, 0..9 each) into one block (``target_block``)
of a sequence with block mementos, and tells the experiment where everything is. The experiment
(:mod:`.sweep`) only talks to a task through :class:`PasscodeTask`; it never asks which task it has.

Contract for an implementation (the real-trace one lives in :mod:`.real`, see :class:`TracePasscodeTask`):

* ``samples(n, seed) -> PasscodeSamples``: ``token_ids [n, T]`` int64 with the passcode placed (every row
  has the same layout and length ``T``: only the passcode's own tokens differ, or for the toy the block digits)
  and ``labels [n, n_digits]`` int64, the passcode digits, most significant first. Deterministic in ``seed``.
  Samples that cannot be built are dropped and counted in ``skipped`` / ``skip_reasons``, never changed.
* ``visibility(world) -> [T, T] bool`` (query row attends to key column) for ``world`` in :data:`WORLDS`:
  ``"normal"``: the block-masking schedule the model runs under (keep 0: a memento sees its own block while
  it is written, later tokens do not). ``"restart"``: the paper's restart mode, every memento recomputed
  without its block, so memento K/V carry only what the memento *text* (and earlier memento text) says.
  Both come from :func:`memento_lens.runtime.schedule.compute_schedule`, never hand-built.
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

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .features import CONDITIONS, Condition, ProbeInputError, Skip, passcode_conditions

WORLDS = ("normal", "restart")
N_CLASSES = 10


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

    @abstractmethod
    def visibility(self, world: str, device: torch.device | str | None = None) -> torch.Tensor: ...

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
        if world not in WORLDS:
            raise ProbeInputError(f"world {world!r}: choose from {', '.join(WORLDS)}")


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

    def visibility(self, world: str, device: torch.device | str | None = None) -> torch.Tensor:
        self.check_world(world)
        if world not in self._vis:
            from memento_lens.runtime.masks import visibility_mask
            from memento_lens.runtime.schedule import compute_schedule
            from memento_lens.runtime.toy.task import TOY_MASKING, TOY_TOKENS, sample

            config = TOY_TOKENS.resolve_config(dataclasses.replace(TOY_MASKING, restart_mode=world == "restart"))
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
