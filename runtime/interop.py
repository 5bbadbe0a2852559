"""Memento attention inside the two interpretability frameworks our users already know.

* TransformerLens (``TransformerBridge``) is the best tool for *reading* a model the mech-interp way:
  ``run_with_cache`` gives every named activation (``blocks.{l}.attn.hook_pattern`` ``[batch, heads, q, k]``,
  ``hook_k``/``hook_v``, residual streams) in one ActivationCache. :func:`run_with_memento_cache` runs it with
  the schedule's eviction applied as a mask on ``hook_attn_scores`` (on a bridge over an HF model this equals
  the HF 4D-mask forward), so every TL analysis sees exactly what the mementified model saw.
* nnsight is the best tool for *editing* a model in place: :func:`nnsight_kv_edit_logits` replaces K/V
  projection outputs at chosen positions inside an nnsight trace, under the memento mask. It is the
  framework-native twin of ``probes.patching.patch_kv_proj`` (the test suite checks they agree).

Both libraries are optional (extra ``interp``) and imported inside the functions.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Mapping, Sequence

import torch

from .dense import stack_visibility
from .masks import additive_mask
from .schedule import Schedule

ATTN_SCORES_HOOK = "blocks.{layer}.attn.hook_attn_scores"
PATTERN_HOOK = "blocks.{layer}.attn.hook_pattern"


def boot_bridge(model: Any, tokenizer: Any, *, device: str | torch.device | None = None) -> Any:
    """Wrap an in-memory HF causal LM (no download) in a TransformerLens ``TransformerBridge``.

    The bridge mutates the tokenizer it gets (sets add_bos), so it receives a private copy.
    """
    from transformer_lens.model_bridge import TransformerBridge

    tok = copy.deepcopy(tokenizer)
    # Without these TL re-loads the tokenizer by name from the hub; a local copy needs neither.
    tok.init_kwargs.setdefault("name_or_path", getattr(tokenizer, "name_or_path", "") or "local")
    tok.init_kwargs["add_bos_token"] = True
    name = getattr(model.config, "_name_or_path", "") or model.config.model_type
    return TransformerBridge.boot_transformers(
        name, hf_model=model, tokenizer=tok, device=device or next(model.parameters()).device
    )


def memento_score_hooks(visible: torch.Tensor, n_layers: int) -> list[tuple[str, Callable]]:
    """TransformerLens forward hooks applying a visibility mask to every layer's attention scores.

    Args:
        visible: ``[batch, q, k]`` or ``[q, k]`` bool, True where the query attends to the key.
    """

    def hook(scores: torch.Tensor, hook: Any) -> torch.Tensor:  # scores: [batch, heads, q, k]
        mask = additive_mask(visible.to(scores.device), dtype=scores.dtype)
        return scores + mask[..., : scores.shape[-2], : scores.shape[-1]]

    return [(ATTN_SCORES_HOOK.format(layer=layer), hook) for layer in range(n_layers)]


def run_with_memento_cache(
    bridge: Any,
    input_ids: torch.Tensor,
    schedules: Sequence[Schedule],
    names_filter: Callable[[str], bool] | Sequence[str] | None = None,
) -> tuple[torch.Tensor, Any]:
    """``bridge.run_with_cache`` under the schedules' eviction.

    Args:
        bridge: from :func:`boot_bridge`.
        input_ids: ``[batch, pos]``.
        schedules: one per row, equal lengths.
    Returns:
        logits ``[batch, pos, vocab]`` and the TransformerLens ``ActivationCache`` (patterns are 0 on evicted keys).
    """
    visible = stack_visibility(schedules, device=input_ids.device)
    hooks = memento_score_hooks(visible, bridge.cfg.n_layers)
    with bridge.hooks(fwd_hooks=hooks):
        return bridge.run_with_cache(input_ids, names_filter=names_filter)


@torch.inference_mode()
def nnsight_kv_edit_logits(
    model: Any,
    input_ids: torch.Tensor,
    visible: torch.Tensor,
    edits: Mapping[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """Forward under a visibility mask with K/V projection outputs replaced, through nnsight.

    Args:
        model: a HF causal LM (Qwen3/Llama family: ``model.layers[i].self_attn.{k,v}_proj``).
        input_ids: ``[batch, pos]``.
        visible: ``[batch, pos, pos]`` bool.
        edits: layer -> (positions ``[P]``, k ``[batch, P, kv_heads*d_head]``, v likewise), pre-norm/pre-RoPE
            projection outputs as ``probes.patching.KVProj`` holds them.
    Returns:
        logits ``[batch, pos, vocab]``.
    """
    from nnsight import NNsight

    from .hf_paths import DECODER_LAYERS_PATH, SELF_ATTN_ATTR

    wrapped = NNsight(model)
    b, t = input_ids.shape
    mask = additive_mask(visible.to(input_ids.device), dtype=next(model.parameters()).dtype)
    position_ids = torch.arange(t, device=input_ids.device).unsqueeze(0).expand(b, -1)
    with wrapped.trace(input_ids=input_ids, attention_mask=mask, position_ids=position_ids):
        layers = wrapped
        for part in DECODER_LAYERS_PATH.split("."):
            layers = getattr(layers, part)
        # nnsight requires visiting modules in execution order: layer by layer, k before v.
        for layer in sorted(edits):
            positions, k, v = edits[layer]
            attn = getattr(layers[layer], SELF_ATTN_ATTR)
            attn.k_proj.output[:, positions] = k
            attn.v_proj.output[:, positions] = v
        logits = wrapped.output.logits.save()
    return logits
