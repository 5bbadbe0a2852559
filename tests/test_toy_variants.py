"""Toy variants: the passcode-segment layout, the text ceiling, the foreign-block control, fixed-data training."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from memento_lens.runtime.toy.evaluate import block_token_positions, foreign_block_inputs, predicted_mementos
from memento_lens.runtime.toy.model import ToyModelConfig, build_model, count_parameters, hf_config
from memento_lens.runtime.toy.task import (
    DIGIT0,
    ToyLayout,
    encode,
    layout_of,
    passcode_labels,
    sample,
    text_ceiling,
)
from memento_lens.runtime.toy.train import TrainConfig, train
from memento_lens.runtime.toy.variants import VARIANTS, variant

SEG = ToyLayout(passcode_digits=5)


def test_segment_layout_positions_cover_sequence_and_passcode_is_not_summed():
    assert SEG.stride == 17 and SEG.length == 172
    seen = [0, SEG.length - 1]
    for b in range(SEG.n_blocks):
        seen += [SEG.block_start(b), *SEG.block_content(b), *SEG.passcode(b), SEG.block_end(b), *SEG.memento_span(b)]
    assert sorted(seen) == list(range(SEG.length))
    batch = sample(20, 0, SEG)
    # changing every passcode leaves the memento text unchanged: the text floor is chance
    other = encode(batch.digits, SEG, (batch.passcodes + 3) % 10)
    mementos = SEG.all_memento_digits().ravel()
    np.testing.assert_array_equal(other.token_ids[:, mementos], batch.token_ids[:, mementos])
    assert not np.array_equal(other.token_ids, batch.token_ids)
    np.testing.assert_array_equal(batch.token_ids[:, SEG.passcode(1)] - DIGIT0, passcode_labels(batch, 1))


def test_default_layout_passcode_is_block_digits_and_sampling_unchanged():
    batch = sample(5, 3)
    np.testing.assert_array_equal(passcode_labels(batch, 1), batch.digits[:, 1])
    rng = np.random.default_rng(3)
    np.testing.assert_array_equal(batch.digits, rng.integers(0, 10, size=(5, 10, 5)))
    with pytest.raises(ValueError, match="passcodes must be"):
        encode(batch.digits, SEG)


def test_text_ceiling_exact():
    assert text_ceiling(SEG) == 0.1
    # brute force for 2-digit blocks: best guess of a digit given the sum of both
    lay = ToyLayout(block_digits=2)
    best = 0
    for s in range(19):
        counts = [sum(1 for a in range(10) for b in range(10) if a + b == s and a == d) for d in range(10)]
        best += max(counts)
    assert text_ceiling(lay) == pytest.approx(best / 100)
    assert text_ceiling() == pytest.approx(0.1603, abs=1e-4)


def test_layout_recorded_in_model_config():
    assert layout_of(build_model(ToyModelConfig(num_hidden_layers=1), layout=SEG)) == SEG
    assert not hasattr(hf_config(), "toy_layout")  # the shipped toy's config stays as it was
    llama = build_model(ToyModelConfig(architecture="llama", num_key_value_heads=4, num_hidden_layers=1))
    assert llama.config.model_type == "llama" and llama.config.num_key_value_heads == 4
    with pytest.raises(ValueError, match="toy architecture"):
        hf_config(ToyModelConfig(architecture="gpt9"))


def test_variants_are_recipes():
    assert VARIANTS["toy"] == TrainConfig()
    v = variant("segment-llama-mha-epochs")
    assert v.layout == SEG and v.model.architecture == "llama" and v.stage1_fraction == 0 and v.dataset_size > 0
    with pytest.raises(ValueError, match="unknown toy variant 'nope'; known: toy"):
        variant("nope")


def test_foreign_inputs_swap_only_earlier_block_content():
    batch = sample(4, 1, SEG)
    ids = torch.from_numpy(batch.token_ids)
    donor = torch.roll(ids, 1, dims=0)
    mixed = foreign_block_inputs(ids, donor, 3, SEG)
    earlier = np.concatenate([block_token_positions(b, SEG) for b in range(3)])
    rest = np.setdiff1d(np.arange(SEG.length), earlier)
    torch.testing.assert_close(mixed[:, earlier], donor[:, earlier])
    torch.testing.assert_close(mixed[:, rest], ids[:, rest])
    torch.testing.assert_close(foreign_block_inputs(ids, donor, 0, SEG), ids)


def test_foreign_equals_memento_for_a_model_blind_to_block_content():
    """A model whose embeddings map every digit to one vector cannot tell blocks apart: foreign == memento."""
    lay = ToyLayout(n_blocks=3)
    model = build_model(ToyModelConfig(num_hidden_layers=1), layout=lay).eval()
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[DIGIT0 : DIGIT0 + 10] = emb[DIGIT0]
    batch = sample(6, 0, lay)
    np.testing.assert_array_equal(
        predicted_mementos(model, batch, "foreign"), predicted_mementos(model, batch, "memento")
    )
    with pytest.raises(ValueError, match="at least 2 sequences"):
        predicted_mementos(model, sample(1, 0, lay), "foreign")


def test_fixed_dataset_epochs_init_checkpoint_and_stop(tmp_path):
    cfg = TrainConfig(
        steps=8,
        batch_size=4,
        dataset_size=8,
        stage1_fraction=0.0,
        warmup_steps=2,
        checkpoints=(0, 4),
        eval_sequences=8,
        log_every=2,
        threads=0,
        layout=ToyLayout(n_blocks=2, block_digits=1, memento_digits=2, passcode_digits=1),
        model=ToyModelConfig(num_hidden_layers=1),
    )
    result = train(cfg, tmp_path / "run", progress=False, command="test")
    names = [c["name"] for c in result.checkpoints]
    assert names == ["step-000000", "step-000004", "step-000008"]
    assert [c["epoch"] for c in result.checkpoints] == [0.0, 2.0, 4.0]
    log = json.loads((tmp_path / "run" / "training_log.json").read_text())
    assert log["checkpoints"][0]["loss"] is None and log["config"]["dataset_size"] == 8
    from memento_lens.runtime.toy.shipped import list_checkpoints, load_toy

    assert list_checkpoints(tmp_path / "run") == ["final", "step-000000", "step-000004"]
    model, _ = load_toy("toy", weights_dir=tmp_path / "run")
    assert layout_of(model) == cfg.layout


def test_stop_exact_ends_training_at_first_checkpoint_reaching_it(tmp_path, monkeypatch):
    from memento_lens.runtime.toy import train as train_mod
    from memento_lens.runtime.toy.evaluate import TaskAccuracy

    scores = iter([0.5, 0.96, 0.99])  # held-out exact-match at steps 2, 4, 6

    def fake_eval(model, n, **kw):
        exact = next(scores)
        return {m: TaskAccuracy(exact=exact, digit=exact, n=n, per_block_exact=[]) for m in kw["modes"]}

    monkeypatch.setattr(train_mod, "evaluate_all", fake_eval)
    cfg = TrainConfig(
        steps=8,
        batch_size=4,
        warmup_steps=2,
        checkpoints=(2, 4, 6),
        eval_sequences=8,
        log_every=2,
        threads=0,
        stop_exact=0.95,
        layout=ToyLayout(n_blocks=2, block_digits=1, memento_digits=2),
        model=ToyModelConfig(num_hidden_layers=1),
    )
    result = train(cfg, tmp_path / "run", progress=False, command="test")
    assert [c["step"] for c in result.checkpoints] == [2, 4]
    from memento_lens.runtime.toy.shipped import checkpoint_info, list_checkpoints

    assert list_checkpoints(tmp_path / "run") == ["final", "step-000002"]
    assert checkpoint_info("toy", tmp_path / "run")["step_name"] == "step-000004"


def test_same_sum_donors_keep_every_running_sum_and_change_blocks():
    from memento_lens.runtime.toy.evaluate import same_sum_donors

    batch = sample(64, 2, SEG)
    donors = same_sum_donors(batch)
    lay = batch.layout
    changed = 0
    for b in range(lay.n_blocks):
        d = donors[:, lay.block_content(b)] - DIGIT0
        np.testing.assert_array_equal(d.sum(1), batch.digits[:, b].sum(1))
        changed += int((d != batch.digits[:, b]).any(1).sum())
    rest = np.setdiff1d(np.arange(lay.length), np.concatenate([block_token_positions(b, lay) for b in range(10)]))
    np.testing.assert_array_equal(donors[:, rest], batch.token_ids[:, rest])
    assert changed > 0.9 * 64 * lay.n_blocks


def test_a_named_shipped_variant_resolves_like_toy(tmp_path, monkeypatch):
    """A SHIPPED entry (name -> weights folder) is loadable as NAME and NAME@<checkpoint> everywhere."""
    from memento_lens.runtime.model import load_model
    from memento_lens.runtime.toy import shipped

    cfg = TrainConfig(
        steps=2,
        batch_size=4,
        warmup_steps=1,
        checkpoints=(0,),
        eval_sequences=4,
        log_every=1,
        threads=0,
        layout=ToyLayout(n_blocks=2, block_digits=1, memento_digits=2, passcode_digits=2),
        model=ToyModelConfig(num_hidden_layers=1),
    )
    train(cfg, tmp_path / "w", progress=False, command="test")
    monkeypatch.setitem(shipped.SHIPPED, "toy-test", (tmp_path / "w", "toy"))
    assert shipped.is_toy_spec("toy-test@step-000000") and not shipped.is_toy_spec("toy-tests")
    assert shipped.list_checkpoints(model="toy-test") == ["final", "step-000000"]
    assert shipped.toy_model_dir("toy-test@step-000000") == tmp_path / "w" / "step-000000"
    with pytest.raises(shipped.ToyModelError, match="available: toy-test@final, toy-test@step-000000"):
        shipped.toy_model_dir("toy-test@step-9")
    loaded = load_model("toy-test@step-000000", dtype="float32")
    assert layout_of(loaded.model) == cfg.layout and loaded.masking is not None


def test_toy_eval_foreign_flag_adds_the_controls():
    from typer.testing import CliRunner

    from memento_lens.cli import app

    res = CliRunner().invoke(app, ["toy", "eval", "--model", "toy", "--json", "-n", "8", "--foreign"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert set(data) == {"vanilla", "memento", "restart", "foreign", "samesum", "n"}
    # same-sum blocks keep every running sum: the trained toy scores them like its own blocks
    assert data["samesum"]["digit"] >= data["memento"]["digit"] - 0.05 > data["restart"]["digit"]


def test_toy_channel_is_shipped_with_its_layout_and_checkpoints():
    from memento_lens.runtime.model import load_model
    from memento_lens.runtime.toy import shipped

    folder = shipped.SHIPPED["toy-channel"][0]
    if not (folder / "manifest.json").exists():
        pytest.skip("toy-channel weights not in this checkout")
    names = shipped.list_checkpoints(model="toy-channel")
    assert names[0] == "final" and "step-000000" in names
    info = shipped.checkpoint_info("toy-channel")
    assert info["step_name"] == "step-001024" and 0.3 < info["memento_exact"] < info["memento_digit"]
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert total < 10 * 2**20
    loaded = load_model("toy-channel", dtype="float32")
    assert layout_of(loaded.model) == SEG and loaded.model.config.model_type == "llama"
    init = load_model("toy-channel@step-000000", dtype="float32").model
    assert not torch.equal(
        init.model.layers[0].self_attn.k_proj.weight, loaded.model.model.layers[0].self_attn.k_proj.weight
    )
    # the trained model does the task on its own layout: held-out digits well above the init's
    from memento_lens.runtime.toy.evaluate import task_accuracy

    batch = sample(32, 5, SEG)
    assert task_accuracy(loaded.model, batch, "memento").digit > 0.6 > task_accuracy(init, batch, "memento").digit


def _tiny_gpt2():
    cfg = ToyModelConfig(architecture="gpt2", num_key_value_heads=2, num_attention_heads=2, hidden_size=16, head_dim=8)
    return build_model(dataclasses.replace(cfg, intermediate_size=32, num_hidden_layers=2), seed=1)


def test_gpt2_block_layernorm_learned_positions_mha_and_wrong_shapes_refused():
    from memento_lens.runtime.hf_paths import attention_module, decoder_layers, rms_norms

    m = build_model(variant("sum-gpt2-mha-fresh").model)
    assert type(m).__name__ == "GPT2LMHeadModel" and m.config.model_type == "gpt2"
    assert 800_000 < count_parameters(m) < 850_000  # the paper's toy: 810K
    assert m.transformer.wpe.weight.shape == (256, 128) and not rms_norms(m)  # learned positions, LayerNorm
    assert all(isinstance(b.ln_1, torch.nn.LayerNorm) for b in decoder_layers(m))
    assert attention_module(m, 3) is m.transformer.h[3].attn and m.config.n_head == 4
    ids = torch.tensor([[1, 3, 8, 9]])
    with torch.no_grad():  # absolute positions: the same tokens at other positions give other logits
        a = m(input_ids=ids).logits
        b = m(input_ids=ids, position_ids=torch.arange(10, 14)[None]).logits
    assert not torch.allclose(a, b, atol=1e-4)
    with pytest.raises(ValueError, match="multi-head attention only"):
        hf_config(ToyModelConfig(architecture="gpt2"))  # 2 KV heads: GQA does not exist in GPT-2
    with pytest.raises(ValueError, match="head_dim"):
        hf_config(ToyModelConfig(architecture="gpt2", num_key_value_heads=4, head_dim=16))


def test_gpt2_toy_passes_verify_physical_eviction_equals_dense_mask():
    from memento_lens.runtime.toy.task import EOS, TOY_TOKENS
    from memento_lens.runtime.verify import verify

    report = verify(_tiny_gpt2(), TOY_TOKENS, n_blocks=2, exclude_ids=[EOS])
    assert report.passed and len(report.checks) > 10
    assert {c.dtype for c in report.checks} >= {"float32", "float64"}


def test_gpt2_config_geometry_and_attention_capture():
    from memento_lens.runtime.capture import AttentionWeights
    from memento_lens.runtime.occupancy import KVSpec

    m = _tiny_gpt2()
    spec = KVSpec.from_hf_config(m.config.to_dict(), dtype_bytes=2)  # n_layer / n_head / n_embd in the dict
    assert (spec.layers, spec.kv_heads, spec.head_dim) == (2, 2, 8)
    cap = AttentionWeights(layers=(1,))
    with cap.attach(m), torch.no_grad():
        m(input_ids=torch.tensor([[1, 3, 8, 9, 4]]))
        w = cap._last[1]
    assert w.shape == (1, 2, 5, 5) and torch.allclose(w.sum(-1), torch.ones(1, 2, 5))
    assert m.config._attn_implementation == "sdpa"  # restored after the capture


def test_gpt2_prefix_forwards_equal_dense_and_first_layers_restores():
    from memento_lens.runtime.dense import dense_forward
    from memento_lens.runtime.forwards import first_layers, prefix_kv
    from memento_lens.runtime.hf_paths import decoder_layers

    m = _tiny_gpt2()
    ids = torch.from_numpy(sample(1, 0).token_ids[0, :30])
    vis = torch.tril(torch.ones(30, 30, dtype=torch.bool))
    vis[20:, 2:8] = False  # an erased block
    dense = dense_forward(m, ids[None], vis)
    for layer, (k, v) in enumerate(prefix_kv(m, ids, vis)):
        assert torch.allclose(k, dense.keys[layer], atol=1e-5) and torch.allclose(v, dense.values[layer], atol=1e-5)
    with first_layers(m, 1):
        assert len(decoder_layers(m)) == 1
    assert len(decoder_layers(m)) == 2
