"""The toy running-sum task (after the Memento paper's Appendix A.4.2).

Each sequence holds ``n_blocks`` blocks of ``block_digits`` random digits; the memento after block b is
the zero-padded running sum of every digit so far::

    <bos> (<|block_start|> d d d d d <|block_end|> <|summary_start|> s s s <|summary_end|>)*n_blocks <eos>

Under memento attention (keep 0) the task stays solvable (previous memento + current block suffice).
The memento text still says something about an erased block: the difference of two consecutive running
sums is the block's digit sum, so a passcode made of summed digits has a text floor above chance
(:func:`text_ceiling`: 16.0% for 5 digits).

With ``passcode_digits > 0`` every block also carries a passcode segment after its summed digits, which
no memento summarizes (``<|block_start|> d d d d d p p p p p <|block_end|>``): the memento text is
independent of it, so the text floor of a passcode probe is exactly chance.
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
    passcode_digits: int = 0  # unsummed digits after the summed ones in every block (0: none)

    @property
    def stride(self) -> int:
        """Tokens per block + memento: 4 delimiters + digits + passcode digits + memento digits."""
        return 4 + self.block_digits + self.passcode_digits + self.memento_digits

    @property
    def length(self) -> int:
        return 1 + self.n_blocks * self.stride + 1

    def block_start(self, block: int) -> int:
        return 1 + block * self.stride

    def block_content(self, block: int) -> np.ndarray:
        """``[block_digits]`` positions of the block's digits."""
        s = self.block_start(block) + 1
        return np.arange(s, s + self.block_digits)

    def passcode(self, block: int) -> np.ndarray:
        """``[passcode_digits]`` positions of the block's passcode segment (empty without one)."""
        s = self.block_start(block) + 1 + self.block_digits
        return np.arange(s, s + self.passcode_digits)

    def block_end(self, block: int) -> int:
        return self.block_start(block) + 1 + self.block_digits + self.passcode_digits

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
        digits: ``[n, n_blocks, block_digits]`` int64, the summed block digits.
        sums: ``[n, n_blocks]`` int64, running sums (the memento values).
        token_ids: ``[n, length]`` int64.
        passcodes: ``[n, n_blocks, passcode_digits]`` int64, the unsummed passcode segments (empty last
            axis without one).
    """

    digits: np.ndarray
    sums: np.ndarray
    token_ids: np.ndarray
    layout: ToyLayout
    passcodes: np.ndarray | None = None


def encode(digits: np.ndarray, layout: ToyLayout = ToyLayout(), passcodes: np.ndarray | None = None) -> ToyBatch:
    """Token ids for given block digits ``[n, n_blocks, block_digits]`` (values 0..9).

    ``passcodes``: ``[n, n_blocks, passcode_digits]`` when the layout has a passcode segment.
    """
    digits = np.asarray(digits, dtype=np.int64)
    if digits.ndim != 3 or digits.shape[1:] != (layout.n_blocks, layout.block_digits):
        raise ValueError(f"digits must be [n, {layout.n_blocks}, {layout.block_digits}], got {digits.shape}")
    if digits.min(initial=0) < 0 or digits.max(initial=0) > 9:
        raise ValueError("digits must lie in 0..9")
    n = digits.shape[0]
    want = (n, layout.n_blocks, layout.passcode_digits)
    if passcodes is None and layout.passcode_digits == 0:
        passcodes = np.zeros(want, dtype=np.int64)
    if passcodes is None:
        raise ValueError(f"passcodes must be {list(want)} for a layout with a passcode segment, got None")
    passcodes = np.asarray(passcodes, dtype=np.int64)
    if passcodes.shape != want:
        raise ValueError(f"passcodes must be {list(want)}, got {list(passcodes.shape)}")
    if passcodes.min(initial=0) < 0 or passcodes.max(initial=0) > 9:
        raise ValueError("passcode digits must lie in 0..9")
    sums = np.cumsum(digits.sum(axis=2), axis=1)
    if sums.max(initial=0) >= 10**layout.memento_digits:
        raise ValueError(f"running sum {sums.max()} does not fit {layout.memento_digits} memento digits")
    ids = np.full((n, layout.length), PAD, dtype=np.int64)
    ids[:, 0] = BOS
    ids[:, -1] = EOS
    for b in range(layout.n_blocks):
        ids[:, layout.block_start(b)] = TOY_TOKENS.block_start
        ids[:, layout.block_content(b)] = DIGIT0 + digits[:, b]
        ids[:, layout.passcode(b)] = DIGIT0 + passcodes[:, b]
        ids[:, layout.block_end(b)] = TOY_TOKENS.block_end
        ids[:, layout.summary_start(b)] = TOY_TOKENS.summary_start
        ids[:, layout.memento(b)] = DIGIT0 + sum_digits(sums[:, b], layout.memento_digits)
        ids[:, layout.summary_end(b)] = TOY_TOKENS.summary_end
    return ToyBatch(digits=digits, sums=sums, token_ids=ids, layout=layout, passcodes=passcodes)


def sum_digits(values: np.ndarray, width: int) -> np.ndarray:
    """``[n] -> [n, width]`` zero-padded decimal digits, most significant first."""
    values = np.asarray(values, dtype=np.int64)
    powers = 10 ** np.arange(width - 1, -1, -1)
    return (values[:, None] // powers) % 10


def sample(n: int, rng: np.random.Generator | int, layout: ToyLayout = ToyLayout()) -> ToyBatch:
    """``n`` random sequences (uniform digits; the passcode segments, if any, drawn after the summed digits)."""
    rng = np.random.default_rng(rng)
    digits = rng.integers(0, 10, size=(n, layout.n_blocks, layout.block_digits))
    passcodes = (
        rng.integers(0, 10, size=(n, layout.n_blocks, layout.passcode_digits)) if layout.passcode_digits else None
    )
    return encode(digits, layout, passcodes)


def passcode_labels(batch: ToyBatch, block: int) -> np.ndarray:
    """``[n, digits]`` the passcode of ``block``: its passcode segment if the layout has one, else its summed
    digits (the paper's toy: the running-sum mementos then spell out their sum, see :func:`text_ceiling`)."""
    src = batch.passcodes if batch.layout.passcode_digits else batch.digits
    return src[:, block, :].copy()


def text_ceiling(layout: ToyLayout = ToyLayout()) -> float:
    """Exact Bayes accuracy of predicting one passcode digit of a block from everything the memento *text*
    says about it (mean over digits, chance 0.1).

    With a passcode segment the text is independent of the passcode: 0.1. Without one, consecutive running
    sums give the block's digit sum s, and the best guess of a digit is the mode of ``P(digit | s)``.
    """
    if layout.passcode_digits:
        return 0.1
    k = layout.block_digits
    # counts[s] = number of (k-1)-digit tuples summing to s
    counts = np.zeros(9 * (k - 1) + 1)
    counts[0] = 1
    for _ in range(k - 1):
        counts = np.convolve(counts, np.ones(10))[: 9 * (k - 1) + 1]
    total = 0.0
    for s in range(9 * k + 1):
        joint = [counts[s - d] if 0 <= s - d < len(counts) else 0.0 for d in range(10)]
        total += max(joint)
    return float(total / 10**k)


def layout_of(model_or_config) -> ToyLayout:
    """The :class:`ToyLayout` a toy model was trained on (``config.toy_layout``; the default layout if absent)."""
    cfg = getattr(model_or_config, "config", model_or_config)
    d = getattr(cfg, "toy_layout", None)
    return ToyLayout(**d) if isinstance(d, dict) else ToyLayout()
