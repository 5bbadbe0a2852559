"""Probe training: label-unique split, control relabelling, bootstrap CI, planted-signal recovery."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from memento_lens.probes.models import LinearProbe, MLPProbe, make_probe
from memento_lens.probes.train import (
    TrainConfig,
    bootstrap_ci,
    control_labels,
    label_unique_split,
    passcode_keys,
    score_probe,
)


def _labels(n: int, seed: int = 0, distinct: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, 10, size=(n, 5))
    if distinct is not None:  # force many repeated passcodes
        lab = lab[rng.integers(0, distinct, size=n) % n]
    return lab


def test_label_unique_split_has_no_shared_passcode_and_covers_everything():
    lab = _labels(3000, distinct=400)
    keys = passcode_keys(lab)
    assert len(np.unique(keys)) < 500  # repeats really exist
    tr, va = label_unique_split(lab, 0.2, seed=3)
    assert set(keys[tr]).isdisjoint(set(keys[va]))
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(len(lab)))
    assert 0.15 < len(va) / len(lab) < 0.3
    tr2, va2 = label_unique_split(lab, 0.2, seed=4)
    assert not np.array_equal(va, va2)


def test_label_unique_split_rejects_bad_fraction():
    with pytest.raises(ValueError, match="val_frac"):
        label_unique_split(_labels(10), 1.0, seed=0)


def test_control_labels_are_a_fixed_function_of_the_passcode():
    lab = _labels(2000, distinct=300)
    ctrl = control_labels(lab, seed=1)
    assert ctrl.shape == lab.shape and ctrl.min() >= 0 and ctrl.max() <= 9
    keys, ckeys = passcode_keys(lab), passcode_keys(ctrl)
    for k in np.unique(keys)[:50]:  # same passcode -> same control label
        assert len(np.unique(ckeys[keys == k])) == 1
    assert (ctrl == lab).mean() < 0.2  # not the identity
    np.testing.assert_array_equal(ctrl, control_labels(lab, seed=1))


def test_bootstrap_ci_brackets_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small = rng.random((100, 5)) < 0.3
    big = rng.random((5000, 5)) < 0.3
    a, lo, hi = bootstrap_ci(small, 500)
    assert lo <= a <= hi
    A, LO, HI = bootstrap_ci(big, 500)
    assert HI - LO < hi - lo
    assert LO < 0.3 < HI


def test_make_probe_names_and_shapes():
    assert make_probe("mlp") == MLPProbe() and make_probe("linear") == LinearProbe()
    with pytest.raises(ValueError, match="--probes"):
        make_probe("svm")
    net = MLPProbe().build(40)
    assert net(torch.zeros(3, 40)).shape == (3, 5, 10)
    widths = [m.out_features for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [512, 256, 128, 50]


FAST = TrainConfig(max_epochs=40, patience=4, batch_size=256, lr=3e-3, n_boot=200)


@pytest.mark.parametrize("probe", ["linear", "mlp"])
def test_planted_signal_is_recovered_and_control_stays_at_chance(probe):
    rng = np.random.default_rng(0)
    lab = _labels(2500, seed=1)
    onehot = np.eye(10)[lab].reshape(len(lab), 50)
    x = torch.tensor(onehot @ rng.normal(size=(50, 64)) + 0.3 * rng.normal(size=(len(lab), 64)), dtype=torch.float32)
    score = score_probe(make_probe(probe), x, lab, FAST, seed=0)
    assert score.accuracy > 0.9, score
    assert score.control_accuracy < 0.15, score
    assert score.selectivity > 0.75
    assert score.ci_low <= score.accuracy <= score.ci_high


def test_noise_features_stay_at_chance():
    lab = _labels(2000, seed=2)
    x = torch.randn(len(lab), 32)
    score = score_probe(LinearProbe(), x, lab, FAST, seed=0, control=False)
    assert 0.06 < score.accuracy < 0.14
    assert np.isnan(score.control_accuracy)


def test_batched_fit_flags_the_cap_and_stops_on_patience():
    from memento_lens.probes.train import FitTask, fit_batched

    rng = np.random.default_rng(3)
    lab = _labels(1200, seed=3)
    signal = torch.tensor(np.eye(10)[lab].reshape(len(lab), 50) @ rng.normal(size=(50, 32)), dtype=torch.float32)
    noise = torch.randn(len(lab), 32)
    idx = np.arange(len(lab))
    cfg = TrainConfig(max_epochs=3, patience=10, lr=1e-4)
    tasks = [FitTask(0, 0, 0), FitTask(1, 0, 0)]
    res = fit_batched(LinearProbe(), [signal, noise], [lab], tasks, idx[:900], idx[900:1000], idx[1000:], cfg)
    # patience cannot end a 3-epoch run: the cap does, and says so
    assert res.hit_cap.all() and (res.epochs == 3).all()
    assert res.correct.shape == (2, 200, 5) and res.curves.shape[:2] == (2, 3)
    long = TrainConfig(max_epochs=200, patience=2, lr=3e-3)
    res = fit_batched(LinearProbe(), [noise], [lab], [FitTask(0, 0, 0)], idx[:900], idx[900:1000], idx[1000:], long)
    assert not res.hit_cap[0] and res.epochs[0] < 200  # nothing to learn: patience ends it
    assert res.epochs[0] == res.best_epoch[0] + 2


def test_equal_features_and_seed_give_equal_fits_whatever_else_is_in_the_batch():
    from memento_lens.probes.train import FitTask, fit_batched

    lab = _labels(600, seed=4)
    x = torch.randn(len(lab), 24)
    other = torch.randn(len(lab), 24)
    idx = np.arange(len(lab))
    cfg = TrainConfig(max_epochs=5, patience=5)
    args = (idx[:400], idx[400:450], idx[450:], cfg)
    alone = fit_batched(MLPProbe(), [x], [lab], [FitTask(0, 0, 7)], *args)
    batched = fit_batched(MLPProbe(), [other, x], [lab], [FitTask(0, 0, 1), FitTask(1, 0, 7)], *args)
    np.testing.assert_array_equal(alone.correct[0], batched.correct[1])


def test_lbfgs_linear_probe_recovers_a_planted_signal_and_ignores_seeds():
    pytest.importorskip("sklearn")
    from memento_lens.probes.train import FitTask, fit_logistic

    rng = np.random.default_rng(5)
    lab = _labels(1500, seed=5)
    x = torch.tensor(
        np.eye(10)[lab].reshape(len(lab), 50) @ rng.normal(size=(50, 40)) + 0.5 * rng.normal(size=(1500, 40))
    )
    noise = torch.randn(len(lab), 40)
    idx = np.arange(len(lab))
    tasks = [FitTask(0, 0, 0), FitTask(0, 0, 1), FitTask(1, 0, 0)]
    res = fit_logistic([x, noise], [lab], tasks, idx[:1200], idx[1200:], TrainConfig())
    assert res.correct[0].mean() > 0.9 and 0.05 < res.correct[2].mean() < 0.15
    np.testing.assert_array_equal(res.correct[0], res.correct[1])  # convex: the seed changes nothing
    assert not res.hit_cap[0]
