"""The toy models shipped inside the package: resolve ``toy`` / ``toy@<checkpoint>`` (and the other named
variants, e.g. ``toy-channel`` / ``toy-channel@<checkpoint>``) and load them offline.

``SHIPPED`` maps each name to its weights folder and the recipe in :mod:`.variants` that produced it.
Each weights folder (``runtime/toy/weights/`` for ``toy``) is the run directory written by
``memento-lens toy train --out DIR`` (a :class:`~memento_lens.runtime.rundir.store.RunStore` with sha256 checksums):
``final/`` (float32) plus ``step-NNNNNN/`` checkpoints (float16), each a HF directory (config.json,
model.safetensors, tokenizer files), and ``training_log.json`` with task accuracy per checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..rundir.store import CorruptFile, RunError, RunStore

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
TOY = "toy"
FINAL = "final"
# name -> (weights folder, variant recipe); the demo and the tests use `toy`
SHIPPED: dict[str, tuple[Path, str]] = {
    TOY: (WEIGHTS_DIR, "toy"),
    # passcode segment (text floor at chance), Llama MHA, fixed set over epochs; small channel, see docs/RESULTS.md
    "toy-channel": (WEIGHTS_DIR.parent / "weights-channel", "segment-llama-mha-epochs"),
}
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
REBUILD_HINT = (
    f"rebuild it with `memento-lens toy train --out {WEIGHTS_DIR}` (the shipped recipe; --overwrite to replace)"
)


def _hint(root: Path) -> str:
    for folder, recipe in SHIPPED.values():
        if folder == root and recipe != TOY:
            return f"rebuild it with `memento-lens toy train --variant {recipe} --out {root}` (--overwrite to replace)"
    return REBUILD_HINT


class ToyModelError(RunError):
    """The toy model spec is unknown or its files are missing or corrupt; the message says how to fix it."""


def is_toy_spec(spec: str) -> bool:
    """True for a shipped toy name (``toy``, ``toy-channel``, ...) with or without ``@<checkpoint>``."""
    return str(spec).partition("@")[0] in SHIPPED


def weights_dir_of(spec: str) -> Path:
    """The weights folder of a shipped toy spec (``toy-channel@step-000128`` -> its folder)."""
    return SHIPPED[_name(spec)][0]


def _open(weights_dir: Path) -> RunStore:
    try:
        return RunStore.open(weights_dir, verify=False)
    except RunError as exc:
        raise ToyModelError(f"{exc}; {_hint(weights_dir)}") from None


def _root(weights_dir: str | Path | None, model: str) -> Path:
    return Path(weights_dir) if weights_dir else weights_dir_of(model)


def list_checkpoints(weights_dir: str | Path | None = None, model: str = TOY) -> list[str]:
    """Names of the shipped checkpoints of ``model`` (``final`` first, then ``step-*`` in training order)."""
    store = _open(_root(weights_dir, model))
    names = {rel.split("/", 1)[0] for rel in store.manifest.files if "/" in rel}
    steps = sorted(n for n in names if n.startswith("step-"))
    return ([FINAL] if FINAL in names else []) + steps


def _name(spec: str) -> str:
    if not is_toy_spec(spec):
        known = ", ".join(f"'{n}'" for n in SHIPPED)
        raise ToyModelError(f"model {spec!r} is not a toy spec; use one of {known}, optionally with @<checkpoint>")
    return str(spec).partition("@")[0]


def _split(spec: str) -> str:
    name, at, checkpoint = str(spec).partition("@")
    _name(spec)
    if at and not checkpoint:  # "toy@" is a typo, not a request for the final model
        raise ToyModelError(f"model {spec!r}: empty checkpoint after '@'; use {name!r} or {name}@<checkpoint>")
    return checkpoint or FINAL


def toy_model_dir(spec: str = TOY, weights_dir: str | Path | None = None) -> Path:
    """The HF-format directory of ``toy`` (the final model) or ``toy@<checkpoint>`` (e.g. ``toy@step-000400``);
    the same for every name in ``SHIPPED`` (``toy-channel@<checkpoint>``).

    Raises:
        ToyModelError: unknown checkpoint (listing the available ones), or a missing/corrupt file (naming it
            and how to rebuild).
    """
    base = _name(spec)
    root = Path(weights_dir) if weights_dir else SHIPPED[base][0]
    name = _split(spec)
    store = _open(root)
    available = list_checkpoints(root)
    if name not in available:
        raise ToyModelError(
            f"model {spec!r}: unknown toy checkpoint {name!r}; available: "
            + ", ".join(f"{base}@{n}" for n in available)
        )
    for f in REQUIRED_FILES:
        rel = f"{name}/{f}"
        if rel not in store.manifest.files:
            raise ToyModelError(f"{root / rel}: missing from the toy weights; {_hint(root)}")
        try:
            store.verify_file(rel)
        except CorruptFile as exc:
            raise ToyModelError(f"{exc}; {_hint(root)}") from None
    return root / name


def checkpoint_info(spec: str = TOY, weights_dir: str | Path | None = None) -> dict:
    """``checkpoint.json`` of a toy checkpoint: step, stage, task accuracy (memento/vanilla exact and digit)."""
    import json

    path = toy_model_dir(spec, weights_dir) / "checkpoint.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ToyModelError(f"{path}: unreadable ({exc}); {REBUILD_HINT}") from None


def training_log(weights_dir: str | Path | None = None, model: str = TOY) -> dict:
    """The shipped ``training_log.json`` of ``model`` (losses and task accuracy per checkpoint)."""
    root = _root(weights_dir, model)
    store = _open(root)
    try:
        return store.read_json("training_log.json")
    except RunError as exc:
        raise ToyModelError(f"{exc}; {_hint(root)}") from None


def load_toy(
    spec: str = TOY,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    weights_dir: str | Path | None = None,
):
    """Load the shipped toy model and its tokenizer, offline.

    ``spec`` may also be a path to a directory written by ``toy train`` (its final model) or to one
    checkpoint directory inside it.

    Returns:
        ``(model, tokenizer)``, the model in eval mode on ``device`` in ``dtype``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _resolve(spec, weights_dir)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=dtype, attn_implementation=attn_implementation, local_files_only=True
        )
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ToyModelError(f"{path}: cannot load the toy model ({exc}); {REBUILD_HINT}") from None
    model = model.to(device=device).eval()
    return model, tokenizer


def _resolve(spec: str, weights_dir: str | Path | None) -> Path:
    if is_toy_spec(spec):
        return toy_model_dir(spec, weights_dir)
    path = Path(spec)
    if path.is_dir() and (path / "manifest.json").exists():
        return toy_model_dir(TOY, path)
    if path.is_dir() and (path.parent / "manifest.json").exists():
        return toy_model_dir(f"{TOY}@{path.name}", path.parent)
    raise ToyModelError(f"model {spec!r}: not 'toy', 'toy@<checkpoint>' or a `memento-lens toy train` run directory")
