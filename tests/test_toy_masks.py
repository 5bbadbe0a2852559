"""The toy's training/eval masks equal what the runtime's eviction does.

* the dense mask is ``visibility_mask`` of ``compute_schedule``: every block's content is hidden from its
  ``<|summary_end|>`` on, delimiters and mementos stay, and the number of visible keys per row equals the
  schedule's occupancy;
* a dense forward with it gives the same logits as incremental decoding that physically slices the
  evicted block out of a ``DynamicCache`` (logical positions kept);
* restart: incremental decoding that evicts block + delimiters and re-prefills the memento gives the same
  final K/V as the dense restart mask.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import small_toy_model
from memento_lens.runtime.dense import dense_forward
from memento_lens.runtime.occupancy import schedule_occupancy as occupancy
from memento_lens.runtime.schedule import EventKind, compute_schedule
from memento_lens.runtime.toy.evaluate import mode_config, restart_generation_visibility, toy_visibility
from memento_lens.runtime.toy.task import TOY_TOKENS, ToyLayout, sample

SMALL = ToyLayout(n_blocks=3, block_digits=3, memento_digits=2)


def test_memento_mask_hides_exactly_finished_blocks():
    lay = ToyLayout()
    vis = toy_visibility("memento", lay).numpy()
    causal = np.tril(np.ones_like(vis))
    hidden = causal.astype(bool) & ~vis
    expect = np.zeros_like(vis)
    for b in range(lay.n_blocks):
        expect[lay.summary_end(b) :, lay.block_content(b)] = True
    np.testing.assert_array_equal(hidden, expect)
    # Rows see as many keys as the cache holds right after that token (the schedule's occupancy).
    sched = compute_schedule(sample(1, 5, lay).token_ids[0], mode_config("memento"), TOY_TOKENS)
    np.testing.assert_array_equal(vis.sum(axis=1), occupancy(sched))
    assert [e.kind for e in sched.evictions] == [EventKind.COMPACT] * lay.n_blocks
    assert [e.position for e in sched.evictions] == [lay.summary_end(b) for b in range(lay.n_blocks)]


def test_one_mask_fits_every_sequence():
    lay = ToyLayout()
    ref = toy_visibility("memento", lay)
    for ids in sample(5, 9, lay).token_ids:
        from memento_lens.runtime.masks import visibility_mask

        assert torch.equal(visibility_mask(compute_schedule(ids, mode_config("memento"), TOY_TOKENS)), ref)


def test_vanilla_is_causal_and_restart_hides_delimiters():
    lay = ToyLayout()
    v = toy_visibility("vanilla", lay)
    assert torch.equal(v, torch.ones_like(v).tril())
    r = toy_visibility("restart", lay)
    b = 2
    # Restart: from the memento's <|summary_start|> on, the block and its delimiters are gone.
    assert not r[lay.summary_start(b), lay.block_start(b)]
    assert not r[lay.summary_start(b) :, lay.block_start(b) : lay.block_end(b) + 1].any()
    assert r[lay.summary_start(b) - 1, lay.block_start(b)]
    g = restart_generation_visibility(b, lay)
    assert g[lay.memento(b)[0], lay.block_content(b)].all()  # memento b generated seeing block b
    assert not g[lay.memento(b)[0], lay.block_content(b - 1)].any()  # earlier blocks stay evicted


def _model():
    return small_toy_model(seed=1, layout=SMALL, attn_implementation="eager")


def _incremental(model, ids: np.ndarray, mode: str):
    """Token-by-token decoding with physical eviction; returns per-token logits and the final cache."""
    from transformers import DynamicCache

    sched = compute_schedule(ids, mode_config(mode), TOY_TOKENS)
    cache = DynamicCache()
    held: list[int] = []  # logical position of each physical cache slot
    logits = {}
    occupancy_seen = []

    def feed(p):
        out = model(
            input_ids=torch.tensor([[int(ids[p])]]),
            position_ids=torch.tensor([[p]]),
            attention_mask=torch.ones(1, len(held) + 1, dtype=torch.long),
            cache=cache,
            use_cache=True,
        )
        held.append(p)
        return out.logits[0, -1]

    def drop(positions):
        keep = [i for i, q in enumerate(held) if q not in positions]
        idx = torch.tensor(keep, dtype=torch.long)
        for layer in cache.layers:
            layer.keys = layer.keys[:, :, idx]
            layer.values = layer.values[:, :, idx]
        held[:] = [held[i] for i in keep]

    with torch.no_grad():
        for p in range(len(ids)):
            for ev in sched.events_at(p):
                if ev.end > ev.start:
                    gone = set(range(ev.start, ev.end))
                    if ev.rewind_to is not None:
                        gone |= set(range(ev.rewind_to, p))  # memento KV is recomputed below
                    drop(gone)
                    if ev.rewind_to is not None:
                        for q in range(ev.rewind_to, p):
                            feed(q)
            logits[p] = feed(p)
            occupancy_seen.append(len(held))
    return torch.stack([logits[p] for p in range(len(ids))]), cache, held, sched, occupancy_seen


@pytest.mark.parametrize("mode", ["memento", "vanilla"])
def test_dense_logits_equal_incremental_eviction(mode):
    model = _model()
    ids = sample(1, 11, SMALL).token_ids[0]
    inc_logits, _, _, sched, occ = _incremental(model, ids, mode)
    np.testing.assert_array_equal(np.array(occ), occupancy(sched))
    vis = toy_visibility(mode, SMALL)
    dense = dense_forward(model, torch.from_numpy(ids)[None], vis[None], want_kv=False)
    torch.testing.assert_close(dense.logits[0], inc_logits, atol=1e-5, rtol=1e-5)
    if mode == "memento":
        causal = dense_forward(
            model, torch.from_numpy(ids)[None], toy_visibility("vanilla", SMALL)[None], want_kv=False
        )
        assert not torch.allclose(causal.logits[0], inc_logits, atol=1e-3)  # the mask matters


def test_restart_final_kv_equals_dense_restart_mask():
    model = _model()
    ids = sample(1, 12, SMALL).token_ids[0]
    _, cache, held, sched, occ = _incremental(model, ids, "restart")
    assert [e.kind for e in sched.evictions] == [EventKind.RESTART] * SMALL.n_blocks
    np.testing.assert_array_equal(np.array(occ), occupancy(sched))
    dense = dense_forward(model, torch.from_numpy(ids)[None], toy_visibility("restart", SMALL)[None])
    idx = torch.tensor(held)
    for layer, k, v in zip(cache.layers, dense.keys, dense.values):
        torch.testing.assert_close(layer.keys, k[:, :, idx], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(layer.values, v[:, :, idx], atol=1e-5, rtol=1e-5)
