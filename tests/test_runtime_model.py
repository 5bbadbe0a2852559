"""Model loading and the memento-token initialisation."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_qwen3
from memento_lens.runtime.config import MEMENTO_TOKEN_STRINGS, MementoTokenIds, MissingMementoTokens
from memento_lens.runtime.model import (
    RELATED_WORDS,
    ModelLoadError,
    _word_level_tokenizer,
    add_memento_tokens,
    from_objects,
    kv_bytes_per_token,
    load_model,
)


def plain_tokenizer():
    words = [
        "<bos>",
        "<eos>",
        "block",
        "start",
        "begin",
        "section",
        "step",
        "end",
        "finish",
        "done",
        "summary",
        "summarize",
        "brief",
        "recap",
        "overview",
        "complete",
        "the",
        "<unk>",
    ]
    return _word_level_tokenizer(words, bos="<bos>", eos="<eos>")


def test_missing_path_is_one_clear_line(tmp_path):
    with pytest.raises(ModelLoadError, match=str(tmp_path / "nope")) as exc:
        load_model(tmp_path / "nope")
    assert "\n" not in str(exc.value)


def test_unknown_random_spec():
    with pytest.raises(ModelLoadError, match="random:tiny"):
        load_model("random:huge")


def test_random_model_and_bytes_per_token():
    lm = load_model("random:tiny")
    assert lm.tokens == MementoTokenIds(1, 2, 3, 4) and lm.eos_token_id == 5
    assert kv_bytes_per_token(lm.model) == 2 * 2 * 2 * 16 * 4
    assert kv_bytes_per_token(lm.model, torch.bfloat16) == 2 * 2 * 2 * 16 * 2


def test_missing_memento_tokens_are_named():
    lm = from_objects(tiny_qwen3(vocab_size=18), plain_tokenizer())
    assert lm.tokens is None
    with pytest.raises(MissingMementoTokens, match="<\\|block_start\\|>.*<\\|summary_end\\|>"):
        lm.require_tokens()


def test_add_memento_tokens_initialised_from_related_words():
    tok = plain_tokenizer()
    model = tiny_qwen3(vocab_size=18)
    before = model.get_input_embeddings().weight.detach().clone()
    ids = add_memento_tokens(model, tok, seed=0)
    emb = model.get_input_embeddings().weight.detach()
    assert emb.shape[0] == 22 and torch.equal(emb[:18], before)
    for name, tid in zip(MEMENTO_TOKEN_STRINGS, (ids.block_start, ids.block_end, ids.summary_start, ids.summary_end)):
        related = [tok.convert_tokens_to_ids(w) for w in RELATED_WORDS[name]]
        diff = emb[tid] - before[related].mean(0)
        assert 0 < float(diff.std()) < 0.03  # N(0, 0.01) noise around the mean
    out = model.get_output_embeddings().weight.detach()
    assert out.shape[0] == 22
    assert from_objects(model, tok).tokens == ids  # now found in the tokenizer
    again = add_memento_tokens(model, tok)  # idempotent
    assert again == ids and model.get_input_embeddings().weight.shape[0] == 22


def test_toy_spec_loads_or_fails_cleanly():
    from memento_lens.runtime.config import ConfigError
    from memento_lens.runtime.rundir.store import RunError

    try:
        lm = load_model("toy")
    except (ConfigError, RunError) as exc:
        assert "\n" not in str(exc)
        pytest.skip(f"toy weights not shipped in this checkout: {exc}")
    assert lm.tokens is not None and lm.tokenizer is not None


def test_local_checkpoint_loads_and_verifies(tmp_path):
    """A saved HF checkpoint (model + tokenizer with the memento tokens) goes through --model PATH."""
    from memento_lens.runtime.verify import verify_model

    lm = load_model("random:tiny")
    lm.model.save_pretrained(tmp_path / "ckpt")
    lm.tokenizer.save_pretrained(tmp_path / "ckpt")
    loaded = load_model(tmp_path / "ckpt")
    assert loaded.tokens.delimiters == lm.tokens.delimiters
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.parameters(), lm.model.parameters()))
    report = verify_model(str(tmp_path / "ckpt"), n_blocks=2)
    assert report.passed and report.model == str(tmp_path / "ckpt")


def test_checkpoint_without_memento_tokens_is_refused_by_name(tmp_path):
    from typer.testing import CliRunner

    from memento_lens.cli import app

    tiny_qwen3(vocab_size=18).save_pretrained(tmp_path / "plain")
    plain_tokenizer().save_pretrained(tmp_path / "plain")
    res = CliRunner().invoke(app, ["verify", "--model", str(tmp_path / "plain")])
    assert res.exit_code == 2
    assert "<|block_start|>" in res.stderr and "add_memento_tokens" in res.stderr and res.stderr.count("\n") == 1
