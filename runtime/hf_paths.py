"""Every HF-internal name memento-lens relies on, in one table (tested range: transformers 5.x, see
pyproject). When transformers moves something, this is the only file to change."""

from __future__ import annotations

from typing import Any

# Output attribute holding the KV cache (transformers 5 renamed past_key_values -> cache).
CACHE_OUTPUT_ATTRS = ("cache", "past_key_values")
# Keyword argument that passes a cache into forward().
CACHE_INPUT_KWARG = "cache"
# DynamicCache: per-layer objects with .keys / .values of shape [batch, kv_heads, pos, d_head].
CACHE_LAYERS_ATTR = "layers"
CACHE_KEYS_ATTR = "keys"
CACHE_VALUES_ATTR = "values"
# Decoder layers and attention modules (Qwen3 / Llama / Qwen2 / OLMo / Phi-3 families).
DECODER_LAYERS_PATH = "model.layers"
SELF_ATTN_ATTR = "self_attn"
# Key / value projections inside SELF_ATTN_ATTR (outputs [batch, pos, kv_heads * d_head], before norm and RoPE).
K_PROJ_ATTR = "k_proj"
V_PROJ_ATTR = "v_proj"

# The architectures every name above is tested against (tests run tiny random models of both, and the real
# SmolLM2-135M, a Llama). What differs between them and why the runtime does not care:
# * qwen3: q_norm/k_norm (RMSNorm per head) before RoPE; untied embeddings (the toy, random:tiny/bench).
# * llama: no q/k norm; tied embeddings in SmolLM2 (random:llama-tiny too); no `layer_types` in older configs.
# The cache holds keys after norm (if any) and RoPE in both, which is what capture reads; K/V patching edits
# K_PROJ/V_PROJ outputs, which exist in both. A model_type outside this table may work but is untested.
# * gpt2 (the toy's GPT-2-style variants): LayerNorm with biases (not RMSNorm, so verify's float64 reference needs no
#   hook), learned absolute position embeddings (wpe) looked up from the explicit position_ids the slot cache feeds
#   (no RoPE: the cache holds keys exactly as projected), MHA; decoder layers at `transformer.h`, attention module
#   `attn` (below). Its q/k/v come from one fused Conv1D `c_attn` ([batch, pos, 3 * hidden]): there are no K_PROJ /
#   V_PROJ modules, so K/V-projection patching (probes.patching, interop's nnsight surgery) does not apply to it.
#   Its config.json says n_layer / n_head / n_embd (CONFIG_KEY_ALIASES).
TESTED_MODEL_TYPES = ("qwen3", "llama", "gpt2")
# Where the decoder layers and their attention module sit when a model_type does not use DECODER_LAYERS_PATH /
# SELF_ATTN_ATTR (decoder_layers, attention_module).
DECODER_LAYERS_PATH_BY_TYPE = {"gpt2": "transformer.h"}
SELF_ATTN_ATTR_BY_TYPE = {"gpt2": "attn"}
# RMSNorm modules (Qwen3 / Llama): class-name suffix and epsilon attribute. Their forward casts the input to
# float32 whatever its dtype, so a float64 model is not float64 there (see rms_norms and verify's reference).
RMS_NORM_CLASS_SUFFIX = "RMSNorm"
RMS_NORM_EPS_ATTR = "variance_epsilon"
# Config keys some architectures use instead of the standard names (GPT-2: n_layer / n_head / n_embd). A loaded
# config answers the standard names through its attribute_map, but its to_dict() and config.json do not.
CONFIG_KEY_ALIASES = {"n_layer": "num_hidden_layers", "n_head": "num_attention_heads", "n_embd": "hidden_size"}
# Config attribute used to select the attention kernel.
ATTN_IMPLEMENTATION_ATTR = "_attn_implementation"


def standard_config_keys(data: dict) -> dict:
    """A config dict with :data:`CONFIG_KEY_ALIASES` also under their standard names (existing keys win)."""
    extra = {std: data[alias] for alias, std in CONFIG_KEY_ALIASES.items() if alias in data and std not in data}
    return {**data, **extra} if extra else data


def output_cache(output: Any) -> Any:
    """The cache object of a model output."""
    for name in CACHE_OUTPUT_ATTRS:
        cache = getattr(output, name, None)
        if cache is not None:
            return cache
    raise AttributeError(f"model output has none of {CACHE_OUTPUT_ATTRS}; update runtime/hf_paths.py")


def cache_layers(cache: Any) -> list[Any]:
    return list(getattr(cache, CACHE_LAYERS_ATTR))


def _model_type(model: Any) -> str:
    return str(getattr(getattr(model, "config", None), "model_type", ""))


def decoder_layers_path(model: Any) -> str:
    """Dotted path of ``model``'s decoder layers (``model.layers``; ``transformer.h`` for GPT-2)."""
    return DECODER_LAYERS_PATH_BY_TYPE.get(_model_type(model), DECODER_LAYERS_PATH)


def self_attn_attr(model: Any) -> str:
    """Name of the self-attention module inside one of ``model``'s decoder layers (``self_attn``; ``attn``)."""
    return SELF_ATTN_ATTR_BY_TYPE.get(_model_type(model), SELF_ATTN_ATTR)


def decoder_layers(model: Any) -> list[Any]:
    obj = model
    for part in decoder_layers_path(model).split("."):
        obj = getattr(obj, part)
    return list(obj)


def rms_norms(model: Any) -> list[Any]:
    """Every RMSNorm module of ``model`` (input, post-attention, final and per-head q/k norms)."""
    return [
        m
        for m in model.modules()
        if type(m).__name__.endswith(RMS_NORM_CLASS_SUFFIX) and hasattr(m, RMS_NORM_EPS_ATTR) and hasattr(m, "weight")
    ]


def attention_module(model: Any, layer: int) -> Any:
    """The self-attention module of decoder layer ``layer``."""
    return getattr(decoder_layers(model)[layer], self_attn_attr(model))


# --- used by the runtime (generate / replay / capture) ---------------------------------------------------
# forward() kwarg: compute logits for the last N positions only (0 = all).
LOGITS_TO_KEEP_KWARG = "logits_to_keep"
# DynamicCache constructor kwarg taking per-layer (keys, values) to pre-fill a cache (counterfactual copies).
CACHE_DATA_KWARG = "ddp_cache_data"
# Config attribute listing each layer's attention type; the runtime supports only FULL_ATTENTION layers.
LAYER_TYPES_ATTR = "layer_types"
FULL_ATTENTION = "full_attention"
# Index of the attention weights in a self-attention module's output tuple (set under eager attention).
ATTN_WEIGHTS_OUTPUT_INDEX = 1
