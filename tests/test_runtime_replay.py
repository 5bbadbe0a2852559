"""Segment replay with physical eviction vs the dense reference; batching; malformed traces."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import TOKENS, tiny_qwen3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memento_lens.runtime.config import BlockMaskingConfig
from memento_lens.runtime.dense import dense_forward
from memento_lens.runtime.masks import visibility_mask
from memento_lens.runtime.model import kv_bytes_per_token
from memento_lens.runtime.occupancy import schedule_occupancy as occupancy
from memento_lens.runtime.replay import ReplayError, replay, structure_key
from memento_lens.runtime.schedule import compute_schedule
from memento_lens.runtime.trace import Trace
from memento_lens.runtime.verify import FinalCacheKV, structured_stream

ORDINARY = list(range(5, 48))
B, E, S, X = 1, 2, 3, 4


@pytest.fixture(scope="module")
def model():
    return tiny_qwen3(layers=3)


configs = st.builds(
    lambda k, md, rs, defer: BlockMaskingConfig(
        mask_delimiters=md, keep_last_n_blocks=k, restart_mode=rs, keep_last_block_for_answer=defer
    ),
    st.sampled_from([-1, 0, 1, 2]),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cfg=configs, seed=st.integers(0, 10_000), n_blocks=st.integers(1, 4), chunk=st.integers(1, 64))
def test_replay_equals_dense_forward(model, cfg, seed, n_blocks, chunk):
    rng = random.Random(seed)
    ids, pl = structured_stream(rng, TOKENS, ORDINARY, n_blocks=n_blocks)
    twin = [rng.choice(ORDINARY) if t not in TOKENS.delimiters else t for t in ids]  # same structure
    other, pl2 = structured_stream(rng, TOKENS, ORDINARY, n_blocks=n_blocks)
    traces = [Trace("a", ids, pl), Trace("b", twin, pl), Trace("c", other, pl2)]
    res = replay(model, traces, cfg, TOKENS, keep_logits=True, max_chunk=chunk)
    assert [r.trace.trace_id for r in res] == ["a", "b", "c"]
    for r in res:
        sched = compute_schedule(r.trace.token_ids, cfg, TOKENS, prompt_len=r.trace.prompt_len)
        dense = dense_forward(model, torch.tensor([r.trace.token_ids]), visibility_mask(sched))
        assert float((dense.logits[0] - r.logits).abs().max()) < 1e-4


def test_restart_kv_equals_fresh_prefill_of_prompt_and_mementos(model):
    ids, pl = structured_stream(random.Random(5), TOKENS, ORDINARY, n_blocks=3, glue=(0, 0), answer_len=0)
    cfg = BlockMaskingConfig(mask_delimiters=False, restart_mode=True)
    final = FinalCacheKV()
    replay(model, [Trace("r", ids, pl)], cfg, TOKENS, captures=[final])
    sched = compute_schedule(ids, cfg, TOKENS, prompt_len=pl)
    expect = list(range(pl)) + [p for b in sched.blocks for p in range(b.summary_start, b.summary_end + 1)]
    assert final.positions == expect
    n = len(expect)
    fresh = dense_forward(
        model,
        torch.tensor([[ids[p] for p in expect]]),
        torch.ones(n, n, dtype=torch.bool).tril(),
        position_ids=torch.tensor([expect]),
    )
    for (k, v), fk, fv in zip(final.kv, fresh.keys, fresh.values):
        assert float((k - fk).abs().max()) < 1e-4 and float((v - fv).abs().max()) < 1e-4
    # and it really differs from the normal-mode memento KV (the block was visible there)
    normal = FinalCacheKV()
    replay(model, [Trace("r", ids, pl)], BlockMaskingConfig(mask_delimiters=True), TOKENS, captures=[normal])
    assert normal.positions == expect
    assert float((normal.kv[-1][0] - final.kv[-1][0]).abs().max()) > 1e-3


def test_same_structure_traces_share_a_batch(model):
    ids, pl = structured_stream(random.Random(2), TOKENS, ORDINARY, n_blocks=2)
    twin = [7 if t not in TOKENS.delimiters else t for t in ids]
    cfg = BlockMaskingConfig(mask_delimiters=False)
    s1, s2 = (compute_schedule(x, cfg, TOKENS, prompt_len=pl) for x in (ids, twin))
    assert structure_key(s1) == structure_key(s2)
    batched = replay(model, [Trace("a", ids, pl), Trace("b", twin, pl)], cfg, TOKENS, keep_logits=True)
    alone = replay(model, [Trace("b", twin, pl)], cfg, TOKENS, keep_logits=True)
    assert float((batched[1].logits - alone[0].logits).abs().max()) < 1e-5


def test_peak_bytes_equal_schedule_counting(model):
    ids, pl = structured_stream(random.Random(3), TOKENS, ORDINARY, n_blocks=4, block_len=(6, 9))
    for cfg in (
        BlockMaskingConfig.vanilla(),
        BlockMaskingConfig(mask_delimiters=False),
        BlockMaskingConfig(mask_delimiters=False, restart_mode=True),
    ):
        r = replay(model, [Trace("p", ids, pl)], cfg, TOKENS, max_chunk=4)[0]
        sched = compute_schedule(ids, cfg, TOKENS, prompt_len=pl)
        assert r.peak_bytes == occupancy(sched).max() * kv_bytes_per_token(model)
        assert r.occupancy.peak_bytes == r.peak_bytes


@pytest.mark.parametrize(
    "ids, where",
    [
        ([0, 5, E, 6, 7], "token 2"),  # <|block_end|> with no open block
        ([0, 5, B, 6, E, X, 7], "token 5"),  # <|summary_end|> with no open memento
        ([0, B, 6, B, 7, E], "token 3"),  # nested block
        ([0, B, 6, 7, 8], "token 4"),  # never closed
    ],
)
def test_malformed_trace_names_trace_and_token(model, ids, where):
    with pytest.raises(ReplayError, match=rf"trace 'bad-1'.*{where}\b"):
        replay(model, [Trace("bad-1", ids, 1)], BlockMaskingConfig(mask_delimiters=False), TOKENS)


def test_token_outside_vocab_is_named(model):
    with pytest.raises(ReplayError, match=r"trace 'v'.*token 2 has id 999"):
        replay(model, [Trace("v", [0, 5, 999], 1)], BlockMaskingConfig(mask_delimiters=False), TOKENS)


def test_truncated_generation_is_accepted_only_when_asked(model):
    trace = Trace("cut", [0, B, 6, 7, 8], 1)
    cfg = BlockMaskingConfig(mask_delimiters=False)
    with pytest.raises(ReplayError, match="token 4"):
        replay(model, [trace], cfg, TOKENS)
    assert len(replay(model, [trace], cfg, TOKENS, allow_unclosed=True)) == 1
    with pytest.raises(ReplayError, match="token 2"):  # other defects still raise
        replay(model, [Trace("x", [0, 5, E, B, 7], 1)], cfg, TOKENS, allow_unclosed=True)
