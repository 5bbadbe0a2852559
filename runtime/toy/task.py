"""The toy running-sum task (after the Memento paper's Appendix A.4.2).

Each sequence holds ``n_blocks`` blocks of ``block_digits`` random digits; the memento after block b is
the zero-padded running sum of every digit so far::

    <bos> (<|block_start|> d d d d d <|block_end|> <|summary_start|> s s s <|summary_end|>)*n_blocks <eos>

Under memento attention (keep 0) the task stays solvable (previous memento + current block suffice),
while an erased block's digits cannot be read back from memento text alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import BlockMaskingConfig, MementoTokenIds

VOCAB: tuple[str, ...] = (
    "<pad>",
    "<bos>",
    "<eos>",
    "<|block_start|>",
    "<|block_end|>",
    "<|summary_start|>",
    "<|summary_end|>",
    *[str(d) for d in range(10)],
)
TOKEN_TO_ID = {t: i for i, t in enumerate(VOCAB)}
PAD, BOS, EOS = TOKEN_TO_ID["<pad>"], TOKEN_TO_ID["<bos>"], TOKEN_TO_ID["<eos>"]
DIGIT0 = TOKEN_TO_ID["0"]
TOY_TOKENS = MementoTokenIds(
    block_start=TOKEN_TO_ID["<|block_start|>"],
    block_end=TOKEN_TO_ID["<|block_end|>"],
    summary_start=TOKEN_TO_ID["<|summary_start|>"],
    summary_end=TOKEN_TO_ID["<|summary_end|>"],
)
# The toy is trained and probed with keep 0; delimiters stay visible (Qwen3 style).
TOY_MASKING = BlockMaskingConfig(mask_delimiters=False, keep_last_n_blocks=0)


@dataclass(frozen=True)
class ToyLayout:
    """Where everything sits in a toy sequence (all positions 0-based, blocks 0-based)."""

    n_blocks: int = 10
    block_digits: int = 5
    memento_digits: int = 3

    @property
    def stride(self) -> int:
        """Tokens per block + memento: 4 delimiters + digits + memento digits."""
        return 4 + self.block_digits + self.memento_digits

    @property
    def length(self) -> int:
        return 1 + self.n_blocks * self.stride + 1

    def block_start(self, block: int) -> int:
        return 1 + block * self.stride

    def block_content(self, block: int) -> np.ndarray:
        """``[block_digits]`` positions of the block's digits."""
        s = self.block_start(block) + 1
        return np.arange(s, s + self.block_digits)

    def block_end(self, block: int) -> int:
        return self.block_start(block) + 1 + self.block_digits

    def summary_start(self, block: int) -> int:
        return self.block_end(block) + 1

    def memento(self, block: int) -> np.ndarray:
        """``[memento_digits]`` positions of the memento's digits."""
        s = self.summary_start(block) + 1
        return np.arange(s, s + self.memento_digits)

    def summary_end(self, block: int) -> int:
        return self.summary_start(block) + 1 + self.memento_digits

    def memento_span(self, block: int) -> np.ndarray:
        """All memento token positions, ``<|summary_start|>`` .. ``<|summary_end|>`` inclusive."""
        return np.arange(self.summary_start(block), self.summary_end(block) + 1)

    def all_memento_digits(self) -> np.ndarray:
        """``[n_blocks, memento_digits]`` positions."""
        return np.stack([self.memento(b) for b in range(self.n_blocks)])


@dataclass
class ToyBatch:
    """A batch of toy sequences.

    Attributes:
        digits: ``[n, n_blocks, block_digits]`` int64, the block contents.
        sums: ``[n, n_blocks]`` int64, running sums (the memento values).
        token_ids: ``[n, length]`` int64.
    """

    digits: np.ndarray
    sums: np.ndarray
    token_ids: np.ndarray
    layout: ToyLayout


def encode(digits: np.ndarray, layout: ToyLayout = ToyLayout()) -> ToyBatch:
    """Token ids for given block digits ``[n, n_blocks, block_digits]`` (values 0..9)."""
    digits = np.asarray(digits, dtype=np.int64)
    if digits.ndim != 3 or digits.shape[1:] != (layout.n_blocks, layout.block_digits):
        raise ValueError(f"digits must be [n, {layout.n_blocks}, {layout.block_digits}], got {digits.shape}")
    if digits.min(initial=0) < 0 or digits.max(initial=0) > 9:
        raise ValueError("digits must lie in 0..9")
    n = digits.shape[0]
    sums = np.cumsum(digits.sum(axis=2), axis=1)
    if sums.max(initial=0) >= 10**layout.memento_digits:
        raise ValueError(f"running sum {sums.max()} does not fit {layout.memento_digits} memento digits")
    ids = np.full((n, layout.length), PAD, dtype=np.int64)
    ids[:, 0] = BOS
    ids[:, -1] = EOS
    for b in range(layout.n_blocks):
        ids[:, layout.block_start(b)] = TOY_TOKENS.block_start
        ids[:, layout.block_content(b)] = DIGIT0 + digits[:, b]
        ids[:, layout.block_end(b)] = TOY_TOKENS.block_end
        ids[:, layout.summary_start(b)] = TOY_TOKENS.summary_start
        ids[:, layout.memento(b)] = DIGIT0 + sum_digits(sums[:, b], layout.memento_digits)
        ids[:, layout.summary_end(b)] = TOY_TOKENS.summary_end
    return ToyBatch(digits=digits, sums=sums, token_ids=ids, layout=layout)


def sum_digits(values: np.ndarray, width: int) -> np.ndarray:
    """``[n] -> [n, width]`` zero-padded decimal digits, most significant first."""
    values = np.asarray(values, dtype=np.int64)
    powers = 10 ** np.arange(width - 1, -1, -1)
    return (values[:, None] // powers) % 10


def sample(n: int, rng: np.random.Generator | int, layout: ToyLayout = ToyLayout()) -> ToyBatch:
    """``n`` random sequences (uniform digits)."""
    rng = np.random.default_rng(rng)
    return encode(rng.integers(0, 10, size=(n, layout.n_blocks, layout.block_digits)), layout)
