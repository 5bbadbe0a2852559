"""A short toy training run: two stages, checkpoints with accuracy, a loadable HF run directory."""

from __future__ import annotations

import json

import pytest
import torch
from memento_lens.runtime.rundir.store import RunStore
from memento_lens.runtime.toy.shipped import ToyModelError, list_checkpoints, load_toy, toy_model_dir
from memento_lens.runtime.toy.train import TrainConfig, train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "run"
    cfg = TrainConfig(
        steps=6,
        batch_size=8,
        stage1_fraction=0.5,
        warmup_steps=2,
        checkpoints=(3,),
        eval_sequences=16,
        log_every=2,
        threads=0,
    )
    result = train(cfg, out, progress=False, command="test")
    return cfg, result


def test_run_directory(run):
    cfg, result = run
    store = RunStore.open(result.out, require_complete=True)  # every checksum verified
    assert TrainConfig.from_dict(store.read_json("train_config.json")) == cfg
    log = store.read_json("training_log.json")
    assert [c["name"] for c in log["checkpoints"]] == ["step-000003", "step-000006"]
    assert [c["stage"] for c in log["checkpoints"]] == [1, 2]
    assert [row["step"] for row in log["losses"]] == [2, 4, 6]
    for c in log["checkpoints"]:
        assert 0.0 <= c["memento_exact"] <= c["memento_digit"] <= 1.0
    assert list_checkpoints(result.out) == ["final", "step-000003"]
    assert json.loads((result.out / "final" / "checkpoint.json").read_text())["step"] == 6


def test_checkpoints_load(run):
    _, result = run
    model, tok = load_toy("toy", weights_dir=result.out)
    half = toy_model_dir("toy@step-000003", result.out)
    assert json.loads((half / "config.json").read_text())["dtype"] == "float16"
    m3, _ = load_toy(str(half), dtype=torch.float32)
    assert next(m3.parameters()).dtype == torch.float32
    assert tok.convert_ids_to_tokens(3) == "<|block_start|>"
    assert model.config.num_hidden_layers == 4 and model.config.hidden_size == 128


@pytest.mark.slow
def test_training_is_deterministic(run, tmp_path):
    cfg, result = run
    again = train(cfg, tmp_path / "again", progress=False)
    assert [r["loss"] for r in again.losses] == [r["loss"] for r in result.losses]
    assert [c["memento_digit"] for c in again.checkpoints] == [c["memento_digit"] for c in result.checkpoints]


def test_corrupt_and_unknown(run, tmp_path):
    import shutil

    _, result = run
    copy = tmp_path / "copy"
    shutil.copytree(result.out, copy)
    with pytest.raises(ToyModelError, match="available: toy@final, toy@step-000003"):
        toy_model_dir("toy@step-999999", copy)
    (copy / "final" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ToyModelError, match=r"final/model\.safetensors.*toy train --out"):
        toy_model_dir("toy", copy)
    (copy / "step-000003" / "config.json").unlink()
    with pytest.raises(ToyModelError, match=r"step-000003/config\.json: missing.*toy train --out"):
        load_toy("toy@step-000003", weights_dir=copy)


def test_same_training_run_again_is_reused_not_retrained(run, monkeypatch):
    import memento_lens.runtime.toy.train as train_mod

    cfg, result = run
    before = (result.out / "manifest.json").read_bytes()
    monkeypatch.setattr(train_mod, "build_model", lambda *a, **k: pytest.fail("retrained"))
    again = train(cfg, result.out, progress=False, command="test")
    assert again.reused and again.checkpoints == json.loads(json.dumps(result.checkpoints))
    assert (result.out / "manifest.json").read_bytes() == before


def test_failed_overwrite_leaves_the_old_run_and_no_hidden_folder(run, tmp_path):
    """`toy train --overwrite` failing midway: the old run is untouched and nothing staged is left beside it."""
    import dataclasses
    import shutil

    cfg, result = run
    out = tmp_path / "run"
    shutil.copytree(result.out, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def fail(entry):
        raise RuntimeError(f"injected failure at {entry['name']}")

    with pytest.raises(RuntimeError, match="injected failure at step-000003"):
        train(dataclasses.replace(cfg, seed=1), out, overwrite=True, progress=False, on_checkpoint=fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no .run.overwrite-* folder
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert RunStore.open(out, require_complete=True).read_json("train_config.json")["seed"] == cfg.seed
