"""runtime/occupancy.py: the one occupancy type and the one bytes-per-token rule, on hand-built schedules and a
tiny model; every producer (generation, replay, model-free accounting, the run table) yields the same type."""

from __future__ import annotations

import numpy as np
import torch
from memento_lens.analyses.kv import account_trace
from memento_lens.runtime.config import BlockMaskingConfig
from memento_lens.runtime.generate import generate
from memento_lens.runtime.model import kv_bytes_per_token
from memento_lens.runtime.occupancy import KVSpec, Occupancy, schedule_occupancy
from memento_lens.runtime.replay import replay
from memento_lens.runtime.rundir.tables import occupancies_from_table, occupancy_table
from memento_lens.runtime.schedule import compute_schedule
from memento_lens.runtime.trace import Trace

B, E, S, X = 1, 2, 3, 4
# pos:    0  1  2  3  4  5  6  7  8  9 10 11 12 13 14
STREAM = [0, B, 5, 6, E, S, 7, X, B, 5, 5, E, S, 8, X]


def test_from_schedule_counts_what_each_event_frees(tokens):
    sched = compute_schedule(STREAM, BlockMaskingConfig(mask_delimiters=False), tokens, prompt_len=1)
    occ = Occupancy.from_schedule(sched, bytes_per_token=10, trace="t", mode="memento")
    # block 0's content (2 tokens) leaves at pos 7, block 1's (2 tokens) at pos 14
    assert occ.tokens.tolist() == [1, 2, 3, 4, 5, 6, 7, 6, 7, 8, 9, 10, 11, 12, 11]
    assert (occ.trace, occ.mode, occ.prompt_len) == ("t", "memento", 1)
    assert occ.peak_tokens == 12 and occ.peak_bytes == 120
    assert occ.auc_token_steps == sum(occ.tokens[1:]) and occ.auc_bytes == 10 * occ.auc_token_steps
    assert occ.bytes.tolist() == [10 * t for t in occ.tokens]
    van = Occupancy.vanilla(15, 10, prompt_len=1, trace="t")
    assert van.tokens.tolist() == list(range(1, 16)) and van.mode == "vanilla"


def test_table_round_trip_keeps_every_field():
    occs = [
        Occupancy(np.array([1, 2, 1]), 8, prompt_len=1, trace="a", mode="memento"),
        Occupancy(np.array([1, 2, 3]), 8, prompt_len=1, trace="a", mode="vanilla"),
    ]
    table = occupancy_table(occs)
    assert list(table.columns) == ["trace", "mode", "step", "tokens", "bytes"]
    assert table["bytes"].tolist() == [8, 16, 8, 8, 16, 24]
    back = {o.mode: o for o in occupancies_from_table(table, {"a": 1})}
    for o in occs:
        b = back[o.mode]
        assert (b.trace, b.prompt_len, b.bytes_per_token) == (o.trace, o.prompt_len, o.bytes_per_token)
        assert b.tokens.tolist() == o.tokens.tolist()
    assert occupancy_table([]).empty


def test_bytes_per_token_is_one_rule(tiny_model):
    cfg = tiny_model.config  # 2 layers, 2 KV heads, head_dim 16, float32
    assert kv_bytes_per_token(tiny_model) == 2 * 2 * 2 * 16 * 4
    assert kv_bytes_per_token(tiny_model) == KVSpec.from_hf_config(cfg, dtype_bytes=4).bytes_per_token
    assert (
        kv_bytes_per_token(tiny_model, torch.bfloat16) == KVSpec.from_model(tiny_model, torch.bfloat16).bytes_per_token
    )
    assert KVSpec.from_model(tiny_model).bytes_per_token == 2 * 2 * 2 * 16 * 4


def test_every_producer_returns_the_one_type(tiny_model, tokens):
    cfg = BlockMaskingConfig(mask_delimiters=False)
    trace = Trace("t", STREAM, prompt_len=1)
    [gen] = generate(tiny_model, [STREAM[:1]], cfg, tokens, forced=[STREAM[1:]], trace_ids=["t"])
    [rep] = replay(tiny_model, [trace], cfg, tokens)
    acc = account_trace(trace, tokens, {"memento": cfg}, KVSpec.from_model(tiny_model))["memento"]
    sched = compute_schedule(STREAM, cfg, tokens, prompt_len=1)
    for occ in (gen.measured, rep.occupancy, acc):
        assert type(occ) is Occupancy
        assert occ.tokens.tolist() == schedule_occupancy(sched).tolist()
        assert (occ.trace, occ.mode, occ.prompt_len) == ("t", "memento", 1)
        assert occ.bytes_per_token == kv_bytes_per_token(tiny_model)
