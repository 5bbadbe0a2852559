"""Passcode probes: five 10-way digit heads on a feature vector.

Two-level base: :class:`Probe` is what the experiment code sees (a name and ``build``);
:class:`DigitProbe` adds the shared head layout (``n_digits`` x ``n_classes`` logits). A new probe is one
method, ``body(in_dim) -> (module, out_dim)``; the digit head is appended for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from memento_lens.runtime.errors import OptionError
from torch import nn


@dataclass(frozen=True)
class Probe:
    """A probe architecture (configuration only; training lives in :mod:`.train`)."""

    name: ClassVar[str] = "probe"

    def build(self, in_dim: int) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_dict(self) -> dict:
        import dataclasses

        return {"probe": self.name, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class DigitProbe(Probe):
    """Maps ``[n, in_dim]`` to ``[n, n_digits, n_classes]`` logits."""

    n_digits: int = 5
    n_classes: int = 10

    def body(self, in_dim: int) -> tuple[nn.Module, int]:
        """The feature transform before the digit heads, and its output width (the one method to write)."""
        raise NotImplementedError

    def widths(self, in_dim: int) -> list[int]:
        """Layer widths from input to logits (``[in_dim, ..., n_digits * n_classes]``) for the batched trainer,
        which builds the same architecture as stacked weights (:func:`memento_lens.probes.train.fit_batched`)."""
        net = self.build(in_dim)
        return [in_dim] + [m.out_features for m in net.modules() if isinstance(m, nn.Linear)]

    def build(self, in_dim: int) -> nn.Module:
        body, width = self.body(in_dim)
        return _DigitHeads(body, width, self.n_digits, self.n_classes)


class _DigitHeads(nn.Module):
    def __init__(self, body: nn.Module, width: int, n_digits: int, n_classes: int):
        super().__init__()
        self.body = body
        self.head = nn.Linear(width, n_digits * n_classes)
        self.n_digits, self.n_classes = n_digits, n_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)).view(x.shape[0], self.n_digits, self.n_classes)


@dataclass(frozen=True)
class LinearProbe(DigitProbe):
    """Linear baseline: one affine map to the 5 x 10 logits."""

    name: ClassVar[str] = "linear"
    dropout: float = 0.0

    def body(self, in_dim: int) -> tuple[nn.Module, int]:
        return nn.Identity(), in_dim


@dataclass(frozen=True)
class MLPProbe(DigitProbe):
    """The paper's probe: hidden 512 x 256, then a 128 bottleneck, then the five digit heads."""

    name: ClassVar[str] = "mlp"
    hidden: tuple[int, ...] = (512, 256)
    bottleneck: int = 128
    dropout: float = 0.1

    def body(self, in_dim: int) -> tuple[nn.Module, int]:
        layers: list[nn.Module] = []
        width = in_dim
        for h in (*self.hidden, self.bottleneck):
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(self.dropout)]
            width = h
        return nn.Sequential(*layers), width


PROBES: dict[str, type[DigitProbe]] = {"linear": LinearProbe, "mlp": MLPProbe}


def make_probe(name: str) -> DigitProbe:
    try:
        return PROBES[name]()
    except KeyError:
        raise OptionError(f"--probes: unknown probe {name!r}; choose from {', '.join(PROBES)}") from None
