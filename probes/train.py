"""Fitting and scoring probes: label-unique splits, early-stopped Adam, bootstrap CIs, control task.

Pure functions over tensors; nothing here knows about models or runs.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .models import DigitProbe


# -- splits and labels -------------------------------------------------------------------------------------
def passcode_keys(labels: np.ndarray | torch.Tensor) -> np.ndarray:
    """``[n, n_digits]`` digits -> ``[n]`` int64 passcode values (most significant digit first)."""
    lab = np.asarray(labels, dtype=np.int64)
    powers = 10 ** np.arange(lab.shape[1] - 1, -1, -1, dtype=np.int64)
    return lab @ powers


def label_unique_split(
    labels: np.ndarray | torch.Tensor,
    val_frac: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices so that no passcode occurs on both sides.

    Whole passcode groups go to validation in a seeded random order until it holds ``>= val_frac`` of
    the samples. Returns sorted ``(train_idx, val_idx)``.
    """
    if not 0.0 < val_frac < 1.0:
        raise ValueError(f"val_frac must lie in (0, 1), got {val_frac}")
    keys = passcode_keys(labels)
    uniq, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    if len(uniq) < 2:
        raise ValueError("a label-unique split needs at least two distinct passcodes")
    order = np.random.default_rng(seed).permutation(len(uniq))
    target = val_frac * len(keys)
    cum = np.cumsum(counts[order])
    n_val_groups = int(np.searchsorted(cum, target) + 1)
    n_val_groups = min(max(n_val_groups, 1), len(uniq) - 1)
    is_val_group = np.zeros(len(uniq), dtype=bool)
    is_val_group[order[:n_val_groups]] = True
    is_val = is_val_group[inverse]
    return np.nonzero(~is_val)[0], np.nonzero(is_val)[0]


def control_labels(labels: np.ndarray | torch.Tensor, seed: int, n_classes: int = 10) -> np.ndarray:
    """Control task (Hewitt & Liang 2019): a fixed random relabelling of the passcode space.

    Each passcode value maps, through one seeded permutation of all ``n_classes ** n_digits`` values, to
    another passcode; the features can only explain these labels by memorising passcode identities, which
    a label-unique split makes useless, so a probe scoring above chance on them is exploiting something
    other than the passcode (or the split leaks).
    """
    lab = np.asarray(labels, dtype=np.int64)
    n_digits = lab.shape[1]
    perm = np.random.default_rng(seed + 7919).permutation(n_classes**n_digits)
    mapped = perm[passcode_keys(lab)]
    powers = n_classes ** np.arange(n_digits - 1, -1, -1, dtype=np.int64)
    return (mapped[:, None] // powers) % n_classes


# -- statistics --------------------------------------------------------------------------------------------
def bootstrap_ci(
    correct: np.ndarray,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean digit accuracy and a percentile bootstrap CI over validation samples.

    Args:
        correct: ``[n_val, n_digits]`` bool.
    Returns:
        (accuracy, ci_low, ci_high).
    """
    per_sample = np.asarray(correct, dtype=np.float64).mean(axis=1)
    acc = float(per_sample.mean())
    if len(per_sample) < 2:
        return acc, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(per_sample), size=(n_boot, len(per_sample)))
    means = per_sample[idx].mean(axis=1)
    return acc, float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


# -- training ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainConfig:
    """Adam on large batches with early stopping on a label-unique held-out slice of the training set.

    Attributes:
        val_frac: validation fraction (label-unique).
        stop_frac: fraction of the training part held out for early stopping (label-unique).
        lr, weight_decay, batch_size: Adam settings.
        max_epochs, patience: early stopping (stop after ``patience`` epochs without improvement).
        n_boot: bootstrap resamples for the CI.
        threads: torch intra-op threads. 1 by default: on the shared 2-core box under load, 2 OpenMP threads
            ran these small matmuls 5x slower than 1 (measured; see docs/PROBES.md).
    """

    val_frac: float = 0.2
    stop_frac: float = 0.1
    lr: float = 2e-3
    weight_decay: float = 1e-4
    batch_size: int = 2048
    max_epochs: int = 30
    patience: int = 3
    n_boot: int = 1000
    threads: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FitResult:
    """One fitted probe scored on validation.

    Attributes:
        correct: ``[n_val, n_digits]`` bool.
        accuracy, ci_low, ci_high: mean digit accuracy and its 95% bootstrap CI.
        epochs: epochs run; seconds: wall time.
    """

    correct: np.ndarray
    accuracy: float
    ci_low: float
    ci_high: float
    epochs: int
    seconds: float


def _digit_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def fit_probe(
    probe: DigitProbe,
    x: torch.Tensor,
    y: torch.Tensor,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    config: TrainConfig = TrainConfig(),
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> FitResult:
    """Train ``probe`` on ``x[train_idx]`` (standardised with training statistics), score on ``x[val_idx]``.

    Args:
        x: ``[n, features]``; y: ``[n, n_digits]`` int64 labels.
    """
    t0 = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = x.to(device=device, dtype=dtype)
    y = torch.as_tensor(np.asarray(y), dtype=torch.long, device=device)
    fit_rel, stop_rel = label_unique_split(y[train_idx].cpu().numpy(), config.stop_frac, seed + 1)
    fit_idx = torch.as_tensor(train_idx[fit_rel], device=device)
    stop_idx = torch.as_tensor(train_idx[stop_rel], device=device)
    mean = x[fit_idx].mean(0, keepdim=True)
    std = x[fit_idx].std(0, keepdim=True).clamp_min(1e-6)
    xs = (x - mean) / std
    model = probe.build(x.shape[1]).to(device=device, dtype=dtype)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    best, best_state, bad, epoch = float("inf"), None, 0, 0
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        order = fit_idx[torch.randperm(len(fit_idx), generator=gen).to(device)]
        for s in range(0, len(order), config.batch_size):
            b = order[s : s + config.batch_size]
            loss = _digit_loss(model(xs[b]), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            stop_loss = float(_digit_loss(model(xs[stop_idx]), y[stop_idx]))
        if stop_loss < best - 1e-4:
            best, best_state, bad = stop_loss, copy.deepcopy(model.state_dict()), 0
        else:
            bad += 1
            if bad >= config.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    vidx = torch.as_tensor(val_idx, device=device)
    with torch.no_grad():
        pred = model(xs[vidx]).argmax(-1)
    correct = (pred == y[vidx]).cpu().numpy()
    acc, lo, hi = bootstrap_ci(correct, config.n_boot, seed=seed)
    return FitResult(
        correct=correct, accuracy=acc, ci_low=lo, ci_high=hi, epochs=epoch, seconds=time.perf_counter() - t0
    )


@dataclass
class ProbeScore:
    """Probe accuracy next to its control task (selectivity = accuracy - control_accuracy)."""

    accuracy: float
    ci_low: float
    ci_high: float
    control_accuracy: float
    n_train: int
    n_val: int
    epochs: int
    seconds: float

    @property
    def selectivity(self) -> float:
        return self.accuracy - self.control_accuracy


def score_probe(
    probe: DigitProbe,
    x: torch.Tensor,
    labels: np.ndarray,
    config: TrainConfig = TrainConfig(),
    seed: int = 0,
    control: bool = True,
    device: torch.device | str = "cpu",
) -> ProbeScore:
    """Label-unique split, fit on the passcode digits and (optionally) on the control relabelling."""
    labels = np.asarray(labels, dtype=np.int64)
    train_idx, val_idx = label_unique_split(labels, config.val_frac, seed)
    fit = fit_probe(probe, x, labels, train_idx, val_idx, config, seed, device)
    ctrl_acc, secs = float("nan"), fit.seconds
    if control:
        ctrl = fit_probe(probe, x, control_labels(labels, seed), train_idx, val_idx, config, seed, device)
        ctrl_acc, secs = ctrl.accuracy, secs + ctrl.seconds
    return ProbeScore(
        accuracy=fit.accuracy,
        ci_low=fit.ci_low,
        ci_high=fit.ci_high,
        control_accuracy=ctrl_acc,
        n_train=len(train_idx),
        n_val=len(val_idx),
        epochs=fit.epochs,
        seconds=secs,
    )
