"""Fitting and scoring probes: label-unique splits, early-stopped Adam, bootstrap CIs, control task.

Pure functions over tensors; nothing here knows about models or runs.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

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


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, vectorised over uint64 (a fixed, seedable hash)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def text_control_labels(
    text_tokens: np.ndarray | torch.Tensor, n_digits: int, seed: int, n_classes: int = 10
) -> np.ndarray:
    """Control task that can fail (issue 18 item 4): ``[n, n_digits]`` labels that are a fixed random function of
    each sample's memento *text* (its token ids ``[n, n_text]``), independent of the passcode.

    Unlike a relabelling of the passcode (which a label-unique split makes unlearnable by construction), the
    same memento text recurs on both sides of the split, so a probe can score above chance on these labels
    by reading the text out of the features and memorising the text -> label table: the control accuracy is
    how much a probe of this capacity makes of what the features plainly hold, and
    ``selectivity = accuracy - control_accuracy`` compares the passcode to that (Hewitt & Liang 2019's
    control task, with the memento text as the "word type"). Each text maps through a seeded hash, so its
    label does not depend on which other texts are present. A text that never varies gives one constant label
    (the control is then trivially learnable: callers report it as not applicable).
    """
    tok = np.asarray(text_tokens, dtype=np.int64)
    tok = tok.reshape(len(tok), -1)
    h = np.full(len(tok), np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(7919), dtype=np.uint64)
    for j in range(tok.shape[1]):
        h = _mix64(h ^ tok[:, j].astype(np.uint64))
    out = np.empty((len(tok), n_digits), dtype=np.int64)
    for k in range(n_digits):
        h = _mix64(h + np.uint64(k + 1))
        out[:, k] = (h % np.uint64(n_classes)).astype(np.int64)
    return out


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


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, float]:
    """Accuracy of ``a`` (and ``b``) and the paired difference ``a - b`` with two-level percentile bootstrap CIs.

    Args:
        a, b: ``[n_seeds, n_val, n_digits]`` bool (or ``[n_val, n_digits]``): correctness of probes fitted with
            different seeds on the *same* validation samples (``b``: the other world's features of the same
            samples, fitted with the same seeds).
    Returns:
        ``accuracy``, ``ci_low``, ``ci_high`` of ``a``; with ``b``: ``b_accuracy``, ``b_ci_low``, ``b_ci_high``
        and ``diff``, ``diff_ci_low``, ``diff_ci_high``, ``diff_seed_sd`` (sd over seeds of the difference).

    Each bootstrap draw resamples validation samples and, with several seeds, seeds too (both with replacement),
    so the CI covers probe-training noise as well as sampling; the same draws serve ``a``, ``b`` and the
    difference (the pairing).
    """

    def as3(x):
        x = np.asarray(x, dtype=np.float64)
        return (x[None] if x.ndim == 2 else x).mean(axis=2)  # [n_seeds, n_val]

    pa = as3(a)
    n_seeds, n = pa.shape
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n)) if n >= 2 else None
    sidx = rng.integers(0, n_seeds, size=(n_boot, n_seeds)) if n_seeds >= 2 else np.zeros((n_boot, 1), np.int64)
    q = (alpha / 2, 1 - alpha / 2)

    def ci(per: np.ndarray) -> tuple[float, float]:
        if idx is None:
            return float("nan"), float("nan")
        by_seed = np.stack([per[s][idx].mean(axis=1) for s in range(per.shape[0])], axis=1)  # [n_boot, n_seeds]
        boot = np.take_along_axis(by_seed, sidx, axis=1).mean(axis=1)
        lo, hi = np.quantile(boot, q)
        return float(lo), float(hi)

    out = {"accuracy": float(pa.mean())}
    out["ci_low"], out["ci_high"] = ci(pa)
    if b is not None:
        pb = as3(b)
        if pb.shape != pa.shape:
            raise ValueError(f"paired bootstrap needs the same seeds and samples: {pa.shape} vs {pb.shape}")
        out["b_accuracy"] = float(pb.mean())
        out["b_ci_low"], out["b_ci_high"] = ci(pb)
        d = pa - pb
        out["diff"] = float(d.mean())
        out["diff_ci_low"], out["diff_ci_high"] = ci(d)
        out["diff_seed_sd"] = float(d.mean(axis=1).std(ddof=1)) if n_seeds > 1 else float("nan")
    return out


def _per_sample(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return (x[None] if x.ndim == 2 else x).mean(axis=2)  # [n_seeds, n_val]


def hierarchical_bootstrap(
    a: list[np.ndarray],
    b: list[np.ndarray] | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, float]:
    """:func:`paired_bootstrap` over independent data seeds: a percentile CI that covers validation samples,
    probe seeds *and* data seeds.

    Args:
        a, b: one array per data seed, ``[n_seeds, n_val_d, n_digits]`` bool (``n_val_d`` may differ between data
            seeds; ``b[d]`` pairs with ``a[d]``: same samples, same probe seeds, another world).
    Returns:
        the keys of :func:`paired_bootstrap` (``accuracy``, ``ci_low``, ``ci_high``; with ``b`` the ``b_*`` and
        ``diff*`` keys) plus ``n_data_seeds``, ``data_seed_sd`` (sd over data seeds of ``a``, or of the difference
        with ``b``).

    Each draw resamples data seeds with replacement, then within every drawn copy validation samples and probe
    seeds (with replacement, independently per copy), and averages the copies with equal weight; the point
    estimate is the mean over data seeds of each one's mean. The same draws serve ``a``, ``b`` and ``a - b``.
    With one data seed it is the two-level bootstrap of :func:`paired_bootstrap`.
    """
    pa = [_per_sample(x) for x in a]
    pb = [_per_sample(x) for x in b] if b is not None else None
    if pb is not None:
        if len(pb) != len(pa) or any(x.shape != y.shape for x, y in zip(pa, pb)):
            raise ValueError(
                "hierarchical bootstrap needs the same data seeds, probe seeds and samples in both worlds: "
                f"{[x.shape for x in pa]} vs {[y.shape for y in pb]}"
            )
    n_data = len(pa)
    if n_data == 0:
        raise ValueError("hierarchical bootstrap needs at least one data seed")
    rng = np.random.default_rng(seed)
    dsel = rng.integers(0, n_data, size=(n_boot, n_data)) if n_data >= 2 else np.zeros((n_boot, 1), np.int64)
    ok = all(x.shape[1] >= 2 for x in pa)
    # inner draws: for every data seed d and copy slot j, sample and seed indices [n_boot, n] / [n_boot, n_seeds]
    draws = []
    for x in pa:
        s_, n = x.shape
        draws.append(
            [
                (
                    rng.integers(0, n, size=(n_boot, n)) if n >= 2 else np.zeros((n_boot, 1), np.int64),
                    rng.integers(0, s_, size=(n_boot, s_)) if s_ >= 2 else np.zeros((n_boot, 1), np.int64),
                )
                for _ in range(n_data)
            ]
        )
    q = (alpha / 2, 1 - alpha / 2)

    def boot(per: list[np.ndarray]) -> np.ndarray:
        # value of data seed d in copy slot j for every draw: [n_data, n_data(slots), n_boot]
        vals = np.empty((n_data, n_data, n_boot))
        for d, x in enumerate(per):
            for j, (idx, sidx) in enumerate(draws[d]):
                by_seed = np.stack([x[s][idx].mean(axis=1) for s in range(x.shape[0])], axis=1)  # [n_boot, seeds]
                vals[d, j] = np.take_along_axis(by_seed, sidx, axis=1).mean(axis=1)
        slots = np.arange(n_data)
        return vals[dsel, slots[None, :], np.arange(n_boot)[:, None]].mean(axis=1)  # [n_boot]

    def ci(per: list[np.ndarray]) -> tuple[float, float]:
        if not ok:
            return float("nan"), float("nan")
        lo, hi = np.quantile(boot(per), q)
        return float(lo), float(hi)

    def point(per: list[np.ndarray]) -> float:
        return float(np.mean([x.mean() for x in per]))

    def sd(per: list[np.ndarray]) -> float:
        return float(np.std([x.mean() for x in per], ddof=1)) if n_data > 1 else float("nan")

    out: dict[str, float] = {"accuracy": point(pa), "n_data_seeds": n_data}
    out["ci_low"], out["ci_high"] = ci(pa)
    out["data_seed_sd"] = sd(pa)
    if pb is not None:
        out["b_accuracy"] = point(pb)
        out["b_ci_low"], out["b_ci_high"] = ci(pb)
        d = [x - y for x, y in zip(pa, pb)]
        out["diff"] = point(d)
        out["diff_ci_low"], out["diff_ci_high"] = ci(d)
        seed_means = [x.mean(axis=1) for x in d]
        out["diff_seed_sd"] = (
            float(np.mean([m.std(ddof=1) for m in seed_means])) if seed_means[0].size > 1 else float("nan")
        )
        out["data_seed_sd"] = sd(d)
    return out


def chance_check(
    correct: list[np.ndarray],
    chance: float,
    n_checks: int,
    alpha: float = 0.05,
    n_boot: int = 4000,
    seed: int = 0,
) -> dict[str, Any]:
    """Pass/fail check that a probe is *not* above chance, Bonferroni-corrected over ``n_checks`` such rows.

    The causal control (memento computed before the passcode's block existed) can only beat chance through a
    bug or a leak in the split. One-sided: the row fails when the lower bound of the hierarchical bootstrap
    (:func:`hierarchical_bootstrap`: samples, probe seeds, data seeds) at level ``alpha / n_checks`` lies above
    ``chance``; with ``n_checks`` rows the chance that any of them fails on a true null is then at most
    ``alpha``.

    Returns:
        ``check`` (``"pass"`` / ``"fail"``), ``check_alpha`` (the per-row level), ``check_bound`` (the lower
        bound compared with chance).
    """
    per_row = alpha / max(1, int(n_checks))
    low = hierarchical_bootstrap(correct, None, n_boot=n_boot, alpha=2 * per_row, seed=seed)["ci_low"]
    return {"check": "fail" if low > chance else "pass", "check_alpha": per_row, "check_bound": low}


# -- training ----------------------------------------------------------------------------------------------
STOPPED_BY = ("plateau", "patience", "cap")  # how a fit ended (see TrainConfig)
LINEAR_SOLVERS = ("ridge", "adam", "lbfgs")


@dataclass(frozen=True)
class TrainConfig:
    """How probes are fitted: Adam for the MLP (and optionally the linear probe) with a plateau stopping rule on a
    label-unique held-out slice of the training part; the linear probe in closed form by default.

    Stopping rule (issue 18 item 1). After every epoch the accuracy on the stop slice is smoothed (trailing mean
    of the last ``smooth`` epochs). A fit stops once the smoothed curve has not risen more than ``min_delta``
    above its best for ``patience`` epochs (not before ``min_epochs``), or at ``max_epochs``; the weights of the
    best raw stop-slice epoch are kept (``best_epoch``). ``still_improving``: the raw curve over the last
    ``patience`` epochs (at least 10) still rises (least-squares slope x ``patience`` > ``min_delta`` and > 2 standard
    errors). ``stopped_by``: ``cap`` (ran to ``max_epochs``), ``patience`` (the patience counter ended it while
    the curve was still improving) or ``plateau`` (ended it on a flat curve). Patience 50 with a 5-epoch
    window: the evidence is in docs/PROBES.md (one 400-epoch curve, toy direct: patience 10 and 30 stopped 2.4
    and 1.7 points below its plateau, 50 at it).

    Attributes:
        val_frac: validation fraction (label-unique; the reported accuracies).
        stop_frac: fraction of the training part held out for the stopping rule (label-unique; 20% so that
            the smoothed curve is stable at quick sizes: 320 samples x 5 digits at 2,000 samples).
        lr, weight_decay, batch_size: Adam settings.
        max_epochs, patience, smooth, min_delta, min_epochs: the stopping rule above.
        seeds: probe seeds (initialisation, minibatch order, dropout) per fit; the split is shared, so worlds pair.
        n_boot: bootstrap resamples for the CIs.
        threads: torch intra-op threads (1 is fastest on the shared 2-core box).
        max_models: most probes trained together as one batched model (bounds memory).
        linear_solver: ``ridge`` (default): the linear probe in closed form, a ridge least-squares fit to the
            one-hot digits (float32, Cholesky) with the L2 strength chosen on the stop slice from ``ridge_grid`` x
            ``n_fit``; it is
            deterministic (probe seeds share one fit) and at its optimum by construction. Measured on
            toy-channel init features (1.6K x 1280, masked +1): 22.0% validation in 1 s, the same as Adam at
            its plateau (22.0%, 177 epochs, 11 s). ``adam``: the batched trainer with the stopping rule.
            ``lbfgs``: scikit-learn multinomial logistic regression to convergence.
        linear_c, linear_max_iter: inverse L2 strength and iteration cap of ``lbfgs``.
    """

    val_frac: float = 0.2
    stop_frac: float = 0.2
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    max_epochs: int = 400
    patience: int = 50
    smooth: int = 5
    min_delta: float = 0.002
    min_epochs: int = 10
    seeds: int = 3
    n_boot: int = 1000
    threads: int = 1
    max_models: int = 32
    linear_solver: str = "ridge"
    ridge_grid: tuple[float, ...] = (3e-4, 3e-3, 3e-2, 3e-1, 3.0)
    linear_c: float = 1.0
    linear_max_iter: int = 500

    def __post_init__(self):
        from memento_lens.runtime.errors import OptionError

        if self.linear_solver not in LINEAR_SOLVERS:
            raise OptionError(f"linear_solver {self.linear_solver!r}: choose from {', '.join(LINEAR_SOLVERS)}")
        for name in ("max_epochs", "patience", "smooth", "seeds", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise OptionError(f"--{name.replace('_', '-')} {getattr(self, name)}: need at least 1")
        if not 0 < self.stop_frac < 1 or not 0 < self.val_frac < 1:
            raise OptionError(f"val_frac {self.val_frac} and stop_frac {self.stop_frac} must lie in (0, 1)")

    def to_dict(self) -> dict:
        return asdict(self)


def trend_window(config: "TrainConfig") -> int:
    """Epochs the ``still_improving`` trend is judged on: the patience, but never fewer than 10 (a slope over a
    handful of noisy epochs says nothing)."""
    return max(int(config.patience), 10)


def still_improving(curve: np.ndarray, window: int, min_delta: float) -> bool:
    """Whether the last ``window`` points of a raw stop-accuracy ``curve`` still rise: least-squares slope x
    ``window`` above ``min_delta`` and above 2 standard errors (so a flat, noisy curve is not "improving")."""
    y = np.asarray(curve, dtype=np.float64)
    y = y[~np.isnan(y)][-window:]
    if len(y) < 3:
        return len(y) == 2 and y[1] - y[0] > min_delta
    x = np.arange(len(y), dtype=np.float64)
    x -= x.mean()
    slope = float((x * (y - y.mean())).sum() / (x * x).sum())
    resid = y - y.mean() - slope * x
    se = float(np.sqrt((resid**2).sum() / (len(y) - 2) / (x * x).sum()))
    return slope * len(y) > min_delta and slope > 2 * se


def plateau_stop(curve: np.ndarray, config: "TrainConfig") -> tuple[int, str, bool]:
    """The stopping rule of :class:`TrainConfig` applied to a whole raw stop-accuracy ``curve`` (epochs 1..E):
    ``(stop_epoch, stopped_by, still_improving)``. :func:`fit_batched` applies the same rule epoch by epoch;
    this pure form is for tests and for re-judging recorded curves."""
    best, bad = -np.inf, 0
    y = np.asarray(curve, dtype=np.float64)
    for e in range(1, len(y) + 1):
        sm = float(np.mean(y[max(0, e - config.smooth) : e]))
        if sm > best + config.min_delta:
            best, bad = sm, 0
        else:
            bad += 1
        if e >= config.min_epochs and bad >= config.patience:
            imp = still_improving(y[:e], trend_window(config), config.min_delta)
            return e, ("patience" if imp else "plateau"), imp
        if e >= config.max_epochs:
            break
    e = min(len(y), config.max_epochs)
    imp = still_improving(y[:e], trend_window(config), config.min_delta)
    return e, ("cap" if e >= config.max_epochs else ("patience" if imp else "plateau")), imp


@dataclass(frozen=True)
class FitTask:
    """One probe in a batched fit: which feature matrix (``group``), which label set, which seed."""

    group: int
    labels: int
    seed: int


@dataclass
class BatchedFit:
    """Probes fitted together, scored on validation.

    Attributes:
        correct: ``[n_models, n_val, n_digits]`` bool.
        epochs: ``[n_models]`` epochs run (the best epoch's weights are kept).
        best_epoch: ``[n_models]`` epoch of the best early-stopping accuracy.
        hit_cap: ``[n_models]`` True where training stopped at ``max_epochs`` (``stopped_by == "cap"``).
        curves: ``[n_models, epochs_run, 2]`` (train loss, early-stopping accuracy) per epoch; NaN after a
            model stopped.
        seconds: wall time of the whole batched fit.
        stopped_by: ``[n_models]`` str, one of :data:`STOPPED_BY`.
        still_improving: ``[n_models]`` bool, the stop curve still rising at the stop.
        model_epochs: model-epochs of training computed; equals ``epochs.sum()`` because a stopped model leaves
            the stacked batch (without that it would be ``n_models x epochs.max()``).
    """

    correct: np.ndarray
    epochs: np.ndarray
    best_epoch: np.ndarray
    hit_cap: np.ndarray
    curves: np.ndarray
    seconds: float
    stopped_by: np.ndarray | None = None
    still_improving: np.ndarray | None = None
    model_epochs: int | None = None

    def __post_init__(self):
        n = len(self.epochs)
        if self.stopped_by is None:
            self.stopped_by = np.where(np.asarray(self.hit_cap, bool), "cap", "plateau").astype(object)
        if self.still_improving is None:
            self.still_improving = np.zeros(n, dtype=bool)


class _Stacked(torch.nn.Module):
    """``n_models`` independent digit probes run as one: ``[B, batch, in] -> [B, batch, n_digits, n_classes]``.

    Each model's weights are parameters of their own, stacked for the batched matmuls at every forward, so the
    (fused) Adam step updates tensors of one model's shape whatever else is in the batch: a fit is bit-identical
    alone or batched, and a stopped model leaves the batch by dropping its parameters. Same initialisation law as
    ``nn.Linear`` (uniform +-1/sqrt(fan_in)); each model seeded on its own.
    """

    def __init__(self, widths: list[int], seeds: list[int], dropout: float, n_digits: int, n_classes: int):
        super().__init__()
        self.n_layers = len(widths) - 1
        self.models = torch.nn.ModuleList()
        for seed in seeds:
            g = torch.Generator().manual_seed(int(seed))
            ws, bs = [], []
            for a, b in zip(widths[:-1], widths[1:]):
                bound = 1.0 / math.sqrt(a)
                ws.append((torch.rand(a, b, generator=g) * 2 - 1) * bound)
                bs.append((torch.rand(1, b, generator=g) * 2 - 1) * bound)
            self.models.append(torch.nn.ParameterList([torch.nn.Parameter(t) for t in ws + bs]))
        self.dropout, self.n_digits, self.n_classes = dropout, n_digits, n_classes

    def forward(self, x: torch.Tensor, gens: list[torch.Generator] | None = None) -> torch.Tensor:
        """``gens``: one generator per model for its dropout masks (so a model's training noise depends on its seed
        alone, not on which other models share the batch: equal features and seed give equal fits)."""
        L = self.n_layers
        for i in range(L):
            w = torch.stack([m[i] for m in self.models])
            b = torch.stack([m[L + i] for m in self.models])
            x = torch.baddbmm(b, x, w)
            if i < L - 1:
                x = torch.relu(x)
                if self.training and self.dropout > 0:
                    # uniform draws, then one in-place threshold and scale: half the cost of bernoulli_ here
                    keep = torch.empty_like(x)
                    for m, g in enumerate(gens):
                        keep[m].uniform_(generator=g)
                    x = x * keep.ge_(self.dropout).mul_(1.0 / (1.0 - self.dropout))
        return x.view(x.shape[0], x.shape[1], self.n_digits, self.n_classes)

    def snapshot(self, m: int) -> list[torch.Tensor]:
        """A copy of model ``m``'s parameters (stack position ``m``)."""
        return [p.detach().clone() for p in self.models[m]]

    def restore(self, per_model: list[list[torch.Tensor]]) -> None:
        """Replace the models by ``per_model`` (one :meth:`snapshot` per model, any number of models)."""
        self.models = torch.nn.ModuleList(
            torch.nn.ParameterList([torch.nn.Parameter(t.clone()) for t in ps]) for ps in per_model
        )

    def optimizer(self, lr: float, weight_decay: float) -> torch.optim.Adam:
        """Adam over every model's parameters; fused (one pass per tensor) where the device supports it."""
        params = list(self.parameters())
        fused = all(p.device.type in ("cpu", "cuda") for p in params)
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused)

    def keep(self, rows: np.ndarray, opt: torch.optim.Adam) -> torch.optim.Adam:
        """Drop the models where ``rows`` is False (stopped ones), with their Adam state; returns the optimiser of
        the smaller batch, which carries the kept models' state over unchanged."""
        kept = [m for m, k in zip(self.models, rows) if k]
        self.models = torch.nn.ModuleList(kept)
        fresh = torch.optim.Adam(self.parameters(), **opt.defaults)
        for p in self.parameters():
            if p in opt.state:
                fresh.state[p] = opt.state[p]
        return fresh


def fit_batched(
    probe: DigitProbe,
    features: list[torch.Tensor],
    labels: list[np.ndarray],
    tasks: list[FitTask],
    fit_idx: np.ndarray,
    stop_idx: np.ndarray,
    val_idx: np.ndarray,
    config: TrainConfig = TrainConfig(),
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> BatchedFit:
    """Fit one probe per :class:`FitTask` at once (stacked weights, one optimiser step for all), early-stopped
    per model on accuracy on ``stop_idx``, scored on ``val_idx``.

    Args:
        features: feature matrices ``[n, d]`` (same ``d``), standardised here with ``fit_idx`` statistics.
        labels: label sets ``[n, n_digits]`` int64 (e.g. the passcode and its control relabelling).
        tasks: which (features, labels, seed) each model trains on.
    """
    t0 = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    dims = {int(f.shape[1]) for f in features}
    if len(dims) != 1:
        raise ValueError(f"a batched fit needs one feature width, got {sorted(dims)}")
    fit_t = torch.as_tensor(fit_idx, dtype=torch.long, device=device)
    stop_t = torch.as_tensor(stop_idx, dtype=torch.long, device=device)
    val_t = torch.as_tensor(val_idx, dtype=torch.long, device=device)
    xs = []
    for f in features:
        x = f.to(device=device, dtype=dtype)
        mean = x[fit_t].mean(0, keepdim=True)
        std = x[fit_t].std(0, keepdim=True).clamp_min(1e-6)
        xs.append((x - mean) / std)
    X = torch.stack(xs)  # [G, n, d]
    Y = torch.stack([torch.as_tensor(np.asarray(y), dtype=torch.long) for y in labels]).to(device)  # [L, n, D]
    B = len(tasks)
    grp = torch.as_tensor([t.group for t in tasks], device=device)
    lab = torch.as_tensor([t.labels for t in tasks], device=device)
    seeds = [t.seed for t in tasks]
    widths = probe.widths(X.shape[2])
    model = _Stacked(widths, seeds, getattr(probe, "dropout", 0.0), probe.n_digits, probe.n_classes).to(device, dtype)
    opt = model.optimizer(config.lr, config.weight_decay)
    gens = [torch.Generator().manual_seed(int(s) + 104729) for s in seeds]  # minibatch order
    drop_gens = [torch.Generator().manual_seed(int(s) + 1299709) for s in seeds]  # dropout masks
    n_fit = len(fit_idx)
    best = torch.full((B,), -1.0)
    best_state = [model.snapshot(m) for m in range(B)]
    best_epoch = np.zeros(B, dtype=np.int64)
    stopped_at = np.zeros(B, dtype=np.int64)
    active = np.ones(B, dtype=bool)
    bad = np.zeros(B, dtype=np.int64)
    best_smooth = np.full(B, -np.inf)
    curves = []
    live = np.arange(B)  # the models still training, in stack order: stopped ones leave the stack
    model_epochs = 0
    grp_l, lab_l = grp, lab
    Xs, Ys = X[grp[:, None], stop_t[None, :]], Y[lab[:, None], stop_t[None, :]]  # [B, n_stop, ...]
    epoch = 0
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        order = torch.stack([fit_t[torch.randperm(n_fit, generator=gens[m]).to(device)] for m in live])
        total, steps = torch.zeros(len(live)), 0
        for s in range(0, n_fit, config.batch_size):
            b = order[:, s : s + config.batch_size]
            logits = model(X[grp_l[:, None], b], [drop_gens[m] for m in live])
            y = Y[lab_l[:, None], b]
            per = (
                F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
                .view(len(live), -1)
                .mean(1)
            )
            opt.zero_grad(set_to_none=True)
            per.sum().backward()
            opt.step()
            total += per.detach().cpu()
            steps += 1
        model_epochs += len(live)
        model.eval()
        with torch.no_grad():
            acc_l = (model(Xs).argmax(-1) == Ys).float().mean(dim=(1, 2)).cpu()
        live_t = torch.as_tensor(live)
        acc = torch.full((B,), float("nan"))
        acc[live_t] = acc_l
        loss = torch.full((B,), float("nan"))
        loss[live_t] = total / max(steps, 1)
        curves.append(torch.stack([loss, acc], dim=1).numpy())
        better = np.zeros(B, dtype=bool)
        better[live] = (acc_l > best[live_t]).numpy()
        if better.any():
            for j in np.flatnonzero(better[live]):
                best_state[live[j]] = model.snapshot(j)
            best[torch.as_tensor(better)] = acc[torch.as_tensor(better)]
            best_epoch[better] = epoch
        raw = np.stack([c[:, 1] for c in curves[-config.smooth :]])  # [<= smooth, B]
        smooth = raw.mean(axis=0)
        rise = (smooth > best_smooth + config.min_delta) & active
        best_smooth[rise] = smooth[rise]
        bad[rise] = 0
        bad[~rise & active] += 1
        done = active & (bad >= config.patience) & (epoch >= config.min_epochs)
        stopped_at[done] = epoch
        active &= ~done
        if not active.any():
            break
        if done.any():
            stay = active[live]  # of the stacked models, those still training
            opt = model.keep(stay, opt)
            stay_t = torch.as_tensor(stay, device=device)
            grp_l, lab_l, Xs, Ys = grp_l[stay_t], lab_l[stay_t], Xs[stay_t], Ys[stay_t]
            live = np.flatnonzero(active)
    stopped_at[active] = epoch
    hit_cap = active.copy()
    curve = np.stack(curves, axis=1)  # [B, epochs, 2]
    for i in range(B):
        curve[i, stopped_at[i] :] = np.nan
    improving = np.array([still_improving(curve[i, :, 1], trend_window(config), config.min_delta) for i in range(B)])
    stopped_by = np.where(hit_cap, "cap", np.where(improving, "patience", "plateau")).astype(object)
    with torch.no_grad():
        model.restore(best_state)  # every model again, each at its best epoch
        model.eval()
        Xv, Yv = X[grp[:, None], val_t[None, :]], Y[lab[:, None], val_t[None, :]]
        correct = (model(Xv).argmax(-1) == Yv).cpu().numpy()
    return BatchedFit(
        correct=correct,
        epochs=stopped_at,
        best_epoch=best_epoch,
        hit_cap=hit_cap,
        curves=curve,
        seconds=time.perf_counter() - t0,
        stopped_by=stopped_by,
        still_improving=improving,
        model_epochs=model_epochs,
    )


class _RidgeSolver:
    """Ridge from standardised features ``z`` (fitted on the rows ``fit``) to centred targets, one Cholesky factor
    per L2 strength, shared by every label set of one feature matrix.

    Primal form ``W = (Zf'Zf + lam I)^-1 Zf'Y`` when there are no more features than fit rows; otherwise the
    dual (kernel) form of the same estimator, ``z W = (z Zf')(Zf Zf' + lam I)^-1 Y``, whose system is
    ``n_fit x n_fit``: a real model's memento span has ~36K features (SmolLM2: a 5 GB primal Gram), never more
    than a few thousand samples. ``lam = rel x n_fit`` for ``rel`` in the grid, in both forms.
    """

    def __init__(self, x: torch.Tensor, fit: torch.Tensor, grid: Sequence[float]):
        x = x.to(torch.float32)
        mean, std = x[fit].mean(0, keepdim=True), x[fit].std(0, keepdim=True).clamp_min(1e-6)
        self.z = (x - mean) / std
        self.zf = self.z[fit]
        n_fit, d = self.zf.shape
        self.dual = d > n_fit
        if self.dual:  # float64: the kernel sums d products per entry
            zf64 = self.zf.double()
            self.k_all = self.z.double() @ zf64.T  # [n, n_fit]
            self.k_fit = self.k_all[fit]
            system = self.k_fit
        else:
            system = self.zf.T @ self.zf
        eye = torch.eye(system.shape[0], dtype=system.dtype)
        self.chol = [torch.linalg.cholesky(system + rel * n_fit * eye) for rel in grid]

    def predict(self, yf_centred: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Centred scores of every row and of the fit rows at the ``i``-th L2 strength."""
        if self.dual:
            alpha = torch.cholesky_solve(yf_centred.double(), self.chol[i])
            return (self.k_all @ alpha).float(), (self.k_fit @ alpha).float()
        w = torch.cholesky_solve(self.zf.T @ yf_centred.to(self.zf.dtype), self.chol[i])
        return (self.z @ w).float(), (self.zf @ w).float()


def fit_ridge(
    features: list[torch.Tensor],
    labels: list[np.ndarray],
    tasks: list[FitTask],
    fit_idx: np.ndarray,
    stop_idx: np.ndarray,
    val_idx: np.ndarray,
    config: TrainConfig = TrainConfig(),
    n_classes: int = 10,
) -> BatchedFit:
    """Linear probes in closed form: ridge least squares from standardised features to the one-hot digits,
    ``W = (X'X + lam I)^-1 X'(Y - mean Y)`` (in its dual form when features outnumber fit rows: same estimator,
    an ``n_fit x n_fit`` system), fitted on ``fit_idx``; ``lam`` from ``config.ridge_grid x n_fit`` by
    accuracy on ``stop_idx``; scored on ``val_idx`` (argmax per digit). One Gram matrix per feature matrix
    serves every label set and every ``lam``; seeds do not change the fit (tasks that differ only in seed share
    it). Same result type as :func:`fit_batched`: ``epochs = best_epoch = 1``, ``stopped_by = "plateau"`` (the
    exact optimum), ``still_improving`` = the weakest ``lam`` of the grid won by more than 2 binomial standard
    errors of the stop slice (an even weaker one might help), one curve point (training loss = mean squared
    error, stop accuracy).
    """
    t0 = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    fit_t, stop_t, val_t = (torch.as_tensor(np.asarray(i), dtype=torch.long) for i in (fit_idx, stop_idx, val_idx))
    done: dict[tuple[int, int], tuple[np.ndarray, bool, float, float]] = {}
    grams: dict[int, tuple] = {}
    for task in tasks:
        key = (task.group, task.labels)
        if key in done:
            continue
        if task.group not in grams:
            grams[task.group] = _RidgeSolver(features[task.group], fit_t, config.ridge_grid)
        solver = grams[task.group]
        y = torch.as_tensor(np.asarray(labels[task.labels]), dtype=torch.long)
        n_digits = y.shape[1]
        onehot = F.one_hot(y, n_classes).reshape(len(y), -1).to(torch.float32)
        yf = onehot[fit_t]
        ymean = yf.mean(0, keepdim=True)
        best, accs = None, []
        for i in range(len(config.ridge_grid)):
            scores, fit_scores = solver.predict(yf - ymean, i)
            pred = (scores + ymean).view(len(y), n_digits, n_classes).argmax(-1)
            stop_acc = float((pred[stop_t] == y[stop_t]).float().mean())
            accs.append(stop_acc)
            if best is None or stop_acc > best[0]:
                mse = float(((fit_scores + ymean - yf) ** 2).mean())
                best = (stop_acc, i, pred, mse)
        stop_acc, i, pred, mse = best
        # still improving: the weakest L2 won by more than the stop slice's noise (2 binomial SEs), so an even
        # weaker one might do better still; the strongest winning just means the features predict little
        se = float(np.sqrt(max(stop_acc * (1 - stop_acc), 1e-12) / (len(stop_t) * n_digits)))
        edge = i == 0 and len(accs) > 1 and accs[0] - accs[1] > 2 * se
        done[key] = ((pred[val_t] == y[val_t]).numpy(), edge, mse, stop_acc)
    out = [done[(t.group, t.labels)] for t in tasks]
    n = len(tasks)
    return BatchedFit(
        correct=np.stack([o[0] for o in out]),
        epochs=np.ones(n, dtype=np.int64),
        best_epoch=np.ones(n, dtype=np.int64),
        hit_cap=np.zeros(n, dtype=bool),
        curves=np.array([[[o[2], o[3]]] for o in out]),
        seconds=time.perf_counter() - t0,
        stopped_by=np.array(["plateau"] * n, dtype=object),
        still_improving=np.array([o[1] for o in out], dtype=bool),
    )


def fit_logistic(
    features: list[torch.Tensor],
    labels: list[np.ndarray],
    tasks: list[FitTask],
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    config: TrainConfig = TrainConfig(),
) -> BatchedFit:
    """Linear probes as multinomial logistic regressions (scikit-learn lbfgs), one per digit, fitted to convergence
    on ``train_idx`` (standardised with its statistics) and scored on ``val_idx``; same result type as
    :func:`fit_batched` (``epochs`` = lbfgs iterations, one curve point: final training log-loss). The problem is
    convex, so ``FitTask.seed`` does not change the fit: tasks that differ only in seed share one fit.
    """
    try:
        from sklearn.linear_model import LogisticRegression
        from threadpoolctl import threadpool_limits
    except ImportError:  # an environment made before scikit-learn became a dependency
        from memento_lens.runtime.errors import ConfigError

        raise ConfigError(
            "linear probes need scikit-learn: pip install 'scikit-learn>=1.5' (or rerun make setup); "
            "TrainConfig(linear_solver='adam') fits them with the batched torch trainer instead"
        ) from None

    t0 = time.perf_counter()
    done: dict[tuple[int, int], tuple[np.ndarray, int, bool, float]] = {}
    n_val = len(val_idx)
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with threadpool_limits(config.threads or None), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # recorded as hit_cap in the row instead
        for task in tasks:
            key = (task.group, task.labels)
            if key in done:
                continue
            x = features[task.group].float().numpy()
            mean, std = x[train_idx].mean(0), x[train_idx].std(0) + 1e-6
            xt, xv = (x[train_idx] - mean) / std, (x[val_idx] - mean) / std
            y = np.asarray(labels[task.labels])
            correct = np.zeros((n_val, y.shape[1]), dtype=bool)
            iters, loss = 0, 0.0
            for k in range(y.shape[1]):
                m = LogisticRegression(C=config.linear_c, max_iter=config.linear_max_iter).fit(xt, y[train_idx, k])
                correct[:, k] = m.predict(xv) == y[val_idx, k]
                iters = max(iters, int(np.max(m.n_iter_)))
                proba = m.predict_proba(xt)[np.arange(len(train_idx)), np.searchsorted(m.classes_, y[train_idx, k])]
                loss += float(-np.log(np.clip(proba, 1e-12, None)).mean()) / y.shape[1]
            done[key] = (correct, iters, iters >= config.linear_max_iter, loss)
    out = [done[(t.group, t.labels)] for t in tasks]
    return BatchedFit(
        correct=np.stack([o[0] for o in out]),
        epochs=np.array([o[1] for o in out]),
        best_epoch=np.array([o[1] for o in out]),
        hit_cap=np.array([o[2] for o in out]),
        curves=np.array([[[o[3], np.nan]] for o in out]),
        seconds=time.perf_counter() - t0,
        stopped_by=np.array(["cap" if o[2] else "plateau" for o in out], dtype=object),
    )


@dataclass
class FitResult:
    """One fitted probe scored on validation.

    Attributes:
        correct: ``[n_val, n_digits]`` bool.
        accuracy, ci_low, ci_high: mean digit accuracy and its 95% bootstrap CI.
        epochs: epochs run; hit_cap: stopped by ``max_epochs``; seconds: wall time.
    """

    correct: np.ndarray
    accuracy: float
    ci_low: float
    ci_high: float
    epochs: int
    seconds: float
    hit_cap: bool = False


def fit_probe(
    probe: DigitProbe,
    x: torch.Tensor,
    y: torch.Tensor | np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    config: TrainConfig = TrainConfig(),
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> FitResult:
    """Train one ``probe`` on ``x[train_idx]`` (early stopping on a label-unique slice of it), score on ``x[val_idx]``.

    Args:
        x: ``[n, features]``; y: ``[n, n_digits]`` int64 labels.
    """
    y = np.asarray(y, dtype=np.int64)
    fit_rel, stop_rel = label_unique_split(y[train_idx], config.stop_frac, seed + 1)
    res = fit_batched(
        probe, [x], [y], [FitTask(0, 0, seed)], train_idx[fit_rel], train_idx[stop_rel], val_idx, config, device, dtype
    )
    acc, lo, hi = bootstrap_ci(res.correct[0], config.n_boot, seed=seed)
    return FitResult(res.correct[0], acc, lo, hi, int(res.epochs[0]), res.seconds, bool(res.hit_cap[0]))


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
    """Label-unique split, fit on the passcode digits and (optionally) on the control relabelling, together."""
    labels = np.asarray(labels, dtype=np.int64)
    train_idx, val_idx = label_unique_split(labels, config.val_frac, seed)
    fit_rel, stop_rel = label_unique_split(labels[train_idx], config.stop_frac, seed + 1)
    sets = [labels, control_labels(labels, seed)] if control else [labels]
    tasks = [FitTask(0, i, seed) for i in range(len(sets))]
    res = fit_batched(probe, [x], sets, tasks, train_idx[fit_rel], train_idx[stop_rel], val_idx, config, device)
    acc, lo, hi = bootstrap_ci(res.correct[0], config.n_boot, seed=seed)
    ctrl = float(res.correct[1].mean()) if control else float("nan")
    return ProbeScore(acc, lo, hi, ctrl, len(train_idx), len(val_idx), int(res.epochs[0]), res.seconds)
