"""Restart ablation and KV patching on a small random toy-vocabulary model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import small_toy_model
from memento_lens.probes.ablation import (
    DIRECTIONS,
    capture_world,
    patch_rows,
    patch_sweep,
    restart_ablation,
    restart_rows,
    score_segment,
    toy_generated_accuracy,
    toy_layout,
)
from memento_lens.probes.patching import surgery_patches
from memento_lens.runtime.toy.task import sample


@pytest.fixture(scope="module")
def setup():
    model = small_toy_model(seed=1)
    layout = toy_layout()
    batch = sample(8, 2)
    ids = torch.from_numpy(batch.token_ids)
    pos = layout.all_memento_positions()
    caps = {
        "normal": capture_world(model, ids, layout.normal_visible, pos),
        "restart": capture_world(model, ids, layout.restart_visible, pos),
    }
    return model, layout, batch, ids, caps


def test_restart_world_hides_earlier_blocks_but_not_the_own_block():
    layout = toy_layout()
    vis = layout.restart_world(3)
    rewind, pos, start, end = layout.restart_ranges[3]
    digit_row = layout.targets[3][0]
    assert vis[digit_row, start:end].all()  # memento 3 is generated seeing block 3
    r2 = layout.restart_ranges[2]
    assert not vis[digit_row, r2[2] : r2[3]].any()  # block 2 (with delimiters) is gone
    assert not vis[layout.memento_spans[2][0], r2[2] : r2[3]].any()  # and memento 2 was recomputed without it


def test_pinned_patch_is_the_identity(setup):
    model, layout, _, ids, caps = setup
    c = 5
    tg, earlier = layout.targets[c], layout.earlier_memento_positions(c)
    base = score_segment(model, ids, layout.normal_visible, tg)
    same = score_segment(
        model,
        ids,
        layout.normal_visible,
        tg,
        surgery_patches(caps["normal"], caps["restart"], layer=99, positions=earlier),
    )
    torch.testing.assert_close(same.logp, base.logp)


def test_restart_kv_at_every_layer_in_the_restart_world_is_the_identity(setup):
    model, layout, _, ids, caps = setup
    c = 4
    tg, earlier = layout.targets[c], layout.earlier_memento_positions(c)
    ref = score_segment(model, ids, layout.restart_world(c), tg)
    got = score_segment(
        model, ids, layout.restart_world(c), tg, surgery_patches(caps["restart"], caps["restart"], None, earlier)
    )
    torch.testing.assert_close(got.logp, ref.logp, rtol=1e-4, atol=1e-5)


def test_patching_one_layer_changes_the_continuation(setup):
    model, layout, _, ids, caps = setup
    c = 4
    tg, earlier = layout.targets[c], layout.earlier_memento_positions(c)
    base = score_segment(model, ids, layout.normal_visible, tg)
    patched = score_segment(
        model, ids, layout.normal_visible, tg, surgery_patches(caps["normal"], caps["restart"], 1, earlier)
    )
    assert (patched.logp - base.logp).abs().max() > 1e-4
    head = score_segment(
        model,
        ids,
        layout.normal_visible,
        tg,
        surgery_patches(caps["normal"], caps["restart"], 1, earlier, head=0, head_dim=16),
    )
    torch.testing.assert_close(head.logp, patched.logp)  # one KV head in this model: head 0 = all


def test_restart_matches_the_toy_evaluator(setup):
    from memento_lens.runtime.toy.evaluate import predicted_mementos

    model, layout, batch, _, _ = setup
    acc = restart_ablation(model, batch.token_ids, layout)
    pred = predicted_mementos(model, batch, "restart")
    target = batch.token_ids[:, batch.layout.all_memento_digits()]
    for c in (1, 6):
        np.testing.assert_allclose(acc.get(("restart", c, "accuracy")), (pred[:, c] == target[:, c]).mean(1))
    rows = restart_rows(acc, layout, "m")
    assert {r["metric"] for r in rows} >= {"accuracy_teacher_forced", "nll_teacher_forced", "kl_teacher_forced"}


def test_patch_sweep_rows_follow_the_contract(setup):
    model, layout, batch, _, _ = setup
    acc = patch_sweep(model, batch.token_ids[:3], layout, [0, 1], heads=(-1,))
    rows = patch_rows(acc, layout, "m", [0, 1], [-1], list(DIRECTIONS))
    keys = {
        "experiment",
        "model",
        "checkpoint",
        "variant",
        "layer",
        "head",
        "direction",
        "metric",
        "value",
        "ci_low",
        "ci_high",
        "n",
    }
    assert all(set(r) == keys for r in rows)
    assert {(r["direction"], r["layer"]) for r in rows if r["metric"] == "kl"} == {
        (d, ly) for d in DIRECTIONS for ly in (0, 1)
    }


def test_generated_accuracy_shape(setup):
    model, layout, batch, _, _ = setup
    out = toy_generated_accuracy(model, batch.token_ids[:2], layout, "restart")
    assert out.shape == (2, len(layout.segments)) and out.dtype == bool


def test_library_experiments_match_the_low_level_functions():
    """restart_experiment / patch_experiment (what the CLI and the demo call) give the rows the building blocks
    give on the same sequences."""
    from memento_lens.probes.ablation import ablation_inputs, patch_experiment, restart_experiment
    from memento_lens.runtime.model import from_objects

    model = small_toy_model(seed=3)
    inputs = ablation_inputs("toy", samples=5, seed=4, loaded=from_objects(model))
    assert inputs.can_generate and inputs.token_ids.shape == (5, toy_layout().normal_visible.shape[0])
    res = restart_experiment(inputs, "toy@step-1", generated=False)
    acc = restart_ablation(model, inputs.token_ids, inputs.layout)
    want = restart_rows(acc, inputs.layout, "toy@step-1", "step-1")
    assert res.rows.to_dict("records") == want
    assert set(res.blocks["segment"]) == set(inputs.layout.segments)
    assert "not run" in res.info["generated"]
    pr = patch_experiment(inputs, "toy", layers=[-1], heads=[0], directions=["restart->normal"])
    assert set(pr.rows["layer"]) == {-1, 1} and set(pr.rows["head"]) == {-1, 0}
    assert set(pr.rows.loc[pr.rows["layer"] == 1, "direction"]) == {"restart->normal"}


def test_bad_direction_and_head_name_the_option_and_write_nothing(tmp_path):
    from memento_lens.probes.ablation import ablation_inputs, patch_experiment, run_patch
    from memento_lens.probes.features import ProbeInputError
    from memento_lens.runtime.model import from_objects

    with pytest.raises(ProbeInputError, match="--directions: unknown 'sideways'"):
        run_patch(tmp_path / "p", directions=["sideways"])
    assert not (tmp_path / "p").exists()
    inputs = ablation_inputs("toy", samples=2, loaded=from_objects(small_toy_model()))
    with pytest.raises(ProbeInputError, match="--heads"):
        patch_experiment(inputs, "toy", layers=[0], heads=[5])


def _words(*idx: int, repeat: int = 1) -> str:
    # random:tiny's word-level vocabulary; long enough that the prompt template's few <unk> stay under 2%
    return " ".join(f"w{i}" for i in idx * repeat)


SMALL_TRACE = {
    "problem": _words(1, 2, 3),
    "segments": [
        {"type": "block", "block_idx": 1, "text": _words(4, 5, 6, 7, 8, repeat=30)},
        {"type": "summary", "block_idx": 1, "text": _words(9, 10)},
        {"type": "block", "block_idx": 2, "text": _words(11, 12, 13, 14, repeat=30)},
        {"type": "summary", "block_idx": 2, "text": _words(15)},
        {"type": "block", "block_idx": 3, "text": _words(16, 17, 18, repeat=30)},
        {"type": "summary", "block_idx": 3, "text": _words(19, 20)},
        {"type": "answer", "text": _words(21)},
    ],
}


@pytest.fixture(scope="module")
def real_trace_inputs(tmp_path_factory):
    """A small Memento JSON trace (3 blocks) read by the trace layer, on a random non-toy model (random:tiny)."""
    from memento_lens.probes.ablation import ablation_inputs
    from memento_lens.runtime.model import load_model

    path = tmp_path_factory.mktemp("trace") / "small.json"
    path.write_text(json.dumps(SMALL_TRACE))
    lm = load_model("random:tiny")
    assert not lm.is_toy
    return ablation_inputs("random:tiny", trace=path, loaded=lm)


def test_real_trace_restart_has_no_ci_for_one_sequence_and_a_bar_per_segment(real_trace_inputs, capsys):
    """issue 20: one real trace is one sequence, so no CI is claimed (null bounds, a note; never `nan` printed)
    and the bar moves once per segment instead of jumping 0/1 -> 1/1."""
    import math

    from memento_lens.probes.ablation import restart_experiment

    from memento_lens.cli_probes import _report_ablation

    inputs = real_trace_inputs
    assert not inputs.can_generate and inputs.info["task"] == "trace" and inputs.token_ids.shape[0] == 1
    calls = []
    res = restart_experiment(inputs, "random:tiny", progress=lambda stage, d, t: calls.append((d, t)))
    segs = len(inputs.layout.segments)
    assert segs >= 2 and calls == [(k, segs) for k in range(1, segs + 1)]
    assert (res.rows["n"] == 1).all() and res.rows["ci_low"].isna().all() and res.rows["ci_high"].isna().all()
    assert all(not math.isnan(v) for v in res.rows["value"])
    assert res.info["ci"].startswith("n = 1: no CI")

    class Run:
        def notes(self):
            return []

    res.run = Run()
    _report_ablation(res, "out", False, res.rows[["variant", "metric", "value", "ci_low", "ci_high", "n"]])
    printed = capsys.readouterr().out
    assert "n = 1: no CI" in printed and "nan" not in printed.lower()
    _report_ablation(res, "out", True, None)
    rows = json.loads(capsys.readouterr().out)
    assert all(r["ci_low"] is None and r["ci_high"] is None for r in rows)


def test_toy_ablation_still_gives_cis_and_the_task_comes_from_the_model():
    """The toy task is chosen because the model says it is a toy (LoadedModel.is_toy, from its config), and with
    two or more sequences every row has a CI around its value."""
    from memento_lens.probes.ablation import ToyAblationTask, ablation_inputs, ablation_task, restart_experiment
    from memento_lens.probes.features import ProbeInputError
    from memento_lens.runtime.model import from_objects, random_causal_lm

    lm = from_objects(small_toy_model(seed=1))
    assert lm.is_toy and isinstance(ablation_task(lm), ToyAblationTask)
    with pytest.raises(ProbeInputError, match="--trace is required"):
        ablation_task(from_objects(random_causal_lm(vocab_size=200)))
    res = restart_experiment(ablation_inputs("toy", samples=4, loaded=lm), "toy", generated=False)
    assert (res.rows["ci_low"] <= res.rows["value"]).all() and (res.rows["value"] <= res.rows["ci_high"]).all()
    assert "ci" not in res.info
