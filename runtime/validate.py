"""Up-front checks of user-given values, shared by the library and the CLI.

Each check raises a :mod:`~memento_lens.runtime.errors` class whose message names the option (``name``): the
CLI passes its flag spelling (``--batch-size``), a Python caller gets the argument name. Nothing here imports
torch at module import; checks that need it import it inside.
"""

from __future__ import annotations

import errno
import numbers
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import InputFileError, ModelError, OptionError, OutputError

MAX_PORT = 65535
# Share of a text's tokens that may become <unk> before the tokenizer is called wrong for it (real text through
# the toy's word-level tokenizer is ~99% <unk>); commands take --allow-unk to accept any share.
MAX_UNK_SHARE = 0.02


def check_int(value: Any, name: str, *, min: int | None = None, max: int | None = None) -> int:
    """``value`` as an int within [min, max]; bools, floats and strings are errors naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise OptionError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if min is not None and value < min:
        raise OptionError(f"{name} must be >= {min}, got {value}")
    if max is not None and value > max:
        raise OptionError(f"{name} must be <= {max}, got {value}")
    return value


def check_float(value: Any, name: str, *, min: float | None = None, max: float | None = None) -> float:
    """``value`` as a finite float within [min, max]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise OptionError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise OptionError(f"{name} must be finite, got {value}")
    if min is not None and value < min:
        raise OptionError(f"{name} must be >= {min:g}, got {value:g}")
    if max is not None and value > max:
        raise OptionError(f"{name} must be <= {max:g}, got {value:g}")
    return value


def parse_int_list(text: str | None, name: str) -> list[int] | None:
    """``"0,3"`` -> ``[0, 3]``; None/empty -> None; anything else names the option and the bad item."""
    if text is None or not str(text).strip():
        return None
    out = []
    for item in str(text).split(","):
        item = item.strip()
        if not item:
            continue
        try:
            out.append(int(item))
        except ValueError:
            raise OptionError(f"{name} expects comma-separated integers, got {item!r} in {text!r}") from None
    return out


def check_indices(values: Iterable[int] | None, n: int, name: str, what: str) -> list[int] | None:
    """Every index in [0, n); ``what`` names the model's count (e.g. "layers of model 'toy' (4)")."""
    if values is None:
        return None
    values = list(values)
    for v in values:
        check_int(v, name)
        if not 0 <= v < n:
            raise OptionError(f"{name}: {v} is out of range; the model has {n} {what} (0..{n - 1})")
    return values


def model_shape(model: Any) -> tuple[int, int, int]:
    """(layers, attention heads, kv heads) of a HF model's config."""
    cfg = model.config
    heads = cfg.num_attention_heads
    return cfg.num_hidden_layers, heads, getattr(cfg, "num_key_value_heads", None) or heads


def check_layers(layers: Iterable[int] | None, model: Any, name: str = "layers") -> list[int] | None:
    return check_indices(layers, model_shape(model)[0], name, "layers")


def check_kv_heads(heads: Iterable[int] | None, model: Any, name: str = "heads") -> list[int] | None:
    return check_indices(heads, model_shape(model)[2], name, "KV heads")


def check_device(device: Any, name: str = "device") -> Any:
    """A ``torch.device`` that this torch can use; bogus names and absent accelerators name the option."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise OptionError(f"{name} {device!r} is not a torch device (use cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(f"{name} {device!r}: this torch ({torch.__version__}) has no usable CUDA device; use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise OptionError(f"{name} {device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise OptionError(f"{name} {device!r}: MPS is not available in this torch; use cpu")
    elif dev.type != "cpu":
        raise OptionError(f"{name} {device!r}: unsupported device type {dev.type!r} (use cpu, cuda or mps)")
    return dev


def check_port(port: Any, name: str = "port") -> int:
    return check_int(port, name, min=1, max=MAX_PORT)


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_output_dir(path: str | os.PathLike, name: str = "out") -> Path:
    """A directory we may create or fill: not an existing file, and under a writable existing ancestor."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{name} {path}: is an existing file, not a directory; choose another path")
    anc = _nearest_existing(path)
    if not anc.is_dir():
        raise OutputError(f"{name} {path}: {anc} is a file, so the directory cannot be created")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise OutputError(f"{name} {path}: {anc} is not writable")
    return path


def check_output_file(path: str | os.PathLike, name: str = "out", *, overwrite: bool = False) -> Path:
    """A file we may write: not a directory, not an existing file unless ``overwrite``, parent writable."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{name} {path}: is a directory; give a file path")
    if path.exists() and not overwrite:
        raise OutputError(f"{name} {path}: already exists; pass --overwrite to replace it")
    anc = _nearest_existing(path.parent)
    if not anc.is_dir():
        raise OutputError(f"{name} {path}: {anc} is a file, so the file cannot be created")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise OutputError(f"{name} {path}: {anc} is not writable")
    return path


# errnos that mean "the environment refuses the write", not a bug: reported as OutputError naming the file.
WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG}


def output_error(exc: OSError) -> OutputError | None:
    """The OutputError for a refused write (disk full, read-only, permission), else None (a bug)."""
    if exc.errno not in WRITE_ERRNOS:
        return None
    where = exc.filename or "output"
    verb = "cannot access" if exc.errno in (errno.EACCES, errno.EPERM) else "cannot write"  # reads are refused too
    return OutputError(f"{verb} {where}: {exc.strerror or os.strerror(exc.errno)}")


def utf8_error(path: Any, exc: UnicodeDecodeError, offset: int = 0) -> InputFileError:
    """The error for non-UTF-8 input: names the file and the absolute byte offset of the bad byte."""
    byte = exc.object[exc.start : exc.start + 1].hex() if exc.object else "?"
    return InputFileError(f"{path}: not UTF-8 text (byte 0x{byte} at byte offset {offset + exc.start})")


def read_text(path: str | os.PathLike, name: str = "input") -> str:
    """The UTF-8 text of a user file; missing, unreadable or non-UTF-8 files name the option and the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputFileError(f"{name} {path}: no such file") from None
    except IsADirectoryError:
        raise InputFileError(f"{name} {path}: is a directory, expected a file") from None
    except PermissionError:
        raise InputFileError(f"{name} {path}: permission denied") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise utf8_error(path, exc) from None


def check_token_id(value: Any, where: str, vocab_size: int | None = None) -> int:
    """A token id: an integer (not bool, not a float such as 3.7), inside the vocabulary when known."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputFileError(f"{where}: token ids must be integers, got {value!r}")
    value = int(value)
    if value < 0:
        raise InputFileError(f"{where}: token id {value} is negative")
    if vocab_size is not None and value >= vocab_size:
        raise InputFileError(f"{where}: token id {value} is outside the vocabulary [0, {vocab_size})")
    return value


def check_token_ids(values: Any, where: str, vocab_size: int | None = None) -> list[int]:
    """A list of token ids (see :func:`check_token_id`); the error names the index of the bad one."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) and not hasattr(values, "tolist"):
        raise InputFileError(f"{where}: expected a list of integer token ids, got {type(values).__name__}")
    if hasattr(values, "tolist"):
        values = values.tolist()
    return [check_token_id(v, f"{where}[{i}]", vocab_size) for i, v in enumerate(values)]


def check_unk_share(ids: Sequence[int], tokenizer: Any, where: str, tokenizer_name: str, max_share: float) -> None:
    """More than ``max_share`` of ``ids`` being the tokenizer's <unk> is an error naming the tokenizer and ``where``."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or max_share >= 1 or len(ids) == 0:
        return
    import numpy as np

    n_unk = int(np.count_nonzero(np.asarray(ids, dtype=np.int64) == unk))
    if n_unk > max_share * len(ids):
        raise InputFileError(
            f"{where}: {n_unk} of {len(ids)} tokens became <unk> under tokenizer {tokenizer_name} (more than "
            f"{max_share:.0%}): it does not cover this text (a text for another vocabulary?); use the model's own "
            "tokenizer, or, where a command can go on regardless (generate, ingest, kv, stats), pass --allow-unk"
        )


def check_vocab(traces: Sequence[Any], model: Any, what: str = "trace") -> None:
    """Every token id of every trace inside the model's vocabulary (replaying an approx-tokenized run, or a
    run of another model, otherwise fails deep inside the embedding)."""
    vocab = int(model.config.vocab_size)
    for t in traces:
        ids = t.token_ids
        bad = next(((i, x) for i, x in enumerate(ids) if not 0 <= int(x) < vocab), None)
        if bad is not None:
            i, x = bad
            raise ModelError(
                f"{what} {t.trace_id!r}: token {i} has id {int(x)}, outside the model's vocabulary "
                f"[0, {vocab}); were these traces tokenized for another model (or with --tokenizer approx)?"
            )


__all__ = [
    "check_int",
    "check_float",
    "parse_int_list",
    "check_indices",
    "check_layers",
    "check_kv_heads",
    "check_device",
    "check_port",
    "check_output_dir",
    "check_output_file",
    "output_error",
    "read_text",
    "utf8_error",
    "check_token_id",
    "check_token_ids",
    "check_vocab",
    "check_unk_share",
    "MAX_UNK_SHARE",
    "model_shape",
    "check_run_request",
]


def check_run_request(model: Any, *, batch_size: Any, captures: Sequence[Any] = (), out: Any = None) -> None:
    """What ``generate_to_run`` / ``replay_to_run`` check before anything is written: the batch size, the
    captures' layers against the model, and the output directory."""
    check_int(batch_size, "--batch-size", min=1)
    for cap in captures:
        check_layers(getattr(cap, "layers", None), model, f"{type(cap).__name__}.layers")
    if out is not None:
        check_output_dir(out, "--out")
