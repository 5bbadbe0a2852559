"""Block-masking configuration and the memento special tokens.

Field names and meanings follow the reference engine's ``BlockMaskingConfig`` (the Memento paper's vLLM
overlay), so a config written for that engine reads the same here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from .errors import ConfigError  # noqa: F401  (re-exported; defined once in errors.py)

BLOCK_START = "<|block_start|>"
BLOCK_END = "<|block_end|>"
SUMMARY_START = "<|summary_start|>"
SUMMARY_END = "<|summary_end|>"
MEMENTO_TOKEN_STRINGS = (BLOCK_START, BLOCK_END, SUMMARY_START, SUMMARY_END)
THINK_START = "<think>"
THINK_END = "</think>"
IM_START = "<|im_start|>"
ASSISTANT = "assistant"

KEEP_ALL = -1
"""``keep_last_n_blocks`` value meaning "never evict": every block stays in the cache (vanilla attention)."""
MODES = ("vanilla", "memento", "restart")
WORLDS = ("normal", "restart")


@dataclass(frozen=True)
class BlockMaskingConfig:
    """How finished blocks are evicted from the KV cache.

    Attributes:
        keep_last_n_blocks: :data:`KEEP_ALL` (-1) never evicts (vanilla), 0 evicts every completed block on its
            ``<|summary_end|>``, N keeps the last N completed blocks visible (FIFO).
        mask_delimiters: required (no default, as in the reference). False keeps ``<|block_start|>``
            and ``<|block_end|>`` visible and evicts the content between them; True evicts them too.
        compact_on_summary_end: evict when ``<|summary_end|>`` is processed.
        require_assistant_section: only track blocks after ChatML ``<|im_start|>assistant``; turned off
            when the tokenizer lacks those tokens (see :meth:`MementoTokenIds.resolve_config`).
        restart_mode: evict the block *with* its delimiters, then recompute the memento's KV from
            ``<|summary_start|>`` with the block gone.
        keep_last_block_for_answer: with keep 0, defer evicting the last completed block until the next
            ``<|block_start|>``, so a final answer still sees it.
        max_block_tokens: force ``<|block_end|>`` once a block holds this many content tokens (0 = off).
    """

    mask_delimiters: bool
    keep_last_n_blocks: int = 0
    compact_on_summary_end: bool = True
    require_assistant_section: bool = True
    restart_mode: bool = False
    keep_last_block_for_answer: bool = False
    max_block_tokens: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.mask_delimiters, bool):
            raise ConfigError(
                "mask_delimiters must be set explicitly to true or false "
                "(false: Qwen3/OLMo3 style, delimiters stay; true: Phi-4 style, delimiters evicted)"
            )
        for name in (
            "compact_on_summary_end",
            "require_assistant_section",
            "restart_mode",
            "keep_last_block_for_answer",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        keep, cap = self.keep_last_n_blocks, self.max_block_tokens
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < KEEP_ALL:
            raise ConfigError(
                f"keep_last_n_blocks (--keep) must be an integer >= -1 (-1 = KEEP_ALL, never evict), got {keep!r}"
            )
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
            raise ConfigError(f"max_block_tokens must be an integer >= 0, got {cap!r}")

    @property
    def evicts(self) -> bool:
        """Whether this config ever evicts anything (False for vanilla)."""
        return self.keep_last_n_blocks >= 0 and self.compact_on_summary_end

    @property
    def mode(self) -> str:
        """'vanilla', 'memento' or 'restart'."""
        if not self.evicts:
            return "vanilla"
        return "restart" if self.restart_mode else "memento"

    @classmethod
    def vanilla(cls, mask_delimiters: bool = False) -> "BlockMaskingConfig":
        return cls(mask_delimiters=mask_delimiters, keep_last_n_blocks=-1)

    @classmethod
    def from_mode(
        cls, mode: str, mask_delimiters: bool = False, keep_last_n_blocks: int = 0, **kwargs: Any
    ) -> "BlockMaskingConfig":
        """Build the config for one of 'vanilla', 'memento', 'restart'.

        ``keep_last_n_blocks`` is ignored for vanilla; :data:`KEEP_ALL` with 'memento' or 'restart' would
        silently be vanilla and is refused.
        """
        if mode == "vanilla":
            return cls(mask_delimiters=mask_delimiters, keep_last_n_blocks=KEEP_ALL, **kwargs)
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        _check_evicting_keep(mode, keep_last_n_blocks)
        memento = cls(mask_delimiters=mask_delimiters, keep_last_n_blocks=keep_last_n_blocks, **kwargs)
        return world_config(memento, "restart" if mode == "restart" else "normal")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "config") -> "BlockMaskingConfig":
        """Build from a JSON-like mapping; unknown keys and a missing ``mask_delimiters`` are errors.

        ``enable`` (reference engine field) is accepted: ``enable: false`` means vanilla.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a JSON object of config fields, got {type(data).__name__}")
        data = dict(data)
        enable = data.pop("enable", True)
        data.pop("debug", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if "mask_delimiters" not in data or data["mask_delimiters"] is None:
            raise ConfigError(f"{where}: mask_delimiters must be set explicitly (true or false)")
        if not enable:
            data["keep_last_n_blocks"] = -1
        try:
            return cls(**data)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_evicting_keep(mode: str, keep_last_n: int) -> None:
    """KEEP_ALL with an evicting mode would silently run vanilla attention: refused, naming the options."""
    if keep_last_n == KEEP_ALL:
        raise ConfigError(
            f"--keep -1 (keep_last_n_blocks = KEEP_ALL: never evict) with --mode {mode} would run vanilla "
            "attention; use --mode vanilla, or --keep N >= 0 (completed blocks kept visible)"
        )


def world_config(base: BlockMaskingConfig, world: str) -> BlockMaskingConfig:
    """The masking config of a world of the restart ablation (the probes' and ablations' ``world``).

    ``"normal"``: ``base`` itself (each memento's KV computed with its block visible). ``"restart"``: ``base``
    in restart mode (the block evicted with its delimiters and the memento's KV recomputed without it).
    """
    if world == "normal":
        return base
    if world == "restart":
        return dataclasses.replace(base, restart_mode=True)
    raise ConfigError(f"world must be one of {', '.join(WORLDS)}; got {world!r}")


def masking_for(
    mode: str | None,
    keep_last_n: int,
    mask_delimiters: bool | None,
    model_masking: BlockMaskingConfig | None = None,
    *,
    model_name: str = "the model",
    default_mask_delimiters: bool | None = None,
    **fields: Any,
) -> BlockMaskingConfig:
    """The masking config a command runs with: the one delimiter-default policy.

    Args:
        mode: 'vanilla', 'memento' or 'restart'; None derives it from ``keep_last_n`` (:data:`KEEP_ALL` =
            vanilla, else memento). :data:`KEEP_ALL` with 'memento'/'restart' is a :class:`ConfigError`
            naming ``--keep`` (it would silently be vanilla).
        keep_last_n: ``keep_last_n_blocks`` (``--keep``): >= 0, or :data:`KEEP_ALL`.
        mask_delimiters: the user's choice (``--mask-delimiters``/``--keep-delimiters``); None = the default.
        model_masking: the config the model was trained with, when known (the toy's): its
            ``mask_delimiters`` is the default.
        model_name: names the model in the error below.
        default_mask_delimiters: the default when neither the user nor the model says; None = no default:
            an evicting mode then is a :class:`ConfigError` asking for the flag (vanilla takes False: nothing
            is evicted, the choice changes nothing).
        fields: other :class:`BlockMaskingConfig` fields (``max_block_tokens``, ``require_assistant_section``).

    See :func:`delimiter_conflict` for the warning when the choice contradicts the model's training.
    """
    if mode is None:
        mode = "vanilla" if keep_last_n == KEEP_ALL else "memento"
    if mode not in MODES:
        raise ConfigError(f"--mode must be one of {', '.join(MODES)}; got {mode!r}")
    if mode != "vanilla":
        _check_evicting_keep(mode, keep_last_n)
    if mask_delimiters is None:
        trained = model_masking.mask_delimiters if model_masking is not None else None
        mask_delimiters = next((v for v in (trained, default_mask_delimiters) if v is not None), None)
        if mask_delimiters is None:
            if mode != "vanilla":
                raise ConfigError(
                    f"model {model_name!r} does not record its delimiter masking: pass --keep-delimiters "
                    "(Qwen3/OLMo3 style) or --mask-delimiters (Phi-4 style)"
                )
            mask_delimiters = False
    return BlockMaskingConfig.from_mode(mode, mask_delimiters=mask_delimiters, keep_last_n_blocks=keep_last_n, **fields)


def delimiter_conflict(
    config: BlockMaskingConfig, model_masking: BlockMaskingConfig | None, model_name: str = "the model"
) -> str | None:
    """The warning when an evicting ``config`` masks delimiters differently from the model's training, else None."""
    if model_masking is None or not config.evicts or config.mask_delimiters == model_masking.mask_delimiters:
        return None
    said = "--mask-delimiters" if config.mask_delimiters else "--keep-delimiters"
    trained = "--mask-delimiters" if model_masking.mask_delimiters else "--keep-delimiters"
    return f"{said} contradicts model {model_name!r}, trained with {trained}; its outputs will not match its training"


@dataclass(frozen=True)
class MementoTokenIds:
    """Token ids of the memento delimiters (and optional ChatML/think markers) in one vocabulary.

    ``im_start``/``assistant`` are None when the tokenizer lacks them; ``think_end`` marks the answer.
    """

    block_start: int
    block_end: int
    summary_start: int
    summary_end: int
    im_start: int | None = None
    assistant: int | None = None
    think_end: int | None = None

    @property
    def delimiters(self) -> frozenset[int]:
        return frozenset((self.block_start, self.block_end, self.summary_start, self.summary_end))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "token_ids") -> "MementoTokenIds":
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a JSON object of token ids, got {type(data).__name__}")
        required = ("block_start", "block_end", "summary_start", "summary_end")
        missing = [k for k in required if data.get(k) is None]
        if missing:
            raise ConfigError(f"{where}: missing token id(s) {', '.join(missing)}")
        extra = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if extra:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(extra)}")
        bad = next(
            (
                (k, v)
                for k, v in data.items()
                if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0)
            ),
            None,
        )
        if bad is not None:
            raise ConfigError(f"{where}.{bad[0]}: token ids must be non-negative integers, got {bad[1]!r}")
        return cls(**dict(data))

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> "MementoTokenIds":
        """Look the memento tokens up in a HF tokenizer.

        Raises:
            MissingMementoTokens: naming every memento token the vocabulary lacks.
        """
        vocab = tokenizer.get_vocab()

        def single(tok: str) -> int | None:
            return vocab.get(tok)

        ids = {
            name: single(tok)
            for name, tok in zip(("block_start", "block_end", "summary_start", "summary_end"), MEMENTO_TOKEN_STRINGS)
        }
        missing = [tok for tok, (_, v) in zip(MEMENTO_TOKEN_STRINGS, ids.items()) if v is None]
        if missing:
            raise MissingMementoTokens(missing)
        assistant = single(ASSISTANT)
        if assistant is None:
            enc = tokenizer.encode(ASSISTANT, add_special_tokens=False)
            unk = getattr(tokenizer, "unk_token_id", None)
            # A word-level vocabulary without the word encodes it as <unk>: that is not the marker.
            assistant = enc[0] if len(enc) == 1 and enc[0] != unk else None
        return cls(**ids, im_start=single(IM_START), assistant=assistant, think_end=single(THINK_END))

    def resolve_config(self, config: BlockMaskingConfig) -> BlockMaskingConfig:
        """Turn off ``require_assistant_section`` when this vocabulary has no ChatML markers (as the reference)."""
        if config.require_assistant_section and (self.im_start is None or self.assistant is None):
            return dataclasses.replace(config, require_assistant_section=False)
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class MissingMementoTokens(ConfigError):
    """The tokenizer lacks one or more memento tokens."""

    def __init__(self, missing: list[str]):
        self.missing = missing
        super().__init__(
            f"tokenizer lacks the memento token(s) {', '.join(missing)}; add them (initialised as in the paper) "
            "with `memento-lens mementify --model MODEL --out DIR`, then pass --model DIR "
            "(from Python: memento_lens.runtime.add_memento_tokens(model, tokenizer)), or use a Memento-trained "
            "checkpoint"
        )
