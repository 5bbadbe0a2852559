"""How the next token is chosen: temperature, top-k, top-p, min-p (one batched function)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import ConfigError


@dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen. ``temperature=0`` is greedy; top_k 0 / top_p 1 / min_p 0 are off."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    max_new_tokens: int = 256
    seed: int = 0
    stop_on_eos: bool = True

    def __post_init__(self) -> None:
        from .validate import check_float, check_int

        check_float(self.temperature, "--temperature", min=0)
        if not 0 < check_float(self.top_p, "--top-p") <= 1:
            raise ConfigError(f"--top-p must lie in (0, 1], got {self.top_p}")
        check_int(self.top_k, "--top-k", min=0)
        if not 0 <= check_float(self.min_p, "--min-p") < 1:
            raise ConfigError(f"--min-p must lie in [0, 1), got {self.min_p}")
        check_int(self.max_new_tokens, "--max-new-tokens", min=1)
        check_int(self.seed, "--seed")


def sample_next(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """``[batch, vocab]`` logits -> ``[batch]`` token ids under temperature / top-k / top-p / min-p."""
    if cfg.temperature == 0:
        return logits.argmax(-1)
    scores = logits.float() / cfg.temperature
    if cfg.top_k > 0 and cfg.top_k < scores.shape[-1]:
        kth = scores.topk(cfg.top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = scores.softmax(-1)
    if cfg.min_p > 0:
        floor = probs.max(-1, keepdim=True).values * cfg.min_p
        probs = probs.masked_fill(probs < floor, 0.0)
    if cfg.top_p < 1:
        sorted_p, order = probs.sort(-1, descending=True)
        before = sorted_p.cumsum(-1) - sorted_p
        sorted_p = sorted_p.masked_fill(before >= cfg.top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    probs = probs / probs.sum(-1, keepdim=True)
    return (
        torch.multinomial(
            probs.cpu() if generator is not None and generator.device.type == "cpu" else probs, 1, generator=generator
        )
        .view(-1)
        .to(logits.device)
    )


__all__ = ["SamplingConfig", "sample_next"]
