"""Fitting and scoring probes: label-unique splits, early-stopped Adam, bootstrap CIs, control task.

Pure functions over tensors; nothing here knows about models or runs.
"""

from __future__ import annotations

import math
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


# -- training ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainConfig:
    """Adam with early stopping on accuracy on a label-unique held-out slice of the training set.

    Attributes:
        val_frac: validation fraction (label-unique; the reported accuracies).
        stop_frac: fraction of the training part held out for early stopping (label-unique).
        lr, weight_decay, batch_size: Adam settings (batch 256 / lr 1e-3 reach the plateau that batch 2048 /
            30 epochs did not: 66.8% vs 29.7% direct, issue 10).
        max_epochs: the cap; a probe that hits it is flagged ``hit_cap`` in its row (not at plateau).
        patience: stop after this many epochs without a better early-stopping accuracy.
        seeds: probe seeds (initialisation and minibatch order) per fit; the split is shared, so worlds pair.
        n_boot: bootstrap resamples for the CIs.
        threads: torch intra-op threads. 1 by default: on the shared 2-core box under load, 2 OpenMP threads
            ran these small matmuls 5x slower than 1 (measured; see docs/PROBES.md).
        max_models: most probes trained together as one batched model (bounds memory).
        linear_solver: ``adam``: linear probes go through the batched trainer like the MLP (early stopping, seeds,
            curves); ``lbfgs``: scikit-learn multinomial logistic regression to convergence on the whole training
            part (convex: no seeds, no early stopping). Measured here: lbfgs 2.8 s vs Adam 13.9 s for one probe on
            7.2K x 640 planted features, but 7.4 s vs about 1 s on the toy's 1.6K x 640 memento features, where
            lbfgs needs 400+ iterations; so Adam stays the default.
        linear_c, linear_max_iter: inverse L2 strength and the lbfgs iteration cap (``hit_cap`` when reached).
    """

    val_frac: float = 0.2
    stop_frac: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    max_epochs: int = 200
    patience: int = 10
    seeds: int = 3
    n_boot: int = 1000
    threads: int = 1
    max_models: int = 32
    linear_solver: str = "adam"
    linear_c: float = 1.0
    linear_max_iter: int = 500

    def to_dict(self) -> dict:
        return asdict(self)


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
        hit_cap: ``[n_models]`` True where training stopped at ``max_epochs`` rather than by patience.
        curves: ``[n_models, epochs_run, 2]`` (train loss, early-stopping accuracy) per epoch; NaN after a
            model stopped.
        seconds: wall time of the whole batched fit.
    """

    correct: np.ndarray
    epochs: np.ndarray
    best_epoch: np.ndarray
    hit_cap: np.ndarray
    curves: np.ndarray
    seconds: float


class _Stacked(torch.nn.Module):
    """``n_models`` independent digit probes as stacked weights: ``[B, batch, in] -> [B, batch, n_digits, n_classes]``.

    Same initialisation law as ``nn.Linear`` (uniform +-1/sqrt(fan_in)); each model seeded on its own.
    """

    def __init__(self, widths: list[int], seeds: list[int], dropout: float, n_digits: int, n_classes: int):
        super().__init__()
        self.weights = torch.nn.ParameterList()
        self.biases = torch.nn.ParameterList()
        ws, bs = [[] for _ in widths[1:]], [[] for _ in widths[1:]]
        for seed in seeds:
            g = torch.Generator().manual_seed(int(seed))
            for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
                bound = 1.0 / math.sqrt(a)
                ws[i].append((torch.rand(a, b, generator=g) * 2 - 1) * bound)
                bs[i].append((torch.rand(1, b, generator=g) * 2 - 1) * bound)
        for w, b in zip(ws, bs):
            self.weights.append(torch.nn.Parameter(torch.stack(w)))
            self.biases.append(torch.nn.Parameter(torch.stack(b)))
        self.dropout, self.n_digits, self.n_classes = dropout, n_digits, n_classes

    def forward(self, x: torch.Tensor, gens: list[torch.Generator] | None = None) -> torch.Tensor:
        """``gens``: one generator per model for its dropout masks (so a model's training noise depends on its seed
        alone, not on which other models share the batch: equal features and seed give equal fits)."""
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b, x, w)
            if i < last:
                x = torch.relu(x)
                if self.training and self.dropout > 0:
                    keep = torch.empty_like(x)
                    for m, g in enumerate(gens):
                        keep[m].bernoulli_(1 - self.dropout, generator=g)
                    x = x * keep / (1 - self.dropout)
        return x.view(x.shape[0], x.shape[1], self.n_digits, self.n_classes)


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
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gens = [torch.Generator().manual_seed(int(s) + 104729) for s in seeds]  # minibatch order
    drop_gens = [torch.Generator().manual_seed(int(s) + 1299709) for s in seeds]  # dropout masks
    n_fit = len(fit_idx)
    best = torch.full((B,), -1.0)
    best_state = [p.detach().clone() for p in model.parameters()]
    best_epoch = np.zeros(B, dtype=np.int64)
    stopped_at = np.zeros(B, dtype=np.int64)
    active = np.ones(B, dtype=bool)
    bad = np.zeros(B, dtype=np.int64)
    curves = []
    Xs, Ys = X[grp[:, None], stop_t[None, :]], Y[lab[:, None], stop_t[None, :]]  # [B, n_stop, ...]
    epoch = 0
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        order = torch.stack([fit_t[torch.randperm(n_fit, generator=g).to(device)] for g in gens])  # [B, n_fit]
        total, steps = torch.zeros(B), 0
        for s in range(0, n_fit, config.batch_size):
            b = order[:, s : s + config.batch_size]
            logits = model(X[grp[:, None], b], drop_gens)
            y = Y[lab[:, None], b]
            per = (
                F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
                .view(B, -1)
                .mean(1)
            )
            opt.zero_grad(set_to_none=True)
            per.sum().backward()
            opt.step()
            total += per.detach().cpu()
            steps += 1
        model.eval()
        with torch.no_grad():
            acc = (model(Xs).argmax(-1) == Ys).float().mean(dim=(1, 2)).cpu()
        curves.append(torch.stack([total / max(steps, 1), acc], dim=1).numpy())
        better = (acc > best).numpy() & active
        if better.any():
            bt = torch.as_tensor(better, device=device)
            for keep, p in zip(best_state, model.parameters()):
                keep[bt] = p.detach()[bt]
            best[torch.as_tensor(better)] = acc[torch.as_tensor(better)]
            best_epoch[better] = epoch
        bad[better] = 0
        bad[~better & active] += 1
        done = active & (bad >= config.patience)
        stopped_at[done] = epoch
        active &= ~done
        if not active.any():
            break
    stopped_at[active] = epoch
    hit_cap = active.copy()
    curve = np.stack(curves, axis=1)  # [B, epochs, 2]
    for i in range(B):
        curve[i, stopped_at[i] :] = np.nan
    with torch.no_grad():
        for keep, p in zip(best_state, model.parameters()):
            p.copy_(keep)
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
