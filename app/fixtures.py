"""Synthetic run directories written through the runtime's own writer (runtime/rundir).

Used by the app's tests, screenshots and benchmark besides real captured runs: the per-trace tables come
from the runtime's ``trace_tables`` on the real schedule, K/V and attention go through a capture sink and
``RunWriter`` parts, the downstream tables through the schema, so the app's tests open runs written exactly
as the runtime writes them. Only the tensor values are synthetic. Nothing here imports streamlit.

Shapes: KV tensors ``[1, kv_heads, end-start, d_head]``; attention tensors ``[1, heads, n_tokens]``
(row of one query over all positions, evicted = 0).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from memento_lens.runtime.config import BlockMaskingConfig, MementoTokenIds
from memento_lens.runtime.masks import visible_at
from memento_lens.runtime.occupancy import KVSpec
from memento_lens.runtime.rundir import schema
from memento_lens.runtime.rundir.kv import AttnItem, CaptureSink, KVItem, KVKey
from memento_lens.runtime.rundir.store import RunStore
from memento_lens.runtime.rundir.writer import RunWriter, trace_tables
from memento_lens.runtime.schedule import compute_schedule
from memento_lens.runtime.trace import Trace

VOCAB: tuple[str, ...] = (
    "<bos>",
    "<|block_start|>",
    "<|block_end|>",
    "<|summary_start|>",
    "<|summary_end|>",
    "</think>",
    "<eos>",
    *[str(d) for d in range(10)],
    " add",
    " carry",
    " the",
    " so",
    " next",
    " sum",
    " is",
    " digits",
    " total",
    " check",
    " =",
    " +",
    " then",
    " we",
    " get",
    " keep",
    " first",
    " block",
    " Solve",
    ":",
    " running",
    " of",
    " answer",
    ".",
)
TOK = {t: i for i, t in enumerate(VOCAB)}
FIXTURE_TOKENS = MementoTokenIds(
    block_start=TOK["<|block_start|>"],
    block_end=TOK["<|block_end|>"],
    summary_start=TOK["<|summary_start|>"],
    summary_end=TOK["<|summary_end|>"],
    think_end=TOK["</think>"],
)
WORDS = [i for t, i in TOK.items() if t.startswith(" ")]
DIGITS = [TOK[str(d)] for d in range(10)]


@dataclass(frozen=True)
class FixtureSpec:
    """What to generate.

    Attributes:
        n_traces: traces in the run.
        n_blocks: blocks per trace.
        block_len: (min, max) content tokens per block.
        memento_len: (min, max) memento content tokens.
        n_layers, kv_heads, d_head: KV geometry (attention uses ``heads = 2 * kv_heads``).
        attention_traces: how many traces get attention rows captured (0: no ``attention/``).
        attention_queries: query positions captured per traced trace (spread over the trace).
        attention_heads: attention heads (default ``2 * kv_heads``).
        attention_compact: store attention as the capture does (float16 over the visible keys) instead of
            float32 over every position (the layout runs written before compact storage hold).
        traces_per_shard: traces whose tensors share one safetensors shard.
        probes, ablations, figures: also write the downstream tables and figure files.
        complete: mark the run complete.
        as_parts: (with ``complete=False``) leave the tables where an unfinished capture keeps them,
            ``parts/00000/{tokens,events,occupancy,kv_index,attn_index,traces}.parquet``.
        seed: everything is a function of it.
    """

    n_traces: int = 3
    n_blocks: int = 4
    block_len: tuple[int, int] = (6, 14)
    memento_len: tuple[int, int] = (3, 6)
    n_layers: int = 2
    kv_heads: int = 2
    d_head: int = 8
    attention_traces: int = 1
    attention_queries: int = 4
    attention_heads: int | None = None
    attention_compact: bool = False
    traces_per_shard: int = 8
    probes: bool = True
    ablations: bool = True
    figures: bool = True
    complete: bool = True
    as_parts: bool = False
    seed: int = 0


MASKING = BlockMaskingConfig(mask_delimiters=False, keep_last_n_blocks=0)


def fixture_token_ids(rng: np.random.Generator, spec: FixtureSpec) -> tuple[list[int], int]:
    """One synthetic reasoning stream: prompt, ``n_blocks`` x (block, memento), ``</think>``, answer.

    Returns ``(token_ids, prompt_len)``.
    """
    prompt = [
        TOK["<bos>"],
        TOK[" Solve"],
        TOK[":"],
        TOK[" running"],
        TOK[" sum"],
        TOK[" of"],
        *rng.choice(DIGITS, size=4).tolist(),
    ]
    ids = list(prompt)
    for _ in range(spec.n_blocks):
        n = int(rng.integers(spec.block_len[0], spec.block_len[1] + 1))
        body = rng.choice(WORDS + DIGITS, size=n).tolist()
        ids += [FIXTURE_TOKENS.block_start, *body, FIXTURE_TOKENS.block_end]
        m = int(rng.integers(spec.memento_len[0], spec.memento_len[1] + 1))
        memento = [TOK[" sum"], TOK[" is"], *rng.choice(DIGITS, size=max(1, m - 2)).tolist()][:m]
        ids += [FIXTURE_TOKENS.summary_start, *memento, FIXTURE_TOKENS.summary_end]
    ids += [TOK["</think>"], TOK[" answer"], TOK[" ="], *rng.choice(DIGITS, size=3).tolist(), TOK["<eos>"]]
    return ids, len(prompt)


def _png_bytes(width: int = 240, height: int = 120, seed: int = 0) -> bytes:
    """A small valid RGB PNG (a colour gradient), built without any imaging library."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, size=3)
    x = np.linspace(0, 1, width)[None, :, None]
    y = np.linspace(0, 1, height)[:, None, None]
    img = np.clip(base + 50 * x + 40 * y * np.array([1, -1, 0.5]), 0, 255).astype(np.uint8)
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def write_fixture_run(path: str | Path, spec: FixtureSpec = FixtureSpec(), *, overwrite: bool = True) -> Path:
    """Write a synthetic run directory at ``path`` and return it.

    The memento KV of the ``restart`` variant is the ``normal`` KV plus a perturbation whose size grows
    with the layer and differs per head, so the residue heatmap has structure to show.
    """
    rng = np.random.default_rng(spec.seed)
    gen = torch.Generator().manual_seed(spec.seed)
    config = {
        "masking": MASKING.to_dict(),
        "token_ids": FIXTURE_TOKENS.to_dict(),
        "fixture": asdict(spec),
        "model": "fixture-tiny",
    }
    store = RunStore.create(
        path,
        "fixture",
        config,
        overwrite=overwrite,
        info={
            "model": "fixture-tiny",
            "n_layers": spec.n_layers,
            "kv_heads": spec.kv_heads,
            "d_head": spec.d_head,
            "dtype": "float32",
            "chance": schema.PASSCODE_CHANCE,
        },
    )
    if store.reused:
        return Path(path)
    with store:  # a failed overwrite leaves the old run as it was
        _write_traces(store, spec, rng, gen)
        if spec.probes:
            store.write_table(schema.PROBE_RESULTS, _probe_table(rng, spec))
        if spec.ablations:
            store.write_table(schema.ABLATIONS, _ablation_table(rng, spec))
        if spec.figures:
            store.add_file("figures/fig1_occupancy.png", lambda tmp: Path(tmp).write_bytes(_png_bytes(seed=1)))
            store.add_file("figures/fig3_probe_accuracy.png", lambda tmp: Path(tmp).write_bytes(_png_bytes(seed=2)))
            store.add_file(
                "figures/fig3_probe_accuracy.html",
                lambda tmp: Path(tmp).write_text(
                    "<html><body><h3>Probe accuracy</h3><p>fixture figure</p></body></html>"
                ),
            )
            store.add_file(
                "figures/fig3_probe_accuracy.csv", lambda tmp: Path(tmp).write_text("layer,accuracy\n0,0.4\n1,0.6\n")
            )
        writer = RunWriter(store)
        if spec.complete:
            writer.finish(n_traces=spec.n_traces)
        elif not spec.as_parts:
            writer.merge()  # tables merged, run still incomplete
    return Path(path)


def _write_traces(store: RunStore, spec: FixtureSpec, rng: np.random.Generator, gen: torch.Generator) -> None:
    """Every trace through the runtime's own writer: contract tables from the real schedule, K/V and
    attention through a capture sink, ``traces_per_shard`` traces per part."""
    writer = RunWriter(store)
    sink = CaptureSink()
    bytes_per_token = KVSpec(
        "fixture", spec.n_layers, spec.kv_heads, spec.d_head, dtype_bytes=2
    ).bytes_per_token  # bf16
    pending: list[dict[str, pd.DataFrame]] = []
    for t in range(spec.n_traces):
        trace = f"t{t:04d}"
        ids, prompt_len = fixture_token_ids(rng, spec)
        sched = compute_schedule(ids, MASKING, FIXTURE_TOKENS, prompt_len=prompt_len)
        n = len(ids)
        tables = trace_tables(
            Trace(trace, ids, prompt_len),
            sched,
            FIXTURE_TOKENS,
            "memento",
            "fixture",
            bytes_per_token,
            token_strings=[VOCAB[i] for i in ids],
        )
        vanilla = np.arange(1, n + 1)
        tables["occupancy"] = pd.concat(
            [
                tables["occupancy"].assign(mode="vanilla", tokens=vanilla, bytes=vanilla * bytes_per_token),
                tables["occupancy"],
            ],
            ignore_index=True,
        )
        pending.append(tables)
        # KV: per block, memento span normal/restart and the block at eviction time.
        for span in sched.blocks:
            if span.end is None or span.summary_end is None:
                continue
            ranges = {
                "normal": (span.summary_start, span.summary_end + 1),
                "restart": (span.summary_start, span.summary_end + 1),
                "evicted_block": (span.start, span.end + 1),
            }
            for layer in range(spec.n_layers):
                base_k = torch.randn(
                    1, spec.kv_heads, ranges["normal"][1] - ranges["normal"][0], spec.d_head, generator=gen
                )
                base_v = torch.randn(base_k.shape, generator=gen)
                scale = (0.05 + 0.25 * layer / max(1, spec.n_layers - 1)) * torch.linspace(
                    0.5, 1.5, spec.kv_heads
                ).view(1, -1, 1, 1)
                for variant, (s, e) in ranges.items():
                    if variant == "normal":
                        k, v = base_k, base_v
                    elif variant == "restart":
                        k = base_k + scale * torch.randn(base_k.shape, generator=gen)
                        v = base_v + scale * torch.randn(base_v.shape, generator=gen)
                    else:
                        k = torch.randn(1, spec.kv_heads, e - s, spec.d_head, generator=gen)
                        v = torch.randn(k.shape, generator=gen)
                    sink.add_kv(KVItem(KVKey(trace, layer, variant, span.block), s, e, k, v))
        if t < spec.attention_traces:
            heads = spec.attention_heads or 2 * spec.kv_heads
            queries = np.unique(np.linspace(prompt_len, n - 1, spec.attention_queries).astype(int))
            for variant in ("normal", "restart"):
                for layer in range(spec.n_layers):
                    for q in queries:
                        visible = torch.from_numpy(visible_at(sched, int(q), n))  # the runtime's one rule
                        # compact (as AttentionWeights stores it): only the visible keys, float16
                        logits = torch.randn(
                            1, heads, int(visible.sum()) if spec.attention_compact else n, generator=gen
                        )
                        logits = logits * 2
                        if not spec.attention_compact:
                            logits[..., ~visible] = -torch.inf
                        if variant == "restart":
                            logits = logits + 0.5 * torch.randn(logits.shape, generator=gen)
                        w = torch.softmax(logits, dim=-1)
                        if spec.attention_compact:
                            w = w.half()
                        sink.add_attention(AttnItem(trace, variant, layer, int(q), w))
        if len(pending) == spec.traces_per_shard:
            writer.write_part(pending, sink)
            pending = []
    if pending:
        writer.write_part(pending, sink)


def _probe_table(rng: np.random.Generator, spec: FixtureSpec) -> pd.DataFrame:
    """Shaped like `memento-lens probe passcode`: causal control at distance -1, direct at 0, masked at
    1..3 (distances >= 2 at the last layer only)."""
    rows = []
    last = spec.n_layers - 1
    plan = [
        ("causal_control", -1, 0.12),
        ("direct", 0, 0.9),
        ("masked", 1, 0.55),
        ("masked", 2, 0.45),
        ("masked", 3, 0.35),
    ]
    for checkpoint in ("step-500", "final"):
        for condition, distance, level in plan:
            for layer in range(spec.n_layers) if distance <= 1 else [last]:
                acc = float(
                    np.clip(level + 0.05 * layer + rng.normal(0, 0.02) - (0.1 if checkpoint == "step-500" else 0), 0, 1)
                )
                rows.append(
                    {
                        "model": "fixture-tiny",
                        "checkpoint": checkpoint,
                        "condition": condition,
                        "distance": distance,
                        "layer": layer,
                        "head": -1,
                        "probe": "mlp",
                        "seed": 0,
                        "n_train": 800,
                        "n_val": 200,
                        "accuracy": acc,
                        "ci_low": max(0.0, acc - 0.04),
                        "ci_high": min(1.0, acc + 0.04),
                        "control_accuracy": 0.1,
                        "selectivity": acc - 0.1,
                        "task_accuracy": 0.97,
                    }
                )
    return schema.PROBE_RESULTS.frame(rows)


def _ablation_table(rng: np.random.Generator, spec: FixtureSpec) -> pd.DataFrame:
    rows = []
    for experiment, variant, direction in (
        ("restart", "restart", "none"),
        ("patch", "normal", "restart->normal"),
        ("patch", "restart", "normal->restart"),
    ):
        for layer in [-1, *range(spec.n_layers)]:
            frac = 1.0 if layer < 0 else layer / max(1, spec.n_layers - 1)
            value = float(np.clip(0.35 + 0.5 * frac + rng.normal(0, 0.02), 0.05, 0.95))
            rows.append(
                {
                    "experiment": experiment,
                    "model": "fixture-tiny",
                    "checkpoint": "final",
                    "variant": variant,
                    "layer": layer,
                    "head": -1,
                    "direction": direction,
                    "metric": "answer_accuracy",
                    "value": value,
                    "ci_low": value - 0.05,
                    "ci_high": value + 0.05,
                    "n": 200,
                }
            )
    return schema.ABLATIONS.frame(rows)


def large_spec(seed: int = 0) -> FixtureSpec:
    """About 1,000 traces and ~100 MB of captured KV (the benchmark's "large run")."""
    return FixtureSpec(
        n_traces=1000,
        n_blocks=7,
        block_len=(10, 20),
        memento_len=(3, 6),
        n_layers=4,
        kv_heads=2,
        d_head=8,
        attention_traces=20,
        attention_queries=4,
        traces_per_shard=25,
        seed=seed,
    )


def attention_4k_spec(seed: int = 0) -> FixtureSpec:
    """One ~4K-token trace, every query of 2 layers captured (normal and restart), 9 heads as SmolLM2, stored
    compactly (the benchmark's "4K-token trace with 2 layers captured")."""
    return FixtureSpec(
        n_traces=1,
        n_blocks=36,
        block_len=(90, 110),
        memento_len=(8, 14),
        n_layers=2,
        kv_heads=3,
        d_head=8,
        attention_traces=1,
        attention_queries=10**6,
        attention_heads=9,
        attention_compact=True,
        probes=False,
        ablations=False,
        figures=False,
        seed=seed,
    )


def _main() -> None:  # python -m memento_lens.app.fixtures OUT_DIR [--large]
    import sys

    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    spec = large_spec() if "--large" in sys.argv else FixtureSpec(n_traces=6, n_blocks=5, attention_traces=2)
    out = write_fixture_run(args[0] if args else "runs/fixture", spec)
    print(out)


if __name__ == "__main__":
    _main()
