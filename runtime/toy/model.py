"""The toy model: a standard HF architecture of the paper's toy size (4 layers, d 128, ~0.8M params).

``architecture``: ``qwen3`` (the shipped ``toy``: per-head RMS norm on queries and keys, "QK-norm"),
``llama`` (the same block without QK-norm), or ``gpt2`` (HF ``GPT2LMHeadModel``: pre-LayerNorm with biases,
learned absolute position embeddings instead of RoPE, multi-head attention, no QK-norm, a GELU MLP of
``intermediate_size``; ``num_key_value_heads`` and ``head_dim`` must equal ``num_attention_heads`` and
``hidden_size / num_attention_heads``). ``num_key_value_heads`` < ``num_attention_heads`` is GQA,
equal is MHA. A standard architecture means the runtime, replay and capture code serve it unchanged.
The layout the model was trained on is stored in its HF config (``toy_layout``, read by
:func:`.task.layout_of`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .task import BOS, EOS, PAD, ToyLayout
from .tokenizer import TOKENIZER_VOCAB


@dataclass(frozen=True)
class ToyModelConfig:
    """Architecture of the toy model (Qwen3; 786,432 non-embedding + 4,352 embedding parameters by default)."""

    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    attn_implementation: str = "sdpa"
    architecture: str = "qwen3"  # qwen3 (QK-norm) | llama (no QK-norm) | gpt2 (LayerNorm, learned positions)

    def to_dict(self) -> dict:
        return asdict(self)


def hf_config(cfg: ToyModelConfig = ToyModelConfig(), layout: ToyLayout = ToyLayout()):
    """The ``transformers`` config of the toy model (``Qwen3Config``, ``LlamaConfig`` or ``GPT2Config``)."""
    from transformers import LlamaConfig, Qwen3Config

    kinds = {"qwen3": Qwen3Config, "llama": LlamaConfig, "gpt2": None}
    if cfg.architecture not in kinds:
        raise ValueError(f"toy architecture {cfg.architecture!r}: choose one of {', '.join(kinds)}")
    if cfg.architecture == "gpt2":
        hf = _gpt2_config(cfg, layout)
    else:
        hf = kinds[cfg.architecture](
            vocab_size=len(TOKENIZER_VOCAB),
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads,
            num_key_value_heads=cfg.num_key_value_heads,
            head_dim=cfg.head_dim,
            max_position_embeddings=max(256, 2 * layout.length),
            tie_word_embeddings=True,
            bos_token_id=BOS,
            eos_token_id=EOS,
            pad_token_id=PAD,
            rope_theta=10000.0,
        )
    hf._attn_implementation = cfg.attn_implementation
    if layout != ToyLayout():  # only non-default layouts are recorded, so the shipped toy's config is unchanged
        hf.toy_layout = asdict(layout)
    return hf


def _gpt2_config(cfg: ToyModelConfig, layout: ToyLayout):
    """A GPT-2 block of the toy's size: LayerNorm, learned absolute positions, MHA, no QK-norm, tied embeddings.

    Dropout is off (the toy is trained without it, like the Qwen3 / Llama toys); ``n_positions`` is the toy's
    ``max_position_embeddings`` rule, so sequences up to twice the layout's length fit.
    """
    from transformers import GPT2Config

    if cfg.num_key_value_heads != cfg.num_attention_heads:
        raise ValueError(
            f"gpt2 toy: multi-head attention only (num_key_value_heads {cfg.num_key_value_heads} != "
            f"num_attention_heads {cfg.num_attention_heads})"
        )
    if cfg.head_dim * cfg.num_attention_heads != cfg.hidden_size:
        raise ValueError(
            f"gpt2 toy: head_dim {cfg.head_dim} x {cfg.num_attention_heads} heads != hidden_size {cfg.hidden_size}"
        )
    return GPT2Config(
        vocab_size=len(TOKENIZER_VOCAB),
        n_embd=cfg.hidden_size,
        n_inner=cfg.intermediate_size,
        n_layer=cfg.num_hidden_layers,
        n_head=cfg.num_attention_heads,
        n_positions=max(256, 2 * layout.length),
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=True,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )


def build_model(
    cfg: ToyModelConfig = ToyModelConfig(),
    *,
    seed: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    layout: ToyLayout = ToyLayout(),
):
    """A freshly initialised toy model (deterministic for a given ``seed``)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(cfg, layout))
    return model.to(device=device, dtype=dtype)


def count_parameters(model: torch.nn.Module) -> int:
    """Unique trainable parameters (tied embeddings counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total
