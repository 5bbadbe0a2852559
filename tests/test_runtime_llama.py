"""Llama beside Qwen3: the runtime's HF-internal paths (runtime/hf_paths.py) on a tiny random Llama.

The capture and restart tests of test_runtime_capture.py run unchanged on a Llama (no q/k norm, tied
embeddings), plus K/V patching and the nnsight edit through the same module names."""

from __future__ import annotations

import pytest
import torch
from memento_lens.runtime import hf_paths
from memento_lens.runtime.model import load_model
from test_runtime_capture import (
    test_restart_counterfactual_equals_restart_mode_run as _restart_counterfactual,
)
from test_runtime_capture import (
    test_restart_run_variants_match_dense_reference as _restart_variants,
)
from test_runtime_capture import (
    test_run_directory_contract_and_kv_values as _contract_and_kv,
)


def tiny_llama(vocab_size: int = 48, layers: int = 2, seed: int = 0):
    from memento_lens.runtime.model import random_causal_lm

    return random_causal_lm(arch="llama", vocab_size=vocab_size, layers=layers, max_positions=512, seed=seed)


@pytest.fixture(scope="module")
def llama():
    return tiny_llama()


def test_llama_is_a_tested_architecture(llama):
    assert llama.config.model_type in hf_paths.TESTED_MODEL_TYPES
    attn = hf_paths.attention_module(llama, 1)
    assert hasattr(attn, hf_paths.K_PROJ_ATTR) and hasattr(attn, hf_paths.V_PROJ_ATTR)
    assert not hasattr(attn, "k_norm")  # the Llama path: keys are RoPE'd projections, no per-head norm
    assert llama.get_output_embeddings().weight is llama.get_input_embeddings().weight
    assert load_model("random:llama-tiny").model.config.model_type == "llama"


def test_llama_run_directory_kv_equals_dense(llama, tmp_path):
    _contract_and_kv(llama, tmp_path)


def test_llama_restart_counterfactual_equals_restart_run(llama, tmp_path):
    _restart_counterfactual(llama, tmp_path)


@pytest.mark.parametrize("defer", [False, True])
def test_llama_restart_variants_match_dense(llama, tmp_path, defer):
    _restart_variants(llama, tmp_path, defer)


def test_llama_kv_patching_identity_and_nnsight_agree(llama):
    """Patching a layer's K/V projections with its own values changes nothing; the nnsight edit of the same
    module path gives the hook-based result."""
    from memento_lens.probes.patching import capture_kv_proj

    ids = torch.randint(5, 48, (2, 12), generator=torch.Generator().manual_seed(0))
    vis = torch.ones(12, 12, dtype=torch.bool).tril().expand(2, 12, 12)
    pos = torch.tensor([3, 4, 5])
    from memento_lens.runtime.dense import dense_forward

    with capture_kv_proj(llama, [1], pos) as got:
        ref = dense_forward(llama, ids, vis[0]).logits
    assert got[1].k.shape == (2, 3, 2 * 16)
    pytest.importorskip("nnsight")
    from memento_lens.runtime.interop import nnsight_kv_edit_logits

    same = nnsight_kv_edit_logits(llama, ids, vis, {1: (pos, got[1].k, got[1].v)})
    assert torch.allclose(same, ref, atol=1e-5)
    edited = nnsight_kv_edit_logits(llama, ids, vis, {1: (pos, torch.zeros_like(got[1].k), got[1].v)})
    assert not torch.allclose(edited[:, 5:], ref[:, 5:], atol=1e-3)
