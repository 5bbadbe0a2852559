"""Teacher-forced task accuracy of a toy model under vanilla, memento and restart attention.

Every memento digit is predicted from the logits at the position before it (teacher forcing). A memento is
exactly right when all its digits are.

Attention modes (all masks come from :func:`runtime.masks.visibility_mask` of the runtime's schedule):

* ``vanilla``: plain causal attention (``keep_last_n_blocks=-1``);
* ``memento``: the toy's masking (keep 0, delimiters stay), one mask for every toy sequence;
* ``restart``: the schedule with ``restart_mode=True``: every earlier memento's KV is recomputed without
  its block (block and delimiters evicted). Memento b itself is still *generated* with block b visible, as
  in the paper's restart ablation, so its digits are read from a forward pass whose mask lets memento b's
  rows see block b (one pass per block, truncated after memento b).
* ``foreign``: the control for the restart ablation. Memento attention (keep 0), but every earlier block's
  digits are replaced by those of another sequence of the batch (the next one, cyclically), so each earlier
  memento's KV was computed with *a* block visible, as in training, but the wrong one; the memento text is
  unchanged (the true running sums) and block b itself is true (one pass per block). If the restart drop
  were the shift to KV computed without any block, ``foreign`` would stay near ``memento``; if later
  mementos read the block's content from earlier mementos' KV, ``foreign`` falls as well.
* ``samesum``: as ``foreign``, but every earlier block is replaced by another block of the batch with the
  *same digit sum* (its passcode segment, if any, comes along): the KV were computed with a real block
  visible, as in training, and everything the memento text says (the running sums) stays true; only what the
  text does not say changes. ``samesum`` near ``memento`` means later mementos need nothing about a block
  beyond its text, and the restart drop measures the shift to KV computed without any block.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from ..config import KEEP_ALL, BlockMaskingConfig, world_config
from ..masks import additive_mask, visibility_mask
from ..schedule import compute_schedule
from .task import TOY_MASKING, TOY_TOKENS, ToyBatch, ToyLayout, layout_of, sample

MODES = ("vanilla", "memento", "restart")
CONTROL_MODES = ("foreign", "samesum")  # scored on request (``toy eval --foreign``), not by default
EVAL_SEED = 20260401  # held-out sequences; training draws from TrainConfig.seed


def mode_config(mode: str) -> BlockMaskingConfig:
    """The masking config of an attention mode."""
    if mode == "vanilla":
        return dataclasses.replace(TOY_MASKING, keep_last_n_blocks=KEEP_ALL)
    if mode == "memento":
        return TOY_MASKING
    if mode == "restart":
        return world_config(TOY_MASKING, "restart")
    if mode in CONTROL_MODES:
        return TOY_MASKING
    raise ValueError(f"unknown attention mode {mode!r}; choose one of {', '.join(MODES + CONTROL_MODES)}")


def toy_visibility(
    mode: str, layout: ToyLayout = ToyLayout(), device: torch.device | str | None = None
) -> torch.Tensor:
    """``[length, length]`` bool: the runtime's visibility for every toy sequence of ``layout`` under ``mode``.

    The toy's structure is fixed, so one schedule (of any sequence) serves all of them.
    """
    ids = sample(1, 0, layout).token_ids[0]
    return visibility_mask(compute_schedule(ids, mode_config(mode), TOY_TOKENS), device=device)


def restart_generation_visibility(
    block: int, layout: ToyLayout = ToyLayout(), device: torch.device | str | None = None
) -> torch.Tensor:
    """``[length, length]`` bool for reading memento ``block``'s digits under restart attention.

    Earlier mementos carry their restart KV (computed without their blocks); memento ``block``'s own rows
    still see its block, as when it was generated. Rows after memento ``block`` are not meaningful.
    """
    vis = toy_visibility("restart", layout, device=device)
    rows = slice(layout.summary_start(block), layout.summary_end(block) + 1)
    cols = slice(layout.block_start(block), layout.block_end(block) + 1)
    vis[rows, cols] = True
    return vis


def block_token_positions(block: int, layout: ToyLayout) -> np.ndarray:
    """Positions of a block's content tokens (summed digits, then its passcode segment if any)."""
    return np.concatenate([layout.block_content(block), layout.passcode(block)])


def foreign_block_inputs(ids: torch.Tensor, donor: torch.Tensor, block: int, layout: ToyLayout) -> torch.Tensor:
    """``ids`` with the content of every block before ``block`` taken from ``donor`` (same shape); memento
    text, delimiters and blocks ``>= block`` unchanged."""
    out = ids.clone()
    if block > 0:
        earlier = np.concatenate([block_token_positions(b, layout) for b in range(block)])
        out[:, earlier] = donor[:, earlier]
    return out


def same_sum_donors(batch: ToyBatch, seed: int = 0) -> np.ndarray:
    """``[n, length]`` token ids whose every block is another block of the batch with the same digit sum
    (a different block whenever the batch holds one; passcode segments travel with their block)."""
    layout = batch.layout
    ids = batch.token_ids
    n, nb = ids.shape[0], layout.n_blocks
    sums = batch.digits.sum(axis=2).ravel()  # [n * nb], block-major per sequence
    rng = np.random.default_rng(seed)
    donor_of = np.arange(n * nb)
    for s in np.unique(sums):
        members = np.flatnonzero(sums == s)
        if len(members) > 1:  # a cyclic shift of a random order: nobody keeps its own block
            order = rng.permutation(members)
            donor_of[order] = np.roll(order, 1)
    out = ids.copy()
    for b in range(nb):
        pos = block_token_positions(b, layout)
        src = donor_of[np.arange(n) * nb + b]
        out[:, pos] = np.stack([ids[i // nb, block_token_positions(i % nb, layout)] for i in src])
    return out


@dataclass
class TaskAccuracy:
    """Accuracy on memento digits.

    Attributes:
        exact: fraction of mementos with every digit right.
        digit: fraction of memento digits right.
        n: number of sequences.
        per_block_exact: ``[n_blocks]`` exact-match rate per block.
    """

    exact: float
    digit: float
    n: int
    per_block_exact: list[float]

    def to_dict(self) -> dict:
        return {"exact": self.exact, "digit": self.digit}


def _batches(n: int, batch_size: int) -> Iterator[slice]:
    for s in range(0, n, batch_size):
        yield slice(s, min(n, s + batch_size))


@torch.inference_mode()
def _predict(model: torch.nn.Module, ids: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """``[b, t]`` argmax next-token predictions under a ``[t, t]`` visibility."""
    dtype = next(model.parameters()).dtype
    mask = additive_mask(visible, dtype=dtype).expand(ids.shape[0], -1, -1, -1)
    out = model(input_ids=ids, attention_mask=mask, use_cache=False)
    return out.logits.argmax(-1)


def predicted_mementos(
    model: torch.nn.Module,
    batch: ToyBatch,
    mode: str,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """``[n, n_blocks, memento_digits]`` teacher-forced predictions of the memento digit tokens."""
    layout = batch.layout
    device = device if device is not None else next(model.parameters()).device
    pos = layout.all_memento_digits()  # [n_blocks, m]
    out = np.zeros((batch.token_ids.shape[0], *pos.shape), dtype=np.int64)
    ids_all = torch.from_numpy(batch.token_ids)
    if mode == "restart":
        masks = [restart_generation_visibility(b, layout, device=device) for b in range(layout.n_blocks)]
    else:
        full = toy_visibility(mode, layout, device=device)
    if mode in CONTROL_MODES:
        if len(ids_all) < 2:
            raise ValueError("the foreign-block control needs at least 2 sequences (blocks come from another one)")
        foreign = torch.roll(ids_all, 1, dims=0) if mode == "foreign" else torch.from_numpy(same_sum_donors(batch))
    for sl in _batches(len(ids_all), batch_size):
        ids = ids_all[sl].to(device)
        if mode in CONTROL_MODES:
            donor = foreign[sl].to(device)
            for b in range(layout.n_blocks):
                t = layout.summary_end(b) + 1
                mixed = foreign_block_inputs(ids[:, :t], donor[:, :t], b, layout)
                pred = _predict(model, mixed, full[:t, :t]).cpu().numpy()
                out[sl, b] = pred[:, pos[b] - 1]
        elif mode == "restart":
            for b in range(layout.n_blocks):
                t = layout.summary_end(b) + 1
                pred = _predict(model, ids[:, :t], masks[b][:t, :t]).cpu().numpy()
                out[sl, b] = pred[:, pos[b] - 1]
        else:
            pred = _predict(model, ids, full).cpu().numpy()
            out[sl] = pred[:, pos - 1]
    return out


def task_accuracy(
    model: torch.nn.Module,
    batch: ToyBatch,
    mode: str,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> TaskAccuracy:
    """Teacher-forced memento accuracy of ``model`` on ``batch`` under attention ``mode``."""
    mode_config(mode)  # validates the name
    pred = predicted_mementos(model, batch, mode, batch_size=batch_size, device=device)
    target = batch.token_ids[:, batch.layout.all_memento_digits()]
    right = pred == target  # [n, n_blocks, m]
    exact = right.all(axis=2)
    return TaskAccuracy(
        exact=float(exact.mean()),
        digit=float(right.mean()),
        n=int(batch.token_ids.shape[0]),
        per_block_exact=[float(x) for x in exact.mean(axis=0)],
    )


def evaluate_all(
    model: torch.nn.Module,
    n: int = 1000,
    *,
    seed: int = EVAL_SEED,
    modes=MODES,
    layout: ToyLayout | None = None,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> dict[str, TaskAccuracy]:
    """Accuracy under each mode on ``n`` held-out sequences drawn with ``seed`` (layout: the model's own)."""
    batch = sample(n, seed, layout if layout is not None else layout_of(model))
    was_training = model.training
    model.eval()
    try:
        return {m: task_accuracy(model, batch, m, batch_size=batch_size, device=device) for m in modes}
    finally:
        model.train(was_training)
