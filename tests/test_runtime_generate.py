"""Generation with physical eviction: per-token loop vs the dense reference, sampling, EOS, forced block ends."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import TOKENS, tiny_qwen3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memento_lens.runtime.config import BlockMaskingConfig, ConfigError
from memento_lens.runtime.dense import dense_forward
from memento_lens.runtime.generate import SamplingConfig, SlotCache, encode_prompts, generate, sample_next
from memento_lens.runtime.masks import visibility_mask
from memento_lens.runtime.occupancy import schedule_occupancy as occupancy
from memento_lens.runtime.schedule import EventKind, compute_schedule
from memento_lens.runtime.verify import structured_stream

ORDINARY = list(range(5, 48))


@pytest.fixture(scope="module")
def model():
    return tiny_qwen3()


configs = st.builds(
    lambda k, md, rs, defer: BlockMaskingConfig(
        mask_delimiters=md, keep_last_n_blocks=k, restart_mode=rs, keep_last_block_for_answer=defer
    ),
    st.sampled_from([0, 1, 2]),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cfg=configs, seed=st.integers(0, 10_000), n_blocks=st.integers(1, 4))
def test_generation_loop_equals_dense_forward(model, cfg, seed, n_blocks):
    rng = random.Random(seed)
    streams = [
        structured_stream(rng, TOKENS, ORDINARY, n_blocks=n_blocks, prompt_len=rng.randint(1, 5)) for _ in range(3)
    ]
    res = generate(
        model, [s[:pl] for s, pl in streams], cfg, TOKENS, forced=[s[pl:] for s, pl in streams], keep_logits=True
    )
    for (ids, pl), r in zip(streams, res):
        sched = compute_schedule(ids, cfg, TOKENS, prompt_len=pl)
        dense = dense_forward(model, torch.tensor([ids]), visibility_mask(sched))
        assert r.trace.token_ids == ids
        assert tuple(r.schedule.events) == sched.events
        assert float((dense.logits[0] - r.logits).abs().max()) < 1e-4
        assert (r.measured.tokens == occupancy(sched)).all()


def test_eviction_frees_cache_slots(model):
    ids, pl = structured_stream(random.Random(1), TOKENS, ORDINARY, n_blocks=3)
    cfg = BlockMaskingConfig(mask_delimiters=True)
    r = generate(model, [ids[:pl]], cfg, TOKENS, forced=[ids[pl:]])[0]
    sched = compute_schedule(ids, cfg, TOKENS, prompt_len=pl)
    evicted = sum(e.n_evicted for e in sched.evictions)
    assert evicted > 0
    assert r.measured.tokens[-1] == len(ids) - evicted
    assert r.measured.peak_bytes == occupancy(sched).max() * r.measured.bytes_per_token


def test_sampling_is_seeded_and_greedy_is_argmax(model):
    cfg = BlockMaskingConfig(mask_delimiters=False)
    s = SamplingConfig(temperature=0.9, top_p=0.9, top_k=20, min_p=0.05, max_new_tokens=12, seed=3)
    a = generate(model, [[0, 7, 8], [0, 9]], cfg, TOKENS, sampling=s)
    b = generate(model, [[0, 7, 8], [0, 9]], cfg, TOKENS, sampling=s)
    assert [x.trace.token_ids for x in a] == [x.trace.token_ids for x in b]
    greedy = generate(model, [[0, 7, 8]], cfg, TOKENS, sampling=SamplingConfig(temperature=0, max_new_tokens=1))[0]
    with torch.no_grad():
        expect = int(model(torch.tensor([[0, 7, 8]])).logits[0, -1].argmax())
    assert greedy.trace.token_ids == [0, 7, 8, expect]


def test_sample_next_filters():
    logits = torch.tensor([[0.0, 5.0, 4.9, -3.0]])
    gen = torch.Generator().manual_seed(0)
    picks = {int(sample_next(logits, SamplingConfig(top_k=1), gen)) for _ in range(20)}
    assert picks == {1}
    picks = {int(sample_next(logits, SamplingConfig(min_p=0.5), gen)) for _ in range(50)}
    assert picks <= {1, 2}
    with pytest.raises(ConfigError):
        SamplingConfig(top_p=0)


def test_stops_on_eos(model):
    cfg = BlockMaskingConfig(mask_delimiters=False)
    with torch.no_grad():
        first = int(model(torch.tensor([[0, 7]])).logits[0, -1].argmax())
    r = generate(
        model, [[0, 7]], cfg, TOKENS, eos_token_id=first, sampling=SamplingConfig(temperature=0, max_new_tokens=10)
    )[0]
    assert r.trace.token_ids == [0, 7, first] and r.stop == "eos"


def test_max_block_tokens_forces_block_end(model):
    cfg = BlockMaskingConfig(mask_delimiters=False, max_block_tokens=3, require_assistant_section=False)
    r = generate(
        model, [[0, TOKENS.block_start]], cfg, TOKENS, sampling=SamplingConfig(temperature=0, max_new_tokens=6)
    )[0]
    gen = r.trace.token_ids[2:]
    content = 0
    for t in gen:
        if t == TOKENS.block_end:
            break
        content += t not in (TOKENS.block_start, TOKENS.summary_start, TOKENS.summary_end)
    assert TOKENS.block_end in gen[:4] and content <= 3
    if content == 3:
        assert any(e.kind == EventKind.FORCED_BLOCK_END for e in r.schedule.events)


def test_slot_cache_compaction_keeps_row_contents(model):
    cache = SlotCache(model, 2)
    ids = torch.tensor([[0, 7, 8, 9, 10], [0, 11, 12, 13, 14]])
    cache.forward(ids, torch.arange(5).repeat(2, 1), logits="none")
    before = cache.gather([0, 3, 4])
    cache.drop_range(1, 3, rows=[0])
    cache.compact()
    assert cache.pos.tolist() == [[0, 3, 4, -1, -1], [0, 1, 2, 3, 4]]
    after = cache.gather([0, 3, 4])
    for (k0, v0), (k1, v1) in zip(before, after):
        assert torch.equal(k0, k1) and torch.equal(v0, v1)


def test_chat_template_is_applied():
    from memento_lens.runtime.model import random_tokenizer

    tok = random_tokenizer(48)
    plain = encode_prompts(tok, ["w1 w2"])[0]
    tok.chat_template = (
        "{% for m in messages %}<bos> {{ m['content'] }}{% endfor %}{% if add_generation_prompt %} w9{% endif %}"
    )
    chat = encode_prompts(tok, ["w1 w2"])[0]
    assert chat == [0, *tok.convert_tokens_to_ids(["w1", "w2", "w9"])]
    assert plain != chat
    assert encode_prompts(tok, [[0, 5]]) == [[0, 5]]


class GrammarBiased(torch.nn.Module):
    """A tiny model whose logits are nudged towards the memento grammar (block_end -> summary_start, ...), so free
    sampling produces blocks, mementos and evictions at different steps in different rows."""

    BIAS = {
        TOKENS.block_end: {TOKENS.summary_start: 30.0},
        TOKENS.summary_start: {TOKENS.summary_end: 1.5},
        TOKENS.summary_end: {TOKENS.block_start: 3.0},
        TOKENS.block_start: {TOKENS.block_end: -30.0},
    }

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, input_ids, **kw):
        out = self.inner(input_ids=input_ids, **kw)
        ids = input_ids[:, -out.logits.shape[1] :]
        bias = torch.zeros_like(out.logits)
        bias[..., TOKENS.block_end] += 3.0
        for prev, nxt in self.BIAS.items():
            for tok, b in nxt.items():
                bias[..., tok] += (ids == prev).float() * b
        out.logits = out.logits + bias
        return out


@pytest.mark.parametrize("restart", [False, True])
def test_free_running_batched_sampling_matches_dense(restart):
    """Sampled rows that evict (and restart) at different steps in one batch: every row's logits equal the dense
    forward of its own trace under its own schedule."""
    model = GrammarBiased(tiny_qwen3(seed=3))
    cfg = BlockMaskingConfig(mask_delimiters=False, restart_mode=restart, require_assistant_section=False)
    prompts = [[0, 7], [0, 9, 10, 11], [0, 12, 13], [0, 1, 14]]
    res = generate(
        model,
        prompts,
        cfg,
        TOKENS,
        keep_logits=True,
        sampling=SamplingConfig(temperature=1.0, max_new_tokens=60, seed=5),
    )
    evictions = set()
    for r in res:
        ids = r.trace.token_ids
        assert tuple(r.schedule.events) == compute_schedule(ids, cfg, TOKENS, prompt_len=r.trace.prompt_len).events
        dense = dense_forward(model, torch.tensor([ids]), visibility_mask(r.schedule))
        fed = len(ids) - 1  # the last sampled token is never fed
        assert float((dense.logits[0, :fed] - r.logits[:fed]).abs().max()) < 1e-4
        assert (r.measured.tokens == occupancy(r.schedule)).all()
        evictions |= {e.position for e in r.schedule.evictions}
    assert len(evictions) >= 3  # rows evict at different steps
