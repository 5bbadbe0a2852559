"""The channel decomposition must be able to fail: a planted channel is found, identical worlds give zero, the
untrained toy shows its channel. Statistics on hand-built arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import small_toy_model
from memento_lens.probes.features import MementoFeatures
from memento_lens.probes.passcode import (
    ALL_LAYERS,
    PasscodeConfig,
    PasscodeFeatures,
    extract_features,
    plan,
    probe_features,
    run_passcode,
    text_features,
)
from memento_lens.probes.tasks import ToyPasscodeTask
from memento_lens.probes.train import TrainConfig, paired_bootstrap

FAST = TrainConfig(
    max_epochs=40, patience=5, smooth=2, min_epochs=3, lr=3e-3, seeds=2, n_boot=300, linear_solver="adam"
)


# -- pure statistics ---------------------------------------------------------------------------------------------
def test_paired_bootstrap_on_identical_worlds_is_exactly_zero():
    rng = np.random.default_rng(0)
    a = rng.random((3, 200, 5)) < 0.3
    st = paired_bootstrap(a, a.copy(), 300)
    assert st["diff"] == 0 and st["diff_ci_low"] == 0 and st["diff_ci_high"] == 0
    assert st["accuracy"] == st["b_accuracy"] == pytest.approx(a.mean())
    assert st["ci_low"] < st["accuracy"] < st["ci_high"]


def test_paired_bootstrap_difference_and_its_pairing():
    rng = np.random.default_rng(1)
    b = rng.random((2, 400, 5)) < 0.2
    a = b | (rng.random((2, 400, 5)) < 0.25)  # a = b plus extra hits: a paired, always >= b
    st = paired_bootstrap(a, b, 500)
    assert st["diff"] == pytest.approx(a.mean() - b.mean())
    assert 0 < st["diff_ci_low"] < st["diff"] < st["diff_ci_high"]
    # pairing: the difference's CI is narrower than the two accuracies' CIs would suggest unpaired
    assert st["diff_ci_high"] - st["diff_ci_low"] < (st["ci_high"] - st["ci_low"]) + (st["b_ci_high"] - st["b_ci_low"])
    with pytest.raises(ValueError, match="same seeds and samples"):
        paired_bootstrap(a, b[:, :300])


def test_paired_bootstrap_ci_covers_seed_noise():
    """Two seeds that disagree completely: a CI over samples alone would be narrow; over seeds it must span both."""
    a = np.zeros((2, 500, 5), bool)
    a[0] = True  # seed 0 always right, seed 1 always wrong
    st = paired_bootstrap(a, None, 400)
    assert st["accuracy"] == pytest.approx(0.5)
    assert st["ci_low"] == pytest.approx(0.0) and st["ci_high"] == pytest.approx(1.0)


def test_text_features_one_hot_per_position():
    tokens = np.array([[5, 7], [6, 7], [5, 7]])
    x = text_features(tokens).numpy()
    np.testing.assert_array_equal(x, [[1, 0, 1], [0, 1, 1], [1, 0, 1]])


# -- planted channels --------------------------------------------------------------------------------------------
def _planted(n: int, seed: int = 0) -> PasscodeFeatures:
    """Mementos 0..2 at layers 0 and 1: the passcode is written into the normal world's layer-1 K/V of mementos 1
    and 2 only; layer 0 is one shared tensor in both worlds; the restart world is noise; the text is noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=(n, 5))
    onehot = np.eye(10)[labels].reshape(n, 50)
    proj = rng.normal(size=(50, 2 * 3 * 8))
    worlds = {}
    layer0 = {mb: torch.randn(n, 2, 3, 8, generator=torch.Generator().manual_seed(mb)) for mb in range(3)}
    for world in ("normal", "restart"):
        kv = {}
        for mb in range(3):
            kv[(mb, 0)] = layer0[mb]
            noise = rng.normal(size=(n, 48))
            signal = onehot @ proj if (world == "normal" and mb >= 1) else 0.0
            kv[(mb, 1)] = torch.tensor(signal + 1.0 * noise, dtype=torch.float32).view(n, 2, 3, 8)
        worlds[world] = MementoFeatures(kv=kv, labels=torch.as_tensor(labels))
    text = {mb: torch.as_tensor(rng.integers(0, 10, size=(n, 3 * (mb + 1)))) for mb in range(3)}
    return PasscodeFeatures(worlds=worlds, text_tokens=text, ceilings={0: 0.1, 1: 0.16, 2: 0.16}, task="planted")


@pytest.fixture(scope="module")
def planted_rows():
    feats = _planted(1500)
    cfg = PasscodeConfig(distances=(1,), probes=("linear",), train=FAST, control=False)
    task = ToyPasscodeTask()
    conds, _ = task.conditions((1,), cfg.conditions)
    pairs, layers = plan(cfg, 2, conds)
    rows, curves, _ = probe_features(feats, cfg, pairs, layers)
    return rows, curves


def test_planted_channel_is_detected_with_a_ci_excluding_zero(planted_rows):
    rows, _ = planted_rows
    for cond in ("direct", "masked"):
        r = rows[(rows.condition == cond) & (rows.layer == 1)].iloc[0]
        assert r.accuracy > 0.5, r
        assert 0.06 < r.restart_accuracy < 0.14, r
        assert r.excess_ci_low > 0.3, r
        assert 0.06 < r.text_accuracy < 0.14, r
    both = rows[(rows.condition == "masked") & (rows.layer == ALL_LAYERS)].iloc[0]
    assert both.excess_ci_low > 0.3


def test_identical_worlds_give_zero_excess_within_its_ci(planted_rows):
    rows, _ = planted_rows
    layer0 = rows[rows.layer == 0]
    assert len(layer0) == 3
    for r in layer0.itertuples():
        assert r.excess_ci_low <= 0 <= r.excess_ci_high
        assert r.implicit_excess == pytest.approx(0.0)


def test_nothing_planted_before_the_block_stays_at_chance(planted_rows):
    rows, _ = planted_rows
    ctrl = rows[(rows.condition == "causal_control") & (rows.layer == 1)].iloc[0]
    assert ctrl.role == "pipeline_check"
    assert 0.06 < ctrl.accuracy < 0.14
    assert ctrl.excess_ci_low <= 0 <= ctrl.excess_ci_high


def test_learning_curves_and_cap_are_recorded(planted_rows):
    rows, curves = planted_rows
    assert set(curves.world) == {"normal", "restart", "text"}
    assert (rows.max_epochs == FAST.max_epochs).all()
    one = curves[(curves.condition == "direct") & (curves.layer == 1) & (curves.world == "normal")]
    assert one.groupby("seed").epoch.max().min() >= FAST.patience + 1
    assert rows.hit_cap.dtype == bool
    # how every fit stopped, per row and per curve
    assert set(rows.stopped_by) <= {"plateau", "patience", "cap"} and rows.still_improving.dtype == bool
    assert (rows.best_epoch <= rows.epochs).all() and (one.best_epoch <= one.epoch.max()).all()
    assert set(one.stopped_by) <= {"plateau", "patience", "cap"}


# -- real K/V ---------------------------------------------------------------------------------------------------
def _toy_model(seed: int, small: bool):
    from memento_lens.runtime.toy.model import ToyModelConfig, build_model

    return small_toy_model(seed) if small else build_model(ToyModelConfig(), seed=seed).eval()


def test_layer0_kv_is_the_same_in_both_worlds():
    """Layer-0 K/V depend only on the token and its position: restart changes nothing there, and does change
    the next layer's K/V of the memento that saw its block."""
    task = ToyPasscodeTask()
    model = _toy_model(0, small=True)
    samples = task.samples(8, seed=0)
    feats = extract_features(task, model, samples, [1, 2], [0, 1])
    n, r = feats.worlds["normal"], feats.worlds["restart"]
    for mb in (1, 2):
        torch.testing.assert_close(n.kv[(mb, 0)], r.kv[(mb, 0)], rtol=0, atol=0)
    assert not torch.allclose(n.kv[(1, 1)].float(), r.kv[(1, 1)].float())


@pytest.mark.slow
def test_untrained_toy_shows_an_implicit_channel():
    """Random init of the toy config (seed 0): its masked +1 memento K/V at the last layer carry more of block 1
    than the same memento recomputed without its block (issue 10 measured 33% vs 14% with 5K samples)."""
    cfg = PasscodeConfig(
        model="toy-init",
        task="toy",
        samples=3000,
        layers=(-1,),
        conditions=("masked",),
        distances=(1,),
        probes=("linear",),
        control=False,
        text=False,
        data_seeds=1,
        worlds=(),
        train=TrainConfig(seeds=1, n_boot=300),
    )
    from memento_lens.runtime.model import from_objects

    res = run_passcode(cfg, from_objects(_toy_model(0, small=False), None, name="toy-init"), task=ToyPasscodeTask())
    r = res.rows.iloc[0]
    assert r.excess_ci_low > 0, r
    assert r.accuracy > r.text_ceiling, r


# -- reference worlds, data replicates, the corrected check (issue 18 items 2-3) ----------------------------------
def _planted_worlds(n: int, seed: int, leak: bool = False) -> PasscodeFeatures:
    """As :func:`_planted`, plus reference worlds: ``same_sum`` and ``foreign`` carry no passcode (noise, like
    restart), ``delimiter_hidden`` is the normal world itself (the channel does not run through delimiters).
    ``leak``: the passcode also planted in memento 0 (the causal control), which the check must catch."""
    base = _planted(n, seed)
    rng = np.random.default_rng(seed + 100)
    labels = base.labels
    onehot = np.eye(10)[labels].reshape(n, 50)
    worlds = dict(base.worlds)
    for w in ("same_sum", "foreign"):
        kv = {
            k: (v if k[1] == 0 else torch.tensor(rng.normal(size=(n, 48)), dtype=torch.float32).view(n, 2, 3, 8))
            for k, v in base.worlds["restart"].kv.items()
        }
        worlds[w] = MementoFeatures(kv=kv, labels=torch.as_tensor(labels))
    worlds["delimiter_hidden"] = base.worlds["normal"]
    if leak:
        sig = torch.tensor(onehot @ rng.normal(size=(50, 48)) + rng.normal(size=(n, 48)), dtype=torch.float32)
        worlds["normal"] = MementoFeatures(
            kv={**worlds["normal"].kv, (0, 1): sig.view(n, 2, 3, 8)}, labels=torch.as_tensor(labels)
        )
    return PasscodeFeatures(
        worlds=worlds, text_tokens=base.text_tokens, ceilings=base.ceilings, task="planted", data_seed=seed
    )


def _rows(reps, **kw):
    cfg = PasscodeConfig(distances=(1,), probes=("linear",), control=False, train=TrainConfig(n_boot=300), **kw)
    conds, _ = ToyPasscodeTask().conditions((1,), cfg.conditions)
    pairs, layers = plan(cfg, 2, conds)
    return probe_features(reps, cfg, pairs, layers)[0]


@pytest.fixture(scope="module")
def replicate_rows():
    return _rows([_planted_worlds(1200, 0), _planted_worlds(1000, 1)])


def test_reference_worlds_say_which_route_the_channel_takes(replicate_rows):
    rows = replicate_rows
    r = rows[(rows.condition == "masked") & (rows.layer == 1)].iloc[0]
    assert r.excess_same_sum_ci_low > 0.3 and r.excess_foreign_ci_low > 0.3  # the references lose the passcode
    assert r.excess_delimiter_hidden == 0.0 == r.excess_delimiter_hidden_ci_low  # not through the delimiters
    assert 0.06 < r.same_sum_accuracy < 0.14
    layer0 = rows[rows.layer == 0]
    assert (layer0.excess_same_sum == 0).all() and (layer0.excess_foreign == 0).all()  # one shared tensor


def test_rows_pool_independent_data_replicates(replicate_rows):
    rows = replicate_rows
    assert (rows.n_data_seeds == 2).all() and (rows.n_seeds == 3).all()
    one = _rows([_planted_worlds(1200, 0)])
    assert (one.n_data_seeds == 1).all()
    assert rows.n_val.iloc[0] > one.n_val.iloc[0]  # validation samples of both replicates
    assert (rows.layer != -1).all() and ALL_LAYERS in set(rows.layer)  # the concatenation is never "layer -1"


def test_causal_control_check_passes_a_null_and_fails_a_leak(replicate_rows):
    ctrl = replicate_rows[replicate_rows.condition == "causal_control"]
    assert len(ctrl) == 3 and set(ctrl.check) == {"pass"}
    assert ctrl.check_alpha.iloc[0] == pytest.approx(0.05 / 3)  # Bonferroni over the 3 check rows
    meas = replicate_rows[replicate_rows.role == "measurement"]
    assert set(meas.check) == {""}
    leak = _rows([_planted_worlds(1200, 0, leak=True), _planted_worlds(1000, 1, leak=True)])
    bad = leak[(leak.condition == "causal_control") & (leak.layer == 1)].iloc[0]
    assert bad.check == "fail" and bad.check_bound > 0.1


def test_config_errors_name_the_option_before_anything_runs():
    from memento_lens.probes.features import ProbeInputError

    with pytest.raises(ProbeInputError, match="--trace code.json: the toy task"):
        PasscodeConfig(model="toy", trace="code.json")
    with pytest.raises(ProbeInputError, match="--distances"):
        PasscodeConfig(distances=(0,))
    with pytest.raises(ProbeInputError, match="--worlds: unknown vanilla"):
        PasscodeConfig(worlds=("vanilla",))
    with pytest.raises(ProbeInputError, match="--samples 5"):
        PasscodeConfig(samples=5)
    with pytest.raises(ProbeInputError, match="--heads"):
        PasscodeConfig(heads=(-1,))


def test_a_distance_beyond_the_task_fails_before_any_replay(monkeypatch):
    import memento_lens.probes.passcode as pc
    from memento_lens.probes.features import ProbeInputError
    from memento_lens.runtime.model import from_objects

    def boom(*a, **k):
        raise AssertionError("features extracted before the distance was checked")

    monkeypatch.setattr(pc, "extract_features", boom)
    cfg = PasscodeConfig(model="toy-small", task="toy", samples=40, distances=(100,))
    with pytest.raises(ProbeInputError, match=r"^--distances 100: distance 100 beyond"):
        run_passcode(cfg, from_objects(small_toy_model(0), None, name="toy-small"), task=ToyPasscodeTask())


def test_feature_progress_moves_per_batch_in_every_world():
    task = ToyPasscodeTask()
    samples = task.samples(40, seed=0)
    calls = []
    extract_features(
        task,
        small_toy_model(0),
        samples,
        [1, 2],
        [0],
        worlds=("normal", "restart", "delimiter_hidden"),
        batch_size=16,
        progress=lambda stage, done, total: calls.append((stage, done, total)),
    )
    by_stage = {}
    for stage, done, total in calls:
        by_stage.setdefault(stage, []).append(done)
        assert total == 40
    assert len(by_stage) == 3 and all("data seed 0" in s for s in by_stage)
    for done in by_stage.values():
        assert done == sorted(done) and len(done) >= 3 and done[-1] == 40  # 16, 32, 40: the bar moves per batch


def test_sentinels_print_by_name():
    from memento_lens.probes.passcode import ALL_HEADS, CAUSAL_DISTANCE, label

    assert label("layer", ALL_LAYERS) == "all" and label("layer", 3) == "3"
    assert label("head", ALL_HEADS) == "all" and label("distance", CAUSAL_DISTANCE) == "ctrl"
    assert ALL_LAYERS not in range(-64, 64)  # never read as a layer index by --layers
