"""Loading models for the runtime: a local HF checkpoint, the shipped toy, or a random model built from a
config; and adding the memento tokens to a vocabulary that lacks them (initialised as in the paper).

Nothing here touches the network: a model spec is a local path, ``toy`` / ``toy@<checkpoint>``, a named real
preset installed from the package registry (``smollm2-135m``, see :mod:`.presets`), or ``random:tiny`` /
``random:bench`` / ``random:llama-tiny`` / ``random:toy`` (random Qwen3- or Llama-architecture models built from
a config).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import (
    BLOCK_END,
    BLOCK_START,
    MEMENTO_TOKEN_STRINGS,
    SUMMARY_END,
    SUMMARY_START,
    THINK_END,
    THINK_START,
    ConfigError,
    MementoTokenIds,
)
from .errors import ModelError
from .hf_paths import ATTN_IMPLEMENTATION_ATTR
from .occupancy import kv_bytes_per_token  # the one bytes-per-token rule (re-exported)

# The paper's initialisation words for each new memento token (mean embedding + N(0, 0.01) noise).
RELATED_WORDS: dict[str, tuple[str, ...]] = {
    BLOCK_START: ("block", "start", "begin", "section", "step"),
    BLOCK_END: ("block", "end", "finish", "section", "done"),
    SUMMARY_START: ("summary", "summarize", "brief", "recap", "overview"),
    SUMMARY_END: ("summary", "end", "finish", "done", "complete"),
    # Not in the paper (its Qwen3 vocabulary already has them); same recipe for vocabularies that lack them.
    THINK_START: ("think", "reason", "thought", "start", "begin"),
    THINK_END: ("think", "reason", "thought", "end", "done"),
}
INIT_NOISE_STD = 0.01

DTYPES = {
    "float64": torch.float64,
    "fp64": torch.float64,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "auto": None,
}


class ModelLoadError(ModelError, ConfigError):
    """The model spec cannot be loaded; the message names the path or spec."""


@dataclass
class LoadedModel:
    """A causal LM ready for the runtime.

    Attributes:
        model: the HF causal LM, in eval mode.
        tokenizer: its tokenizer (None for random models built without one).
        tokens: the memento token ids (None when the vocabulary lacks them).
        name: the spec it was loaded from (recorded in run manifests).
        masking: the ``BlockMaskingConfig`` the model was trained with, when known (the toy's).
        is_toy: a toy-task model (the shipped toys, ``toy@<checkpoint>``, ``random:toy``, or any checkpoint whose
            config is a toy's: the trained layout recorded, or the toy vocabulary): consumers pick the toy task
            from this, never from the spec's spelling. ``None`` at construction: decided from the model's config.
        checkpoint: the checkpoint label of the spec (``toy@step-000750`` -> ``step-000750``; ``""`` otherwise).
    """

    model: Any
    tokenizer: Any
    tokens: MementoTokenIds | None
    name: str
    masking: Any = None
    is_toy: bool | None = None
    checkpoint: str = ""

    def __post_init__(self):
        if self.is_toy is None:
            self.is_toy = _toy_config(getattr(self.model, "config", None))

    def require_tokens(self) -> MementoTokenIds:
        if self.tokens is None:
            if self.tokenizer is None:
                raise ConfigError(
                    f"model {self.name!r} has no tokenizer (none of {', '.join(_TOKENIZER_FILES[:2])} in it), so its "
                    "memento token ids are unknown"
                )
            MementoTokenIds.from_tokenizer(self.tokenizer)  # raises MissingMementoTokens naming them
        assert self.tokens is not None
        return self.tokens

    @property
    def eos_token_id(self) -> int | None:
        tok = getattr(self.tokenizer, "eos_token_id", None)
        if tok is None:
            tok = (
                getattr(self.model.generation_config, "eos_token_id", None)
                if hasattr(self.model, "generation_config")
                else None
            )
        if isinstance(tok, (list, tuple)):
            tok = tok[0] if tok else None
        return tok


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}; got {dtype!r}") from None


ARCHITECTURES = ("qwen3", "llama")


def random_causal_lm(
    *,
    arch: str = "qwen3",
    vocab_size: int = 64,
    layers: int = 2,
    hidden: int = 64,
    mlp: int = 128,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int = 16,
    max_positions: int = 32768,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
) -> Any:
    """A random causal LM of architecture ``arch`` (``qwen3`` or ``llama``) built from a config (no network).

    Llama has no per-head q/k norm and (here, as in SmolLM2) tied embeddings; Qwen3 has both norms and untied
    embeddings: together they cover the HF internals the runtime touches (see :mod:`.hf_paths`).
    """
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        max_position_embeddings=max_positions,
    )
    if arch == "qwen3":
        cfg = Qwen3Config(**common, tie_word_embeddings=False)
    elif arch == "llama":
        cfg = LlamaConfig(**common, tie_word_embeddings=True)
    else:
        raise ModelError(f"random model architecture {arch!r}: expected one of {', '.join(ARCHITECTURES)}")
    setattr(cfg, ATTN_IMPLEMENTATION_ATTR, attn_implementation)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg).to(device=device, dtype=dtype).eval()


def random_qwen3(**kwargs: Any) -> Any:
    """A random Qwen3-architecture causal LM built from a config (see :func:`random_causal_lm`)."""
    return random_causal_lm(arch="qwen3", **kwargs)


# Random models addressable from the CLI. Token ids: 0 <bos>, 1..4 the memento tokens, 5 <eos>, 6.. words.
RANDOM_SPECS: dict[str, dict[str, Any]] = {
    "tiny": dict(vocab_size=64, layers=2, hidden=64, mlp=128, heads=4, kv_heads=2, head_dim=16),
    "bench": dict(vocab_size=256, layers=8, hidden=256, mlp=768, heads=8, kv_heads=4, head_dim=32),
    "llama-tiny": dict(arch="llama", vocab_size=64, layers=2, hidden=64, mlp=128, heads=4, kv_heads=2, head_dim=16),
}
RANDOM_TOKENS = MementoTokenIds(block_start=1, block_end=2, summary_start=3, summary_end=4)
RANDOM_EOS = 5


def _word_level_tokenizer(vocab: list[str], bos: str, eos: str, pad: str | None = None) -> Any:
    """A local word-level tokenizer (whitespace split) over ``vocab``; special tokens kept whole."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token=vocab[-1]))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    specials = [w for w in vocab if w.startswith("<")]
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token=bos, eos_token=eos, pad_token=pad or eos, unk_token=vocab[-1]
    )
    fast.add_special_tokens({"additional_special_tokens": [w for w in specials if w not in (bos, eos, pad)]})
    return fast


def random_tokenizer(vocab_size: int) -> Any:
    vocab = ["<bos>", *MEMENTO_TOKEN_STRINGS, "<eos>"]
    vocab += [f"w{i}" for i in range(vocab_size - len(vocab))]
    return _word_level_tokenizer(vocab, bos="<bos>", eos="<eos>")


def load_model(
    spec: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    attn_implementation: str = "sdpa",
    seed: int = 0,
    cache: str | Path | None = None,
    add_memento: bool = True,
    device_map: Any = None,
) -> LoadedModel:
    """Load a model from a spec.

    Args:
        spec: a local directory with a HF checkpoint; ``toy`` or ``toy@<checkpoint>`` (the shipped toy model,
            located by ``memento_lens.runtime.toy.shipped.toy_model_dir``); a real preset name
            (``smollm2-135m``: converted once from its registry package into the cache, see :mod:`.presets`);
            ``random:tiny`` / ``random:bench`` / ``random:llama-tiny`` (random Qwen3 / Llama models built from a
            config, with a word-level tokenizer).
        device, dtype: where and in what precision (``None``/``auto``: the checkpoint's dtype).
        attn_implementation: ``sdpa`` (default) or ``eager``.
        cache: preset cache root (default ``$MEMENTO_LENS_CACHE`` or ``~/.cache/memento-lens``).
        add_memento: a real preset's vocabulary lacks the memento tokens; they are added on load with the paper's
            initialisation (seed 0, from the float32 weights, so the model equals ``mementify(preset, seed=0)``
            bit for bit) so that ``--model smollm2-135m`` works in every command. ``False`` gives the raw
            conversion (what ``mementify`` starts from).
        device_map: for a model larger than one device (accelerate): ``"auto"`` spreads the layers over the
            visible GPUs (then CPU), or a ``{module name: device}`` dict (``"cpu"``, ``0``, ``"cuda:1"``,
            ``"disk"``); ``device`` is then ignored. A local checkpoint is loaded straight into place.

    Raises:
        ModelLoadError: one line naming the missing path or unknown spec.
    """
    from .validate import check_device

    name = str(spec)
    tdtype = parse_dtype(dtype)
    device = check_device(device, "--device")  # a bogus or absent device fails before any loading
    if device_map is not None:
        return _dispatched(
            spec,
            device_map,
            dtype=dtype,
            attn_implementation=attn_implementation,
            seed=seed,
            cache=cache,
            add_memento=add_memento,
        )
    if name == "random:toy":  # the toy's architecture and tokenizer, random weights (before/without training)
        from .toy.model import build_model
        from .toy.tokenizer import build_tokenizer

        model = build_model(seed=seed, device=device, dtype=tdtype or torch.float32).eval()
        setattr(model.config, ATTN_IMPLEMENTATION_ATTR, attn_implementation)
        return _with_toy_masking(from_objects(model, build_tokenizer(), name=name))
    if name.startswith("random:"):
        kind = name.split(":", 1)[1]
        if kind not in RANDOM_SPECS:
            raise ModelLoadError(
                f"unknown random model {name!r}; known: " + ", ".join(f"random:{k}" for k in (*RANDOM_SPECS, "toy"))
            )
        model = random_causal_lm(
            **RANDOM_SPECS[kind],
            seed=seed,
            device=device,
            dtype=tdtype or torch.float32,
            attn_implementation=attn_implementation,
        )
        tok = random_tokenizer(RANDOM_SPECS[kind]["vocab_size"])
        return LoadedModel(model, tok, RANDOM_TOKENS, name)
    from .presets import MODEL_PRESETS, resolve_model

    if _is_shipped_toy(name):
        path = _toy_dir(name)
    elif name in MODEL_PRESETS:
        path = resolve_model(name, cache, log=_stderr_line)
        if add_memento:  # the paper's initialisation is computed from the float32 weights, then cast
            lm = load_model(path, device=device, dtype=torch.float32, attn_implementation=attn_implementation)
            add_memento_tokens(lm.model, lm.tokenizer, seed=0, think=True)
            model = lm.model.to(dtype=tdtype) if tdtype not in (None, torch.float32) else lm.model
            return from_objects(model.eval(), lm.tokenizer, name=name)
    else:
        path = Path(name).expanduser()
        if not path.exists():
            raise ModelLoadError(
                f"model path {path} does not exist (give a local HF checkpoint directory, 'toy', "
                f"a preset ({', '.join(MODEL_PRESETS)}) or 'random:tiny')"
            )
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    check_checkpoint_dir(path)
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the CLI shows its own progress; keep errors on one line
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=tdtype if tdtype is not None else "auto",
            attn_implementation=attn_implementation,
            local_files_only=True,
        )
    except (OSError, ValueError, TypeError, RuntimeError, SafetensorError, _config_errors()) as exc:
        # SafetensorError: truncated or corrupt weights; RuntimeError: a config whose shapes cannot be built
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"{path}: not a loadable HF causal LM ({first})") from None
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    model = model.to(device).eval()
    tokenizer = _load_tokenizer(path, name)
    lm = from_objects(model, tokenizer, name=name)
    return _with_toy_masking(lm) if _is_shipped_toy(name) else lm


def _dispatched(spec: str | Path, device_map: Any, **kw: Any) -> LoadedModel:
    """``load_model`` with a device map (accelerate): a local checkpoint is loaded straight into place by
    ``from_pretrained(device_map=...)``; a built model (toy, random, preset) is built on CPU and dispatched."""
    import tempfile

    from accelerate import dispatch_model, infer_auto_device_map

    from .errors import OptionError

    if not (device_map == "auto" or isinstance(device_map, dict)):
        raise OptionError(f"--device-map {device_map!r}: give 'auto' (or a dict of module name -> device)")
    path = Path(str(spec)).expanduser()
    if path.is_dir() and not _is_shipped_toy(str(spec)):
        from transformers import AutoModelForCausalLM

        tdtype = parse_dtype(kw.get("dtype"))
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=tdtype if tdtype is not None else "auto",
            attn_implementation=kw.get("attn_implementation", "sdpa"),
            local_files_only=True,
            device_map=device_map,
            offload_folder=tempfile.mkdtemp(prefix="memento-lens-offload-"),
        ).eval()
        return from_objects(model, _load_tokenizer(path, str(spec)), name=str(spec))
    lm = load_model(spec, device="cpu", **kw)
    model = lm.model
    no_split = list(getattr(model, "_no_split_modules", None) or [])
    dmap = infer_auto_device_map(model, no_split_module_classes=no_split) if device_map == "auto" else dict(device_map)
    offload = tempfile.mkdtemp(prefix="memento-lens-offload-") if "disk" in dmap.values() else None
    lm.model = dispatch_model(model, device_map=dmap, offload_dir=offload)
    return lm


def _toy_config(config: Any) -> bool:
    """A toy's HF config: it records the layout it was trained on, or its vocabulary is the toy's."""
    if config is None:
        return False
    if getattr(config, "toy_layout", None) is not None:
        return True
    from .toy.task import VOCAB

    return int(getattr(config, "vocab_size", 0) or 0) <= len(VOCAB) + 1


def _with_toy_masking(lm: LoadedModel) -> LoadedModel:
    from .toy.task import TOY_MASKING

    lm.masking = TOY_MASKING
    lm.is_toy = True
    lm.checkpoint = lm.name.split("@", 1)[1] if "@" in lm.name else ""
    return lm


def _stderr_line(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr, flush=True)


def _is_shipped_toy(name: str) -> bool:
    """``toy`` / ``toy@<checkpoint>`` and any other toy the package ships (runtime.toy.shipped.SHIPPED)."""
    try:
        from memento_lens.runtime.toy.shipped import is_toy_spec
    except ImportError:
        return name == "toy" or name.startswith("toy@")
    return is_toy_spec(name)


def _toy_dir(spec: str) -> Path:
    try:
        from memento_lens.runtime.toy.shipped import toy_model_dir
    except ImportError:
        raise ModelLoadError(
            f"model {spec!r}: the shipped toy model is not available in this install "
            "(memento_lens.runtime.toy.shipped is missing); pass --model PATH or random:tiny"
        ) from None
    path = Path(toy_model_dir(spec))
    if not path.exists():
        raise ModelLoadError(f"model {spec!r}: toy weights directory {path} does not exist")
    return path


# Config fields a causal-LM checkpoint must hold as positive integers when present: a wrong type or value otherwise
# surfaces as a validation traceback (or a negative-dimension RuntimeError) deep inside transformers.
_INT_CONFIG_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "head_dim",
    "max_position_embeddings",
)
# Files that make a directory's tokenizer: when one is present but does not load, the directory is damaged.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "vocab.txt",
)


def _config_errors() -> type[Exception]:
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:  # older huggingface_hub: transformers raises ValueError/TypeError instead
        return ValueError
    return StrictDataclassError


def check_checkpoint_dir(path: Path) -> None:
    """One line naming the file and the field for a damaged ``config.json`` (before transformers reads it).

    Raises:
        ModelLoadError: not JSON, not an object, or a size field that is not a positive integer.
    """
    import json

    cfg_path = Path(path) / "config.json"
    if not cfg_path.is_file():
        return  # from_pretrained names the missing file
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{cfg_path}: not a valid JSON config ({exc})") from None
    if not isinstance(cfg, dict):
        raise ModelLoadError(f"{cfg_path}: expected a JSON object, got a {type(cfg).__name__}")
    for field_name in _INT_CONFIG_FIELDS:
        value = cfg.get(field_name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ModelLoadError(f"{cfg_path}: field {field_name!r} must be a positive integer, got {value!r}")


def _load_tokenizer(path: Path, name: str) -> Any:
    from transformers import AutoTokenizer

    if not _is_shipped_toy(name) and not any((Path(path) / f).exists() for f in _TOKENIZER_FILES):
        return None  # transformers would build an empty tokenizer (one token) from the model config alone
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # transformers and tokenizers raise many kinds for a damaged tokenizer
        if _is_shipped_toy(name):
            from .toy.task import VOCAB

            return _word_level_tokenizer(list(VOCAB), bos="<bos>", eos="<eos>", pad="<pad>")
        present = [f for f in _TOKENIZER_FILES if (Path(path) / f).exists()]
        if present:  # a tokenizer was meant to be there: say which file is damaged instead of loading without one
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise ModelLoadError(f"{Path(path) / present[0]}: the tokenizer does not load ({first})") from None
        return None


def from_objects(
    model: Any, tokenizer: Any = None, *, name: str = "in-memory", tokens: MementoTokenIds | None = None
) -> LoadedModel:
    """Wrap an in-memory HF model (and tokenizer) for the runtime; memento ids looked up in the tokenizer."""
    if tokens is None and tokenizer is not None:
        try:
            tokens = MementoTokenIds.from_tokenizer(tokenizer)
        except ConfigError:
            tokens = None
    return LoadedModel(model.eval(), tokenizer, tokens, name)


THINK_TOKEN_STRINGS = (THINK_START, THINK_END)


def add_memento_tokens_to_tokenizer(tokenizer: Any, think: bool = False) -> list[str]:
    """Add the memento tokens (and ``<think>``/``</think>`` when ``think``) the tokenizer lacks, as special
    tokens (each encodes as one id, never split); returns the added strings in order. Idempotent."""
    wanted = [*MEMENTO_TOKEN_STRINGS, *(THINK_TOKEN_STRINGS if think else ())]
    vocab = tokenizer.get_vocab()
    missing = [t for t in wanted if t not in vocab]
    if missing:
        if _accepts_replace(tokenizer):
            tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
        else:
            tokenizer.add_tokens(missing, special_tokens=True)
    return missing


@torch.no_grad()
def add_memento_tokens(model: Any, tokenizer: Any, seed: int = 0, think: bool = False) -> MementoTokenIds:
    """Add the four memento tokens the tokenizer lacks (and ``<think>``/``</think>`` when ``think``), initialised
    as in the paper.

    Each new token's input (and, when untied, output) embedding is the mean embedding of related words
    (:data:`RELATED_WORDS`, each word's sub-tokens included) plus N(0, 0.01) noise. Tokens already in the
    vocabulary keep their embeddings.

    Returns:
        The memento token ids of the extended vocabulary.
    """
    old = model.get_input_embeddings().weight.shape[0]
    missing = add_memento_tokens_to_tokenizer(tokenizer, think=think)
    if missing:
        need = len(tokenizer)
        if need > old:
            model.resize_token_embeddings(need, mean_resizing=False)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        emb_in = model.get_input_embeddings().weight
        emb_out = model.get_output_embeddings()
        emb_out = emb_out.weight if emb_out is not None and emb_out.weight is not emb_in else None
        for tok in missing:
            tid = tokenizer.convert_tokens_to_ids(tok)
            related: list[int] = []
            for word in RELATED_WORDS[tok]:
                related += [i for i in tokenizer.encode(word, add_special_tokens=False) if i < old]
            if not related:
                related = list(range(old))
            for table in (emb_in, emb_out):
                if table is None:
                    continue
                mean = table[related].float().mean(0)
                noise = torch.randn(mean.shape, generator=gen) * INIT_NOISE_STD
                table[tid] = (mean + noise.to(mean.device)).to(table.dtype)
    return MementoTokenIds.from_tokenizer(tokenizer)


def _accepts_replace(tokenizer: Any) -> bool:
    import inspect

    try:
        return "replace_extra_special_tokens" in inspect.signature(tokenizer.add_special_tokens).parameters
    except (TypeError, ValueError):
        return False


def model_info(model: Any) -> dict[str, Any]:
    """Shape facts recorded in run manifests."""
    cfg = model.config
    return {
        "model_type": getattr(cfg, "model_type", "?"),
        "layers": cfg.num_hidden_layers,
        "kv_heads": getattr(cfg, "num_key_value_heads", cfg.num_attention_heads),
        "heads": cfg.num_attention_heads,
        "vocab_size": cfg.vocab_size,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "bytes_per_token": kv_bytes_per_token(model),
    }


__all__ = [
    "LoadedModel",
    "load_model",
    "from_objects",
    "add_memento_tokens",
    "add_memento_tokens_to_tokenizer",
    "random_qwen3",
    "random_causal_lm",
    "kv_bytes_per_token",
    "parse_dtype",
    "ModelLoadError",
    "RELATED_WORDS",
    "RANDOM_TOKENS",
    "RANDOM_EOS",
]
