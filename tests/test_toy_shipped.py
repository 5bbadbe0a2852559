"""The shipped toy model: resolution of toy / toy@<checkpoint>, offline loading, `toy eval --json`."""

from __future__ import annotations

import json

import pytest
import torch
from memento_lens.runtime.toy.shipped import (
    WEIGHTS_DIR,
    ToyModelError,
    checkpoint_info,
    list_checkpoints,
    load_toy,
    toy_model_dir,
    training_log,
)
from typer.testing import CliRunner

pytestmark = pytest.mark.skipif(
    not (WEIGHTS_DIR / "manifest.json").exists(),
    reason="shipped toy weights not built (memento-lens toy train --out runtime/toy/weights)",
)


def test_checkpoints_listed_and_logged():
    names = list_checkpoints()
    assert names[0] == "final" and len(names) >= 5
    assert all(n.startswith("step-") for n in names[1:])
    log = training_log()
    logged = {c["name"]: c for c in log["checkpoints"]}
    for n in names[1:]:
        assert 0.0 <= logged[n]["memento_exact"] <= 1.0
        assert checkpoint_info(f"toy@{n}")["memento_exact"] == logged[n]["memento_exact"]
    assert log["command"].startswith("memento-lens toy train")
    total = sum(p.stat().st_size for p in WEIGHTS_DIR.rglob("*") if p.is_file())
    assert total < 15 * 2**20


def test_resolution():
    assert toy_model_dir("toy") == WEIGHTS_DIR / "final"
    step = list_checkpoints()[1]
    assert toy_model_dir(f"toy@{step}") == WEIGHTS_DIR / step
    assert toy_model_dir("toy@final") == WEIGHTS_DIR / "final"
    with pytest.raises(ToyModelError, match=r"unknown toy checkpoint 'step-7'; available: toy@final, toy@step-"):
        toy_model_dir("toy@step-7")
    with pytest.raises(ToyModelError, match="not a toy spec"):
        toy_model_dir("toys")
    with pytest.raises(ToyModelError, match=r"'toy@': empty checkpoint after '@'"):
        toy_model_dir("toy@")


def test_load_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tok = load_toy("toy")
    assert next(model.parameters()).dtype == torch.float32 and not model.training
    assert model.config.num_hidden_layers == 4 and model.config.hidden_size == 128
    n = sum(p.numel() for p in model.parameters())
    assert 700_000 < n < 900_000
    early, _ = load_toy(f"toy@{list_checkpoints()[1]}", dtype=torch.float32)
    assert next(early.parameters()).dtype == torch.float32


def test_runtime_load_model_uses_shipped_dir():
    runtime_model = pytest.importorskip("memento_lens.runtime.model")
    loaded = runtime_model.load_model("toy", dtype="float32")
    ref, _ = load_toy("toy")
    ids = torch.tensor([[1, 3, 8, 9, 10, 11, 12, 4, 5]])
    torch.testing.assert_close(loaded.model(input_ids=ids).logits, ref(input_ids=ids).logits)


def test_eval_json_shape():
    from memento_lens.cli import app

    res = CliRunner().invoke(app, ["toy", "eval", "--model", "toy", "--json", "-n", "24"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert set(data) == {"vanilla", "memento", "restart", "n"} and data["n"] == 24
    for mode in ("vanilla", "memento", "restart"):
        assert set(data[mode]) == {"exact", "digit"}
        assert 0.0 <= data[mode]["exact"] <= data[mode]["digit"] <= 1.0


def test_eval_bad_checkpoint_is_one_line():
    from memento_lens.cli import app

    res = CliRunner().invoke(app, ["toy", "eval", "--model", "toy@nope", "--json"])
    assert res.exit_code == 2
    assert "unknown toy checkpoint 'nope'; available: toy@final" in res.stderr
