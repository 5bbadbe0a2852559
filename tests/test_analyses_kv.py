"""KV accounting: hand-computed occupancy, the byte formula, the fast schedule, and a real cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from memento_lens.analyses.kv import (
    GB,
    KTOK,
    PRESETS,
    KVSpec,
    account_trace,
    default_configs,
    fast_schedule,
    kv_summary,
    occupancies_from_table,
    occupancy_table,
    reduction_table,
    resolve_spec,
)
from memento_lens.runtime.config import BlockMaskingConfig, ConfigError, MementoTokenIds
from memento_lens.runtime.occupancy import schedule_occupancy as occupancy
from memento_lens.runtime.schedule import compute_schedule
from memento_lens.runtime.trace import Trace

B, E, S, X = 1, 2, 3, 4
# pos:    0  1  2  3  4  5  6  7  8  9 10 11 12 13 14 15 16 17
STREAM = [0, B, 5, 6, E, S, 7, X, B, 5, 5, E, S, 8, X, 9, 9, 9]


def test_hand_computed_occupancy_peak_auc(tokens):
    trace = Trace("t", STREAM, prompt_len=1)
    spec = KVSpec("x", layers=2, kv_heads=2, head_dim=4, dtype_bytes=2)  # 64 bytes/token
    cfgs = {
        "vanilla": BlockMaskingConfig.vanilla(),
        "memento": BlockMaskingConfig(mask_delimiters=False),
        "masked": BlockMaskingConfig(mask_delimiters=True),
    }
    curves = account_trace(trace, tokens, cfgs, spec)
    assert curves["vanilla"].tokens.tolist() == list(range(1, 19))
    # keep 0, delimiters stay: 2 tokens freed at pos 7 (block 0 content), 2 more at pos 14.
    assert curves["memento"].tokens.tolist() == [1, 2, 3, 4, 5, 6, 7, 6, 7, 8, 9, 10, 11, 12, 11, 12, 13, 14]
    # delimiters evicted too: 4 tokens at pos 7, 4 at 14.
    assert curves["masked"].tokens.tolist() == [1, 2, 3, 4, 5, 6, 7, 4, 5, 6, 7, 8, 9, 10, 7, 8, 9, 10]
    assert curves["vanilla"].peak_tokens == 18 and curves["memento"].peak_tokens == 14
    assert curves["vanilla"].auc_token_steps == sum(range(2, 19)) == 170  # generated steps 1..17
    assert curves["memento"].auc_token_steps == 27 + 63 + 50 == 140
    assert curves["memento"].auc_gb_ktok == pytest.approx(140 * 64 / GB / KTOK)
    assert curves["memento"].peak_gb == pytest.approx(14 * 64 / GB)
    summ = kv_summary([trace], tokens, cfgs, spec)
    assert summ.set_index("mode").loc["memento", "peak_tokens"] == 14
    red = reduction_table(summ).set_index("mode")
    assert red.loc["memento", "peak_reduction_vs_vanilla"] == pytest.approx(18 / 14)
    assert red.loc["memento", "auc_reduction_vs_vanilla"] == pytest.approx(170 / 140)


def test_occupancy_table_roundtrip(tokens):
    trace = Trace("t", STREAM, prompt_len=1)
    curves = account_trace(trace, tokens, default_configs(), "qwen3-8b")
    table = occupancy_table(curves.values())
    assert list(table.columns) == ["trace", "mode", "step", "tokens", "bytes"]
    assert (table["bytes"] == table["tokens"] * 147456).all()
    back = {c.mode: c for c in occupancies_from_table(table, {"t": 1})}
    assert back["memento"].tokens.tolist() == curves["memento"].tokens.tolist()
    assert back["memento"].bytes_per_token == 147456 and back["memento"].prompt_len == 1


def test_presets_match_the_formula():
    # 2 (K,V) x layers x kv_heads x head_dim x 2 bytes (bf16); KB = 1024 bytes.
    assert PRESETS["qwen3-8b"].bytes_per_token == 2 * 36 * 8 * 128 * 2 == 144 * 1024
    assert PRESETS["qwen3-32b"].bytes_per_token == 2 * 64 * 8 * 128 * 2 == 256 * 1024
    assert PRESETS["phi-4-reasoning"].bytes_per_token == 2 * 40 * 10 * 128 * 2 == 200 * 1024


def test_spec_from_hf_config_json(tmp_path):
    # The published Qwen3-8B config.json fields that matter.
    cfg = {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "hidden_size": 4096,
        "head_dim": 128,
        "num_attention_heads": 32,
        "num_hidden_layers": 36,
        "num_key_value_heads": 8,
        "torch_dtype": "bfloat16",
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    spec = KVSpec.from_hf_config(tmp_path)
    assert spec.bytes_per_token == PRESETS["qwen3-8b"].bytes_per_token
    assert resolve_spec(str(tmp_path / "config.json")).bytes_per_token == 147456
    # head_dim from hidden_size / heads, kv heads default to heads, float32 = 4 bytes.
    spec2 = KVSpec.from_hf_config(
        {"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64, "torch_dtype": "float32"}
    )
    assert spec2.bytes_per_token == 2 * 2 * 4 * 16 * 4
    with pytest.raises(ConfigError, match="num_hidden_layers"):
        KVSpec.from_hf_config({"hidden_size": 8})
    with pytest.raises(ConfigError, match="preset"):
        resolve_spec("no-such-model")


def test_spec_from_transformers_config():
    from conftest import tiny_qwen3

    model = tiny_qwen3()
    spec = KVSpec.from_hf_config(model.config, dtype_bytes=4)
    assert (spec.layers, spec.kv_heads, spec.head_dim) == (2, 2, 16)


# -- the fast schedule equals compute_schedule ---------------------------------------------------------

IDS = MementoTokenIds(block_start=1, block_end=2, summary_start=3, summary_end=4, im_start=5, assistant=6, think_end=7)


@settings(max_examples=300, deadline=None)
@given(
    stream=st.lists(st.integers(0, 12), min_size=0, max_size=60),
    prompt=st.integers(0, 10),
    keep=st.integers(-1, 2),
    mask=st.booleans(),
    restart=st.booleans(),
    for_answer=st.booleans(),
    require=st.booleans(),
    cap=st.sampled_from([0, 0, 3]),
)
def test_fast_schedule_equals_compute_schedule(stream, prompt, keep, mask, restart, for_answer, require, cap):
    cfg = BlockMaskingConfig(
        mask_delimiters=mask,
        keep_last_n_blocks=keep,
        restart_mode=restart,
        keep_last_block_for_answer=for_answer,
        require_assistant_section=require,
        max_block_tokens=cap,
    )
    prompt = min(prompt, len(stream))
    ref = compute_schedule(stream, cfg, IDS, prompt_len=prompt)
    fast = fast_schedule(np.asarray(stream, dtype=np.int64), cfg, IDS, prompt_len=prompt)
    assert fast.events == ref.events
    assert fast.blocks == ref.blocks
    assert fast.n_tokens == ref.n_tokens and fast.config == ref.config
    assert occupancy(fast).tolist() == occupancy(ref).tolist()


# -- counting equals the bytes a real cache holds -------------------------------------------------------


def _cache_bytes(cache) -> int:
    return sum(
        l.keys.numel() * l.keys.element_size() + l.values.numel() * l.values.element_size() for l in cache.layers
    )


@pytest.mark.parametrize(
    "cfg",
    [
        BlockMaskingConfig.vanilla(),
        BlockMaskingConfig(mask_delimiters=False, keep_last_n_blocks=0),
        BlockMaskingConfig(mask_delimiters=True, keep_last_n_blocks=1),
        BlockMaskingConfig(mask_delimiters=False, keep_last_n_blocks=0, restart_mode=True),
    ],
    ids=["vanilla", "keep0", "keep1-masked", "restart"],
)
def test_count_equals_physical_cache_bytes(tokens, cfg):
    import torch
    from conftest import tiny_qwen3
    from transformers import DynamicCache

    model = tiny_qwen3()
    stream = [0, 9, B, 5, 6, 7, E, S, 8, X, B, 5, 5, 6, 6, E, S, 8, 9, X, B, 7, E, S, 9, X, 10, 11]
    prompt_len = 2
    trace = Trace("t", stream, prompt_len)
    spec = KVSpec.from_hf_config(model.config, dtype_bytes=4)
    counted = account_trace(trace, tokens, {"m": cfg}, spec)["m"].tokens
    sched = compute_schedule(stream, cfg, tokens, prompt_len=prompt_len)
    cache = DynamicCache(config=model.config)
    held: list[int] = []  # logical positions physically in the cache, in slot order

    def feed(positions):
        ids = torch.tensor([[stream[p] for p in positions]])
        pos = torch.tensor([positions])
        mask = torch.ones(1, len(held) + len(positions), dtype=torch.long)
        with torch.no_grad():
            model(input_ids=ids, position_ids=pos, attention_mask=mask, cache=cache, use_cache=True)
        held.extend(positions)

    def keep_only(keep):
        idx = torch.tensor([i for i, p in enumerate(held) if keep(p)], dtype=torch.long)
        for layer in cache.layers:
            layer.keys = layer.keys.index_select(2, idx)
            layer.values = layer.values.index_select(2, idx)
        held[:] = [p for p in held if keep(p)]

    for p in range(len(stream)):
        redo = [p]
        for ev in sched.events_at(p):
            if ev.end > ev.start:
                keep_only(lambda q, ev=ev: not ev.start <= q < ev.end)
            if ev.rewind_to is not None:  # restart: recompute the memento's KV without the block
                keep_only(lambda q, ev=ev: q < ev.rewind_to)
                redo = list(range(ev.rewind_to, p + 1))
        feed(redo)
        assert _cache_bytes(cache) == counted[p] * spec.bytes_per_token, f"step {p}"
    if cfg.evicts:
        assert counted[-1] < len(stream)


@settings(max_examples=150, deadline=None)
@given(
    stream=st.lists(st.integers(0, 12), min_size=1, max_size=50),
    prompt=st.integers(0, 10),
    keep=st.integers(-1, 2),
    mask=st.booleans(),
    restart=st.booleans(),
    compact=st.booleans(),
)
def test_account_trace_equals_runtime_occupancy(stream, prompt, keep, mask, restart, compact):
    cfg = BlockMaskingConfig(
        mask_delimiters=mask,
        keep_last_n_blocks=keep,
        restart_mode=restart,
        compact_on_summary_end=compact,
        require_assistant_section=False,
    )
    prompt = min(prompt, len(stream))
    curve = account_trace(Trace("t", stream, prompt), IDS, {"x": cfg}, "qwen3-8b")["x"]
    ref = occupancy(compute_schedule(stream, cfg, IDS, prompt_len=prompt))
    assert curve.tokens.tolist() == ref.tolist()


@pytest.mark.parametrize(
    "cfg",
    [
        BlockMaskingConfig(mask_delimiters=False, keep_last_n_blocks=0),
        BlockMaskingConfig(mask_delimiters=True, keep_last_n_blocks=1),
        BlockMaskingConfig(mask_delimiters=False, keep_last_n_blocks=0, restart_mode=True),
    ],
    ids=["keep0", "keep1-masked", "restart"],
)
def test_count_equals_runtime_generation_cache(tokens, cfg):
    """The runtime's generation loop (physical eviction, teacher-forced) measures what we count."""
    generate_mod = pytest.importorskip("memento_lens.runtime.generate")
    from conftest import tiny_qwen3

    model = tiny_qwen3()
    prompt = [0, 9, 10]
    gen = [B, 5, 6, 7, E, S, 8, X, B, 5, 5, 6, E, S, 8, 9, X, B, 7, E, S, 9, X, 10, 11]
    res = generate_mod.generate(model, [prompt], cfg, tokens, forced=[gen])[0]
    assert list(res.trace.token_ids) == prompt + gen
    spec = KVSpec.from_hf_config(model.config, dtype_bytes=4)
    counted = account_trace(Trace("t", prompt + gen, len(prompt)), tokens, {"m": cfg}, spec)["m"]
    assert res.measured.tokens.tolist() == counted.tokens.tolist()
    assert res.measured.bytes_per_token == spec.bytes_per_token


def test_vanilla_overlay_added_only_when_missing():
    import pandas as pd
    from memento_lens.analyses.kv import with_vanilla_overlay

    occ = pd.DataFrame(
        {"trace": "t", "mode": "memento", "step": [0, 1, 2, 3], "tokens": [1, 2, 1, 2], "bytes": [10, 20, 10, 20]}
    )
    out = with_vanilla_overlay(occ)
    van = out[out["mode"] == "vanilla"]
    assert van["tokens"].tolist() == [1, 2, 3, 4] and van["bytes"].tolist() == [10, 20, 30, 40]
    assert (van["trace"] == "t").all() and len(out) == 8
    both = pd.concat([occ, occ.assign(mode="vanilla", tokens=[1, 2, 3, 4])])
    assert with_vanilla_overlay(both) is both
