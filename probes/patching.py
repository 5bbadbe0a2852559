"""KV capture and KV patching through forward hooks on each layer's attention K/V projections.

Choice (documented, see docs/PROBES.md): patching runs one batched forward with the world's dense
visibility mask and forward hooks on ``self_attn.k_proj`` / ``self_attn.v_proj`` that replace the outputs at
chosen positions with a donor run's outputs. Donor and recipient share logical positions (eviction never
renumbers), so the per-head norm and RoPE applied after the projection turn the spliced values into exactly
the donor's cached K/V. Hooks live inside context managers and are removed in ``finally``.

Cache-surgery semantics: a patch "at layer l" must change only layer l's cached K/V of the memento tokens;
their K/V at the other layers stay what the base run cached. Since a hook at layer l also changes what the
memento tokens themselves compute at later layers, :func:`surgery_patches` pins every other layer to the
base run's own captured values.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch

# HF attention submodules whose outputs are the per-token K/V projections: named in runtime/hf_paths.py.
from memento_lens.runtime.hf_paths import K_PROJ_ATTR, SELF_ATTN_ATTR, V_PROJ_ATTR, decoder_layers


@dataclass
class KVProj:
    """Captured or donor K/V projections of one layer at some positions.

    Attributes:
        positions: ``[P]`` token positions.
        k, v: ``[batch, P, kv_heads * d_head]`` (pre-norm, pre-RoPE projection outputs).
    """

    positions: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor

    def take(self, positions: torch.Tensor) -> "KVProj":
        """Restrict to a subset of the captured positions."""
        idx = torch.searchsorted(self.positions, positions)
        if not torch.equal(self.positions[idx.clamp_max(len(self.positions) - 1)], positions):
            raise ValueError("requested positions were not captured")
        return KVProj(positions, self.k[:, idx], self.v[:, idx])

    def rows(self, sl: slice) -> "KVProj":
        return KVProj(self.positions, self.k[sl], self.v[sl])


def _proj(model: torch.nn.Module, layer: int, which: str) -> torch.nn.Module:
    return getattr(getattr(decoder_layers(model)[layer], SELF_ATTN_ATTR), which)


@contextlib.contextmanager
def capture_kv_proj(model: torch.nn.Module, layers: list[int], positions: torch.Tensor) -> Iterator[dict[int, KVProj]]:
    """Capture K/V projections at ``positions`` (sorted ``[P]``) for ``layers`` during the next forward."""
    out: dict[int, KVProj] = {}
    store: dict[tuple[int, str], torch.Tensor] = {}
    handles = []

    def hook(layer: int, which: str):
        def fn(module, args, output):
            store[(layer, which)] = output.index_select(1, positions.to(output.device)).detach()

        return fn

    try:
        for layer in layers:
            for which in (K_PROJ_ATTR, V_PROJ_ATTR):
                handles.append(_proj(model, layer, which).register_forward_hook(hook(layer, which)))
        yield out
    finally:
        for h in handles:
            h.remove()
        for layer in layers:
            if (layer, K_PROJ_ATTR) in store:
                out[layer] = KVProj(positions, store[(layer, K_PROJ_ATTR)], store[(layer, V_PROJ_ATTR)])


@contextlib.contextmanager
def patch_kv_proj(model: torch.nn.Module, patches: Mapping[int, KVProj]) -> Iterator[None]:
    """Replace K/V projection outputs at the patches' positions (positions past the input are ignored)."""
    handles = []

    def hook(donor: KVProj, which: str):
        def fn(module, args, output):
            pos = donor.positions.to(output.device)
            keep = pos < output.shape[1]
            pos = pos[keep]
            src = (donor.k if which == K_PROJ_ATTR else donor.v)[:, keep.to(donor.k.device)].to(
                output.device, output.dtype
            )
            out = output.clone()
            out[:, pos] = src
            return out

        return fn

    try:
        for layer, donor in patches.items():
            for which in (K_PROJ_ATTR, V_PROJ_ATTR):
                handles.append(_proj(model, layer, which).register_forward_hook(hook(donor, which)))
        yield
    finally:
        for h in handles:
            h.remove()


def surgery_patches(
    base: Mapping[int, KVProj],
    donor: Mapping[int, KVProj],
    layer: int | None,
    positions: torch.Tensor,
    head: int = -1,
    head_dim: int | None = None,
) -> dict[int, KVProj]:
    """Patches for "donor K/V at ``layer`` only" (``None``: at every layer), every other layer pinned to base.

    With ``head >= 0`` only that KV head's slice (``head_dim`` wide) comes from the donor at ``layer``.
    """
    if head >= 0 and head_dim is None:
        raise ValueError("per-head patching needs head_dim")
    out = {}
    for ly in base:
        b = base[ly].take(positions)
        if layer is None or ly == layer:
            d = donor[ly].take(positions)
            if head >= 0:
                sl = slice(head * head_dim, (head + 1) * head_dim)
                k, v = b.k.clone(), b.v.clone()
                k[..., sl], v[..., sl] = d.k[..., sl], d.v[..., sl]
                d = KVProj(positions, k, v)
            out[ly] = d
        else:
            out[ly] = b
    return out
