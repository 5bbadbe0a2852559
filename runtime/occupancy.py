"""KV-cache occupancy and what it costs: the one occupancy type and the one bytes-per-token rule.

Every producer of occupancy (the generation loop, replay, model-free accounting in ``analyses.kv``, the run
tables) builds an :class:`Occupancy`; every byte count comes from :class:`KVSpec` (``kv_bytes_per_token`` of a
loaded model is ``KVSpec.from_model(model).bytes_per_token``). The run table ``occupancy.parquet`` is converted
in :mod:`.rundir.tables`: this module imports nothing of the run directory (no import cycle).

Units: KB = 1024 bytes (the paper's "144 KB/token" for Qwen3-8B is 147,456 bytes), GB = 2**30 bytes,
ktok = 1,000 tokens. Peak is the maximum occupancy over the whole stream (prompt included); AUC is the area
under occupancy over the *generated* tokens (steps ``prompt_len .. n-1``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from .config import ConfigError
from .hf_paths import standard_config_keys

if TYPE_CHECKING:
    from .schedule import Schedule

KB = 1024
GB = 1024**3
KTOK = 1000

DTYPE_BYTES = {
    "bfloat16": 2,
    "float16": 2,
    "half": 2,
    "float32": 4,
    "float": 4,
    "float64": 8,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "fp8": 1,
    "int8": 1,
}


# -- what one cached token costs ---------------------------------------------------------------------------
@dataclass(frozen=True)
class KVSpec:
    """What one cached token costs.

    Attributes:
        name: preset or config name.
        layers, kv_heads, head_dim: the attention geometry.
        dtype_bytes: bytes per cached element (2 for bf16).
    """

    name: str
    layers: int
    kv_heads: int
    head_dim: int
    dtype_bytes: int = 2

    @property
    def bytes_per_token(self) -> int:
        """2 (K and V) × layers × kv_heads × head_dim × dtype bytes."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    @classmethod
    def from_hf_config(
        cls,
        config: str | os.PathLike | Mapping[str, Any] | Any,
        *,
        dtype_bytes: int | None = None,
        name: str | None = None,
    ) -> "KVSpec":
        """From a HF ``config.json`` path (file or model directory), a dict, or a ``PretrainedConfig``.

        ``head_dim`` defaults to hidden_size / num_attention_heads, ``num_key_value_heads`` to
        num_attention_heads, the dtype to the config's ``torch_dtype``/``dtype`` (bf16 when unset).
        """
        where = "config"
        if isinstance(config, (str, os.PathLike)):
            path = Path(config)
            if path.is_dir():
                path = path / "config.json"
            where = str(path)
            try:
                data = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise ConfigError(f"{path}: cannot read a HF config.json ({exc})") from None
        elif isinstance(config, Mapping):
            data = dict(config)
        else:
            data = config.to_dict()
        data = standard_config_keys(data)  # GPT-2's n_layer / n_head / n_embd (runtime/hf_paths.py)
        data = (
            dict(data.get("text_config") or {}, **{k: v for k, v in data.items() if k != "text_config"})
            if "num_hidden_layers" not in data
            else data
        )
        try:
            layers = int(data["num_hidden_layers"])
            heads = int(data["num_attention_heads"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{where}: needs num_hidden_layers and num_attention_heads") from None
        kv_heads = int(data.get("num_key_value_heads") or heads)
        head_dim = data.get("head_dim")
        if not head_dim:
            if not data.get("hidden_size"):
                raise ConfigError(f"{where}: needs head_dim or hidden_size")
            head_dim = int(data["hidden_size"]) // heads
        if dtype_bytes is None:
            dtype = str(data.get("torch_dtype") or data.get("dtype") or "bfloat16").replace("torch.", "")
            if dtype not in DTYPE_BYTES:
                raise ConfigError(f"{where}: unknown dtype {dtype!r}; pass dtype_bytes")
            dtype_bytes = DTYPE_BYTES[dtype]
        return cls(
            name or str(data.get("_name_or_path") or data.get("model_type") or where),
            layers,
            kv_heads,
            int(head_dim),
            int(dtype_bytes),
        )

    @classmethod
    def from_model(cls, model: Any, dtype: Any = None) -> "KVSpec":
        """A loaded model's geometry, at ``dtype`` (a ``torch.dtype``; default: the model's parameters')."""
        import torch

        dtype = dtype or next(model.parameters()).dtype
        return cls.from_hf_config(model.config, dtype_bytes=torch.finfo(dtype).bits // 8)


def kv_bytes_per_token(model: Any, dtype: Any = None) -> int:
    """Bytes one token occupies in a loaded model's KV cache (see :meth:`KVSpec.from_model`)."""
    return KVSpec.from_model(model, dtype).bytes_per_token


# -- how many tokens the cache holds ----------------------------------------------------------------------
def schedule_occupancy(schedule: "Schedule") -> np.ndarray:
    """Tokens held in the KV cache right after each token is processed, from the schedule alone.

    Returns:
        ``[n_tokens]`` int64; entry q = (q + 1) minus every token evicted by events fired at positions <= q.
        Restart recomputes memento KV in place, so it frees exactly the evicted block.
    """
    n = schedule.n_tokens
    freed = np.zeros(n + 1, dtype=np.int64)
    for ev in schedule.evictions:
        freed[ev.position] += ev.n_evicted
    return np.arange(1, n + 1, dtype=np.int64) - np.cumsum(freed[:n])


@dataclass(frozen=True)
class Occupancy:
    """KV-cache occupancy of one trace under one mode, per step.

    Attributes:
        tokens: ``[n_tokens]`` int64, tokens held right after the token at each position is processed (step =
            that position).
        bytes_per_token: from :class:`KVSpec`.
        prompt_len: steps before this are the prompt (AUC counts generated steps only).
        trace, mode: what it belongs to (vanilla / memento / restart or a custom label).
    """

    tokens: np.ndarray
    bytes_per_token: int
    prompt_len: int = 0
    trace: str = ""
    mode: str = ""

    @classmethod
    def from_schedule(
        cls, schedule: "Schedule", bytes_per_token: int, *, trace: str = "", mode: str = ""
    ) -> "Occupancy":
        return cls(schedule_occupancy(schedule), bytes_per_token, schedule.prompt_len, trace, mode)

    @classmethod
    def vanilla(cls, n_tokens: int, bytes_per_token: int, prompt_len: int = 0, trace: str = "") -> "Occupancy":
        """Full attention: nothing is evicted, so after step s the cache holds s + 1 tokens."""
        return cls(np.arange(1, n_tokens + 1, dtype=np.int64), bytes_per_token, prompt_len, trace, "vanilla")

    @property
    def bytes(self) -> np.ndarray:
        return self.tokens.astype(np.int64) * self.bytes_per_token

    @property
    def peak_tokens(self) -> int:
        return int(self.tokens.max(initial=0))

    @property
    def peak_bytes(self) -> int:
        return self.peak_tokens * self.bytes_per_token

    @property
    def peak_gb(self) -> float:
        return self.peak_bytes / GB

    @property
    def auc_token_steps(self) -> int:
        """Σ occupancy over generated steps (tokens × steps)."""
        return int(self.tokens[self.prompt_len :].sum())

    @property
    def auc_bytes(self) -> int:
        """Σ bytes over generated steps (the paper's AUC, in bytes × steps)."""
        return self.auc_token_steps * self.bytes_per_token

    @property
    def auc_gb_ktok(self) -> float:
        return self.auc_bytes / GB / KTOK


__all__ = [
    "KB",
    "GB",
    "KTOK",
    "DTYPE_BYTES",
    "KVSpec",
    "kv_bytes_per_token",
    "schedule_occupancy",
    "Occupancy",
]
