"""Probe training: label-unique split, control relabelling, bootstrap CI, planted-signal recovery."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from memento_lens.probes.models import LinearProbe, MLPProbe, make_probe
from memento_lens.probes.train import (
    STOPPED_BY,
    FitTask,
    TrainConfig,
    bootstrap_ci,
    chance_check,
    control_labels,
    fit_batched,
    fit_ridge,
    hierarchical_bootstrap,
    label_unique_split,
    paired_bootstrap,
    passcode_keys,
    plateau_stop,
    score_probe,
    still_improving,
    text_control_labels,
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
    noise = torch.randn(len(lab), 32, generator=torch.Generator().manual_seed(3))
    idx = np.arange(len(lab))
    cfg = TrainConfig(max_epochs=3, patience=10, lr=1e-4)
    tasks = [FitTask(0, 0, 0), FitTask(1, 0, 0)]
    res = fit_batched(LinearProbe(), [signal, noise], [lab], tasks, idx[:900], idx[900:1000], idx[1000:], cfg)
    # patience cannot end a 3-epoch run: the cap does, and says so
    assert res.hit_cap.all() and (res.epochs == 3).all()
    assert res.correct.shape == (2, 200, 5) and res.curves.shape[:2] == (2, 3)
    long = TrainConfig(max_epochs=200, patience=2, lr=3e-3)
    # constant features: nothing to learn beyond the label prior, so the stop curve goes flat and the plateau rule
    # ends the fit (random-noise features drift by chance, which the rule rightly calls "patience" on a rise)
    flat = torch.zeros(len(lab), 32)
    res = fit_batched(LinearProbe(), [flat], [lab], [FitTask(0, 0, 0)], idx[:900], idx[900:1000], idx[1000:], long)
    assert not res.hit_cap[0] and res.epochs[0] < 200  # nothing to learn: the plateau rule ends it
    assert res.stopped_by[0] == "plateau" and not res.still_improving[0] and res.epochs[0] >= long.min_epochs
    assert list(res.stopped_by[:0]) == [] and set(res.stopped_by) <= set(STOPPED_BY)


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


def test_a_stopped_model_leaves_the_batch_and_the_others_train_on_unchanged():
    from memento_lens.probes.train import FitTask, fit_batched

    rng = np.random.default_rng(6)
    lab = _labels(700, seed=6)
    signal = torch.tensor(
        np.eye(10)[lab].reshape(len(lab), 50) @ rng.normal(size=(50, 24)) * 0.4 + rng.normal(size=(700, 24)),
        dtype=torch.float32,
    )
    flat = torch.zeros(len(lab), 24)  # nothing to learn: its stop curve is flat from the start
    idx = np.arange(len(lab))
    cfg = TrainConfig(max_epochs=40, patience=4, min_epochs=5, lr=3e-3)
    args = (idx[:500], idx[500:580], idx[580:], cfg)
    tasks = [FitTask(1, 0, 3), FitTask(0, 0, 7), FitTask(1, 0, 5)]  # (features, labels, seed): flat, signal, flat
    both = fit_batched(MLPProbe(), [signal, flat], [lab], tasks, *args)
    # the two flat models stop first, at different epochs, so the stack shrinks twice
    assert both.epochs[0] != both.epochs[2] and max(both.epochs[0], both.epochs[2]) < both.epochs[1]
    # only live models are computed: the accounting is the sum of each model's epochs, not 3 x the longest
    assert both.model_epochs == int(both.epochs.sum()) < 3 * int(both.epochs.max())
    for i, t in enumerate(tasks):
        alone = fit_batched(MLPProbe(), [signal, flat], [lab], [t], *args)
        np.testing.assert_array_equal(alone.correct[0], both.correct[i])
        assert alone.epochs[0] == both.epochs[i] and alone.best_epoch[0] == both.best_epoch[i]
        np.testing.assert_array_equal(alone.curves[0], both.curves[i, : alone.curves.shape[1]])


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


# -- the plateau stopping rule (issue 18 item 1) ---------------------------------------------------------------
RULE = TrainConfig(patience=30, smooth=5, min_delta=0.002, max_epochs=100, min_epochs=10)


def test_plateau_rule_on_hand_built_curves():
    e = np.arange(1, 101)
    rising = 0.1 + 0.004 * e  # still climbing at the cap
    assert plateau_stop(rising, RULE) == (100, "cap", True)
    flat_after_20 = np.minimum(0.1 + 0.01 * e, 0.3)
    stop, how, imp = plateau_stop(flat_after_20, RULE)
    assert how == "plateau" and not imp and 20 + 30 <= stop <= 20 + 30 + RULE.smooth
    noise = 0.1 + 0.01 * np.random.default_rng(0).standard_normal(100)
    stop, how, imp = plateau_stop(noise, RULE)
    assert how == "plateau" and not imp and stop < 60  # a noisy flat curve is a plateau, not "improving"
    # a dip and a slow recovery that never beats the best by min_delta: the counter ends it on a rising curve
    dip = np.concatenate([np.linspace(0.1, 0.5, 10), np.linspace(0.3, 0.5, 90)])
    stop, how, imp = plateau_stop(dip, RULE)
    assert how == "patience" and imp
    short = TrainConfig(patience=3, smooth=1, min_delta=0.0, min_epochs=1)  # the old quick rule stops at once
    assert plateau_stop(np.r_[0.2, 0.19, 0.19, 0.19, rising], short)[0] == 4


def test_still_improving_needs_a_real_trend():
    assert still_improving(np.linspace(0.1, 0.2, 30), 30, 0.002)
    assert not still_improving(np.full(30, 0.2), 30, 0.002)
    assert not still_improving(np.linspace(0.2, 0.1, 30), 30, 0.002)


def test_fit_batched_applies_the_same_rule_as_plateau_stop():
    rng = np.random.default_rng(8)
    lab = _labels(1500, seed=8)
    x = torch.tensor(
        np.eye(10)[lab].reshape(len(lab), 50) @ rng.normal(size=(50, 30)) + 3 * rng.normal(size=(1500, 30))
    )
    idx = np.arange(len(lab))
    cfg = TrainConfig(max_epochs=80, patience=8, smooth=3, lr=3e-3, min_epochs=5)
    res = fit_batched(
        LinearProbe(),
        [x.float()],
        [lab],
        [FitTask(0, 0, 0), FitTask(0, 0, 1)],
        idx[:1000],
        idx[1000:1250],
        idx[1250:],
        cfg,
    )
    for i in range(2):
        curve = res.curves[i, : res.epochs[i], 1]
        stop, how, imp = plateau_stop(curve, cfg)
        assert (stop, how, bool(imp)) == (res.epochs[i], res.stopped_by[i], bool(res.still_improving[i]))
        assert 1 <= res.best_epoch[i] <= res.epochs[i]


def test_ridge_probe_recovers_a_planted_signal_in_closed_form():
    rng = np.random.default_rng(5)
    lab = _labels(1500, seed=5)
    x = torch.tensor(
        np.eye(10)[lab].reshape(len(lab), 50) @ rng.normal(size=(50, 40)) + 0.5 * rng.normal(size=(1500, 40))
    )
    noise = torch.randn(len(lab), 40)
    idx = np.arange(len(lab))
    tasks = [FitTask(0, 0, 0), FitTask(0, 0, 1), FitTask(1, 0, 0)]
    res = fit_ridge([x, noise], [lab], tasks, idx[:1000], idx[1000:1200], idx[1200:], TrainConfig())
    assert res.correct[0].mean() > 0.9 and 0.05 < res.correct[2].mean() < 0.15
    np.testing.assert_array_equal(res.correct[0], res.correct[1])  # deterministic: seeds share the fit
    assert list(res.stopped_by) == ["plateau"] * 3 and (res.epochs == 1).all()
    assert res.correct.shape == (3, 300, 5)


# -- power: the hierarchical bootstrap and the corrected chance check (issue 18 item 2) ---------------------------
def test_hierarchical_bootstrap_reduces_to_the_paired_one_and_widens_with_data_seeds():
    rng = np.random.default_rng(0)
    a, b = rng.random((3, 400, 5)) < 0.2, rng.random((3, 400, 5)) < 0.1
    one = hierarchical_bootstrap([a], [b], n_boot=500, seed=3)
    ref = paired_bootstrap(a, b, n_boot=500, seed=3)
    for k in ref:
        assert one[k] == pytest.approx(ref[k], nan_ok=True)
    assert one["n_data_seeds"] == 1
    # a second data seed whose effect is much larger: the point is the mean of the two, the CI spans both
    a2, b2 = rng.random((3, 300, 5)) < 0.4, rng.random((3, 300, 5)) < 0.1
    two = hierarchical_bootstrap([a, a2], [b, b2], n_boot=1000, seed=3)
    assert two["diff"] == pytest.approx(np.mean([(a.mean() - b.mean()), (a2.mean() - b2.mean())]))
    assert two["diff_ci_high"] - two["diff_ci_low"] > 3 * (one["diff_ci_high"] - one["diff_ci_low"])
    assert two["diff_ci_low"] < 0.15 < 0.25 < two["diff_ci_high"]
    same = hierarchical_bootstrap([a, a2], [a.copy(), a2.copy()], n_boot=200)
    assert same["diff"] == same["diff_ci_low"] == same["diff_ci_high"] == 0.0
    with pytest.raises(ValueError, match="same data seeds"):
        hierarchical_bootstrap([a, a2], [b])


def test_chance_check_is_corrected_for_the_number_of_rows():
    rng = np.random.default_rng(1)
    null = [rng.random((3, 400, 5)) < 0.1, rng.random((3, 400, 5)) < 0.1]
    assert chance_check(null, 0.1, n_checks=8)["check"] == "pass"
    leak = [rng.random((3, 400, 5)) < 0.2, rng.random((3, 400, 5)) < 0.2]
    assert chance_check(leak, 0.1, n_checks=8)["check"] == "fail"
    mild = [rng.random((3, 400, 5)) < 0.12, rng.random((3, 400, 5)) < 0.12]
    b1, b8 = chance_check(mild, 0.1, 1), chance_check(mild, 0.1, 8)
    assert b8["check_alpha"] == pytest.approx(0.05 / 8) and b8["check_bound"] < b1["check_bound"]


# -- a control task that can fail (issue 18 item 4) --------------------------------------------------------------
def test_text_control_labels_are_learnable_across_a_label_unique_split():
    rng = np.random.default_rng(2)
    n = 3000
    text = rng.integers(0, 40, size=(n, 1))  # 40 memento texts, each on both sides of any passcode split
    lab = _labels(n, seed=2)
    ctrl = text_control_labels(text, 5, seed=0)
    # a fixed function of the text alone, independent of the other samples present
    np.testing.assert_array_equal(ctrl[:10], text_control_labels(text[:10], 5, seed=0))
    assert (ctrl[text[:, 0] == text[0, 0]] == ctrl[0]).all()
    assert not np.array_equal(ctrl, text_control_labels(text, 5, seed=1))
    assert abs((ctrl == 3).mean() - 0.1) < 0.03
    feats = torch.tensor(np.eye(40)[text[:, 0]], dtype=torch.float32)
    tr, va = label_unique_split(lab, 0.2, 0)
    res = fit_ridge(
        [feats], [ctrl, control_labels(lab, 0)], [FitTask(0, 0, 0), FitTask(0, 1, 0)], tr[:2000], tr[2000:], va
    )
    assert res.correct[0].mean() > 0.9  # the text control can be learned: it measures memorisation
    assert res.correct[1].mean() < 0.15  # the passcode relabelling cannot, by construction


def test_ridge_dual_form_equals_the_primal_and_never_builds_a_feature_gram(monkeypatch):
    """Features outnumbering the fit rows (a real model's memento span: ~36K features, a 5 GB primal Gram) take
    the dual (kernel) form of the same estimator: the same scores as the primal d x d system (where both are well
    conditioned), and fit_ridge on such features finds a planted signal without building a d x d matrix."""
    from memento_lens.probes import train as T

    rng = np.random.default_rng(0)
    n, d = 240, 400  # d > n_fit: the dual form
    y = rng.integers(0, 10, size=(n, 5))
    x = torch.as_tensor(rng.normal(size=(n, d)), dtype=torch.float32)
    for j in range(5):  # each digit planted one-hot in its own 10 features
        x[np.arange(n), 10 * j + y[:, j]] += 3.0
    fit = torch.arange(150)
    grid = (0.1, 1.0)
    dual = T._RidgeSolver(x, fit, grid)
    assert dual.dual and not hasattr(dual, "gram")
    primal = T._RidgeSolver.__new__(T._RidgeSolver)
    _primal_init(primal, x, fit, grid)
    target = torch.as_tensor(rng.normal(size=(150, 50)), dtype=torch.float32)
    for i in range(len(grid)):
        (a_all, a_fit), (b_all, b_fit) = dual.predict(target, i), primal.predict(target, i)
        torch.testing.assert_close(a_all, b_all, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a_fit, b_fit, rtol=1e-4, atol=1e-5)
    idx = np.arange(n)
    res = T.fit_ridge([x], [y], [T.FitTask(group=0, labels=0, seed=0)], idx[:150], idx[150:190], idx[190:])
    assert res.correct.mean() > 0.3  # the planted signal is found (chance 0.1)


def _primal_init(self, x, fit, grid):
    """The primal form of _RidgeSolver in float64, as the reference."""
    x = x.to(torch.float64)
    mean, std = x[fit].mean(0, keepdim=True), x[fit].std(0, keepdim=True).clamp_min(1e-6)
    self.z = (x - mean) / std
    self.zf = self.z[fit]
    self.dual = False
    system = self.zf.T @ self.zf
    eye = torch.eye(system.shape[0], dtype=system.dtype)
    self.chol = [torch.linalg.cholesky(system + rel * len(fit) * eye) for rel in grid]
