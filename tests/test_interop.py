"""TransformerLens and nnsight see exactly what the mementified runtime sees."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_qwen3
from memento_lens.runtime.dense import dense_forward, stack_visibility
from memento_lens.runtime.schedule import compute_schedule
from memento_lens.runtime.toy.task import TOY_MASKING, TOY_TOKENS, sample


@pytest.fixture(scope="module")
def toy_batch():
    b = sample(2, 3)
    scheds = [compute_schedule(row, TOY_MASKING, TOY_TOKENS, prompt_len=1) for row in b.token_ids]
    return torch.tensor(b.token_ids), scheds


def test_transformer_lens_bridge_matches_dense_memento_forward(toy_batch):
    pytest.importorskip("transformer_lens")
    from memento_lens.runtime.interop import boot_bridge, run_with_memento_cache
    from memento_lens.runtime.toy.tokenizer import build_tokenizer

    ids, scheds = toy_batch
    model = tiny_qwen3(vocab_size=17, attn="eager")
    ref = dense_forward(model, ids, stack_visibility(scheds))
    bridge = boot_bridge(model, build_tokenizer())
    logits, cache = run_with_memento_cache(bridge, ids, scheds)
    assert (logits - ref.logits).abs().max().item() < 1e-4
    ev = scheds[0].evictions[0]  # block 0 content, gone from its summary_end on
    pattern = cache["blocks.1.attn.hook_pattern"]  # [batch, heads, q, k]
    assert pattern[0, :, ev.position :, ev.start : ev.end].abs().max().item() == 0.0
    assert pattern[0, :, ev.position - 1, ev.start : ev.end].sum().item() > 0.0


def test_nnsight_kv_edit_matches_hook_patching(toy_batch):
    pytest.importorskip("nnsight")
    from memento_lens.probes.patching import KVProj, patch_kv_proj
    from memento_lens.runtime.interop import nnsight_kv_edit_logits

    ids, scheds = toy_batch
    model = tiny_qwen3(vocab_size=17)
    vis = stack_visibility(scheds)
    positions = torch.tensor([20, 21, 22])
    gen = torch.Generator().manual_seed(0)
    k = torch.randn(2, 3, 32, generator=gen)
    v = torch.randn(2, 3, 32, generator=gen)
    with patch_kv_proj(model, {1: KVProj(positions, k, v)}):
        hooked = dense_forward(model, ids, vis, want_kv=False).logits
    edited = nnsight_kv_edit_logits(model, ids, vis, {1: (positions, k, v)})
    plain = dense_forward(model, ids, vis, want_kv=False).logits
    assert (edited - hooked).abs().max().item() < 1e-5
    assert (edited - plain).abs().max().item() > 1e-3  # the edit really changed something
    assert (edited[:, :20] - plain[:, :20]).abs().max().item() < 1e-5  # causal: earlier positions untouched
