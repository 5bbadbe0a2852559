"""Compact attention capture: visible keys only in float16, decoded back over every position; clear errors
for capture requests that would store nothing."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from conftest import TOKENS, tiny_qwen3
from memento_lens.runtime.capture import (
    ATTENTION_REL_PRECISION,
    AttentionWeights,
    attention_bytes,
    default_captures,
    expand_attention,
)
from memento_lens.runtime.config import BlockMaskingConfig
from memento_lens.runtime.errors import OptionError
from memento_lens.runtime.masks import visibility_mask
from memento_lens.runtime.rundir import KVReader
from memento_lens.runtime.runs import replay_to_run
from memento_lens.runtime.schedule import compute_schedule
from memento_lens.runtime.trace import Trace
from memento_lens.runtime.verify import structured_stream
from typer.testing import CliRunner


def test_expand_attention_both_layouts_and_a_wrong_length():
    visible = np.array([True, False, True, True, False])
    compact = torch.tensor([[[0.5, 0.25, 0.25]]], dtype=torch.float16)
    out = expand_attention(compact, visible)
    assert out.dtype == np.float32 and out.shape == (1, 5)
    assert out.tolist() == [[0.5, 0.0, 0.25, 0.25, 0.0]]
    old = torch.tensor([[[0.1, 0.2, 0.3, 0.4, 0.0], [1, 0, 0, 0, 0]]], dtype=torch.float32)  # pre-compact runs
    assert np.array_equal(expand_attention(old, visible), old[0].numpy())
    with pytest.raises(ValueError, match="holds 2 keys; expected 5 .* or 3"):
        expand_attention(torch.ones(1, 1, 2), visible)


def test_a_leaking_row_is_stored_over_every_position():
    cap = AttentionWeights(layers=(0,))
    visible = torch.tensor([True, True, False])
    clean = torch.tensor([[[0.4, 0.6, 0.0]]])
    leak = torch.tensor([[[0.4, 0.5, 0.1]]])
    assert cap._stored(clean, visible).shape == (1, 1, 2)
    assert cap._stored(leak, visible).shape == (1, 1, 3)  # the leak stays visible to readers
    assert AttentionWeights(layers=(0,), keys="all")._stored(clean, visible).shape == (1, 1, 3)


def test_compact_capture_equals_the_full_float32_capture(tmp_path):
    model = tiny_qwen3()
    rng = random.Random(3)
    ids, pl = structured_stream(rng, TOKENS, list(range(5, 48)), n_blocks=3)
    trace = Trace("t0", ids, pl)
    cfg = BlockMaskingConfig(mask_delimiters=True)
    compact = AttentionWeights(layers=(0, 1))
    full = AttentionWeights(layers=(0, 1), dtype="float32", keys="all")
    replay_to_run(model, [trace], cfg, TOKENS, tmp_path / "c", captures=[compact])
    replay_to_run(model, [trace], cfg, TOKENS, tmp_path / "f", captures=[full])
    c, f = KVReader(tmp_path / "c"), KVReader(tmp_path / "f")
    mask = visibility_mask(compute_schedule(ids, cfg, TOKENS, prompt_len=pl)).numpy()
    assert (~mask[len(ids) - 1, : len(ids) - 1]).any()  # evictions happened: compact is smaller
    stored_bytes = 0
    for q in range(len(ids)):
        for layer in (0, 1):
            sc, sf = c.attention("t0", "normal", layer, q), f.attention("t0", "normal", layer, q)
            assert sc.dtype == torch.float16 and sc.shape == (1, 4, int(mask[q].sum()))
            assert sf.dtype == torch.float32 and sf.shape == (1, 4, len(ids))
            a, b = expand_attention(sc, mask[q]), expand_attention(sf, mask[q])
            assert np.all(np.abs(a - b) <= ATTENTION_REL_PRECISION * b + 6e-8)
            stored_bytes += sc.numel() * 2
    assert stored_bytes == sum(attention_bytes(4, int(mask[q].sum())) * 2 for q in range(len(ids)))


def test_capture_requests_that_would_store_nothing_are_errors():
    with pytest.raises(OptionError, match="--attention-queries: needs --attention-layers"):
        default_captures(attention_layers=(), attention_queries=[5, 10])
    with pytest.raises(OptionError, match="--attention-layers"):
        AttentionWeights(layers=())
    cap = AttentionWeights(layers=(0,), queries=(5, 100000))
    cap.check_length(100001)
    with pytest.raises(OptionError, match="--attention-queries: position 100000 is beyond"):
        cap.check_length(300)


def test_generate_refuses_attention_queries_beyond_the_generation(tmp_path):
    from memento_lens.cli import app

    out = tmp_path / "gen"
    args = ["generate", "--model", "toy", "--max-new-tokens", "20", "--attention-layers", "0"]
    res = CliRunner().invoke(app, [*args, "--attention-queries", "100000", "--out", str(out)])
    assert res.exit_code == 2 and "--attention-queries: position 100000" in res.output
    assert not out.exists()
    res = CliRunner().invoke(app, ["generate", "--model", "toy", "--attention-queries", "5,10", "--out", str(out)])
    assert res.exit_code == 2 and "--attention-queries: needs --attention-layers" in res.output
    assert not out.exists()
