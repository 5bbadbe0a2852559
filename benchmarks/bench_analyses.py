"""Analyses benchmarks: ingest + KV-account OpenMementos-sized traces; render the figure set.

Targets (issue 5): 10,000 OpenMementos-sized traces (~9 blocks of ~1,150 tokens, ~190-token mementos) ingested
from Parquet and KV-accounted (vanilla + memento, schedule only) in under 60 s on 2 cores; the figure set for a
demo-sized run in under 60 s. The baseline is the runtime's per-token ``compute_schedule`` on the same traces.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import BenchRow

CHARS_PER_TOKEN = 4  # approx tokenization


def synth_openmementos(path: Path, n: int, seed: int = 0, batch: int = 500) -> None:
    """OpenMementos-shaped Parquet: median ~9 blocks of ~1,150 tokens, mementos ~190 tokens (approx tokens)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    words = rng.choice(
        [
            "the",
            "so",
            "we",
            "x",
            "=",
            "2",
            "then",
            "sum",
            "of",
            "prime",
            "check",
            "case",
            "\n",
            "therefore",
            "let",
            "f(n)",
            "+",
            "1",
            "wait",
            "is",
            "not",
        ],
        size=40_000,
    )
    text = " ".join(words.tolist())
    domains = np.array(["math", "code", "science"])
    writer = None
    try:
        for lo in range(0, n, batch):
            rows = {"problem": [], "response": [], "domain": [], "source": [], "difficulty": []}
            for _ in range(min(batch, n - lo)):
                nb = int(np.clip(rng.poisson(9), 2, 30))
                parts = ["<think>"]
                for _ in range(nb):
                    bl = int(np.clip(rng.normal(1150, 350), 200, 6000)) * CHARS_PER_TOKEN
                    ml = int(np.clip(rng.normal(190, 60), 20, 800)) * CHARS_PER_TOKEN
                    a, b = rng.integers(0, len(text) - bl), rng.integers(0, len(text) - ml)
                    parts += [
                        "<|block_start|>",
                        text[a : a + bl],
                        "<|block_end|>\n<|summary_start|>",
                        text[b : b + ml],
                        "<|summary_end|>\n",
                    ]
                parts += ["</think>", text[:800]]
                rows["problem"].append(text[:400])
                rows["response"].append("".join(parts))
                rows["domain"].append(str(rng.choice(domains, p=[0.54, 0.19, 0.27])))
                rows["source"].append("synthetic")
                rows["difficulty"].append(int(rng.integers(1, 10)))
            table = pa.table(rows)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


def _ingest_and_account(path: Path, reference: bool = False, limit: int | None = None):
    from memento_lens.analyses.ingest import IngestReport, iter_ingest
    from memento_lens.analyses.kv import account_trace, default_configs, resolve_spec, summary_row
    from memento_lens.analyses.tokenization import ApproxTokenizer
    from memento_lens.runtime.occupancy import Occupancy, schedule_occupancy
    from memento_lens.runtime.schedule import compute_schedule

    tok = ApproxTokenizer()
    configs = default_configs()
    spec = resolve_spec("qwen3-8b")
    report = IngestReport()
    n_tok = 0
    rows = []
    for i, t in enumerate(iter_ingest(path, tok, report=report, arrays=True)):
        if limit is not None and i >= limit:
            break
        n_tok += len(t.token_ids)
        if reference:
            curves = [
                Occupancy(
                    schedule_occupancy(compute_schedule(t.token_ids, c, tok.ids, t.prompt_len)),
                    spec.bytes_per_token,
                    t.prompt_len,
                    t.trace_id,
                    m,
                )
                for m, c in configs.items()
            ]
        else:
            curves = account_trace(t, tok.ids, configs, spec).values()
        rows.extend(summary_row(c) for c in curves)
    return report, n_tok, rows


def bench_ingest_kv(quick: bool) -> list[BenchRow]:
    import memento_lens.analyses.ingest  # noqa: F401  (imports, not timed)
    import memento_lens.runtime.occupancy  # noqa: F401

    n = 1_000 if quick else 10_000
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "openmementos.parquet"
        t0 = time.perf_counter()
        synth_openmementos(path, n)
        synth_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        report, n_tok, rows = _ingest_and_account(path)
        fast_s = time.perf_counter() - t0
        sub = 100 if quick else 300
        t0 = time.perf_counter()
        _, sub_tok, _ = _ingest_and_account(path, reference=True, limit=sub)
        ref_sub_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        _ingest_and_account(path, limit=sub)
        fast_sub_s = time.perf_counter() - t0
    target = 60.0 * n / 10_000
    note = (
        f"{report.n_ingested} traces, {n_tok / 1e6:.1f}M approx tokens (mean {n_tok / max(report.n_ingested, 1):.0f}"
        f"/trace), vanilla+memento; synthesis {synth_s:.1f}s and imports not counted; 1 process, "
        "Parquet read + approx tokenization + validation + 2 schedules"
    )
    return [
        BenchRow(
            f"ingest + KV-account {n} OpenMementos-sized traces",
            "seconds",
            fast_s,
            f"< {target:.0f} s",
            fast_s < target,
            note,
        ),
        BenchRow(
            f"fast schedule vs per-token compute_schedule ({sub} traces, ingest included)",
            "speed ratio",
            ref_sub_s / fast_sub_s,
            ">= 1.0x",
            ref_sub_s >= fast_sub_s,
            f"reference {ref_sub_s:.2f}s vs fast {fast_sub_s:.2f}s on {sub_tok / 1e6:.1f}M tokens",
        ),
    ]


def synth_memento_jsonl(path: Path, megabytes: float, seed: int = 0) -> int:
    """Memento JSON lines (~14 KB each, 3-8 blocks) up to ``megabytes``; returns the number of lines."""
    rng = np.random.default_rng(seed)
    size, i = 0, 0
    with open(path, "w") as f:
        while size < megabytes * 1e6:
            segs = []
            for b in range(1, int(rng.integers(3, 9)) + 1):
                segs.append({"type": "block", "block_idx": b, "text": f"step {b}, so x = {i} + 1 " * 60})
                segs.append({"type": "summary", "block_idx": b, "text": f"x = {i} after step {b} " * 8})
            segs.append({"type": "answer", "text": f"the answer is {i}"})
            line = json.dumps({"id": f"t{i}", "problem": f"find x {i}", "domain": "math", "segments": segs}) + "\n"
            f.write(line)
            size, i = size + len(line), i + 1
    return i


# One child process per measurement so each reports its own peak RSS (ru_maxrss, KiB on Linux).
_WRITE_RUN_CHILD = """
import json, resource, sys, time
import numpy as np, pandas as pd
from memento_lens.analyses.ingest import (IngestReport, _trace_columns, default_configs, iter_ingest_files,
    traces_fingerprint, write_run)
from memento_lens.analyses.kv import account_trace, resolve_spec
from memento_lens.analyses.tokenization import load_tokenizer
from memento_lens.runtime.config import BlockMaskingConfig
from memento_lens.runtime.rundir import schema
from memento_lens.runtime.rundir.store import RunStore
from memento_lens.runtime.rundir.writer import frame_columns
src, out, mode = sys.argv[1:4]
tok, spec, config = load_tokenizer("approx"), resolve_spec("qwen3-8b"), default_configs()["memento"]
t0 = time.perf_counter()
if mode == "streamed":
    fp = traces_fingerprint(iter_ingest_files([src], tok, IngestReport()))
    write_run(out, iter_ingest_files([src], tok, IngestReport(), keep_text=True), tok, spec=spec, fingerprint=fp)
else:  # the former write_run: every trace in memory, a frame per trace and table, whole tables at the end
    traces = list(iter_ingest_files([src], tok, IngestReport(), keep_text=True))
    store = RunStore.create(out, "ingest", {})
    parts = [frame_columns([_trace_columns(t, tok, config)], ("traces", "tokens", "events")) for t in traces]
    for name in ("traces", "tokens", "events"):
        store.write_table(schema.TABLES[name], pd.concat([p[name] for p in parts], ignore_index=True))
    configs = {"vanilla": BlockMaskingConfig.vanilla(False), "memento": config}
    occ = [pd.DataFrame({"trace": np.full(len(o.tokens), o.trace, dtype=object),
                         "mode": np.full(len(o.tokens), o.mode, dtype=object),
                         "step": np.arange(len(o.tokens)), "tokens": o.tokens, "bytes": o.bytes})
           for t in traces for o in account_trace(t, tok.ids, configs, spec).values()]
    store.write_table(schema.OCCUPANCY, pd.concat(occ, ignore_index=True))
    store.mark_complete()
print(json.dumps({"s": time.perf_counter() - t0, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def bench_ingest_write(quick: bool) -> list[BenchRow]:
    """``write_run`` streamed (row groups as traces arrive) vs the former whole-table build, on one input."""
    import subprocess
    import sys

    mb = 2 if quick else 8
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "traces.jsonl"
        n = synth_memento_jsonl(src, mb)
        res = {}
        for mode in ("streamed", "former"):
            out = subprocess.run(
                [sys.executable, "-c", _WRITE_RUN_CHILD, str(src), str(Path(d) / mode), mode],
                check=True,
                capture_output=True,
                text=True,
            )
            res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    new, old = res["streamed"], res["former"]
    note = (
        f"{mb} MB Memento JSONL, {n} traces, approx tokens; read + tokenize + tables + occupancy + Parquet; "
        f"former {old['s']:.1f}s / {old['rss_mb']:.0f} MB peak RSS vs streamed {new['s']:.1f}s / "
        f"{new['rss_mb']:.0f} MB (imports excluded from time, included in RSS)"
    )
    return [
        BenchRow(
            "ingest write_run streamed vs former (time)",
            "speed ratio",
            old["s"] / new["s"],
            ">= 1.0x",
            old["s"] >= new["s"],
            note,
        ),
        BenchRow(
            "ingest write_run streamed vs former (peak RSS)",
            "memory ratio",
            old["rss_mb"] / new["rss_mb"],
            ">= 1.0x",
            old["rss_mb"] >= new["rss_mb"],
            "same run as the row above",
        ),
    ]


def bench_figures(quick: bool) -> list[BenchRow]:

    from memento_lens.analyses.figures import REGISTRY, chromium_path, render_figures
    from memento_lens.analyses.ingest import ingest_files, write_run
    from memento_lens.runtime.rundir.store import RunStore

    data = Path(__file__).resolve().parents[2] / "shared" / "data"
    examples = sorted(data.glob("memento_example_*.json")) if data.exists() else []
    with tempfile.TemporaryDirectory() as d:
        run = Path(d) / "demo"
        if examples:
            res = ingest_files(examples, "approx", keep_text=True)
            store = write_run(run, res.traces, "approx")
        else:
            store = RunStore.create(run, "ingest", {})
        store.write_table("probe_results.parquet", _demo_probes())
        store.write_table("ablations.parquet", _demo_ablations())
        store.mark_complete()
        t0 = time.perf_counter()
        rep_nopng = render_figures(["all"], runs=[run], out_dir=Path(d) / "nopng", png=False)
        nopng_s = time.perf_counter() - t0
        rows = [
            BenchRow(
                "figure set, demo-sized run, no PNG",
                "seconds",
                nopng_s,
                "< 60 s",
                nopng_s < 60,
                f"{len(rep_nopng.rendered)}/{len(REGISTRY)} figures: CSV+MD+HTML",
            )
        ]
        if chromium_path() is None:
            rows.append(
                BenchRow(
                    "figure set with PNG", "seconds", float("nan"), "< 60 s", None, "skipped: chromium not installed"
                )
            )
            return rows
        t0 = time.perf_counter()
        rep = render_figures(["all"], runs=[run], out_dir=run / "figures")
        png_s = time.perf_counter() - t0
        rows.append(
            BenchRow(
                "figure set, demo-sized run, with PNG",
                "seconds",
                png_s,
                "< 60 s",
                png_s < 60,
                f"{len(rep.rendered)}/{len(REGISTRY)} figures, one kaleido/chromium server; "
                f"png: {rep.png_skipped or 'ok'}",
            )
        )
    return rows


def _demo_probes():
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = []
    for model, cks in (("toy", ("step-1000", "step-3000", "final")), ("qwen3-8b", ("final",))):
        for ck in cks:
            for cond, dists in (("direct", (0,)), ("masked", tuple(range(1, 8))), ("causal_control", (-1,))):
                for dist in dists:
                    for layer in range(4 if model == "toy" else 36):
                        for seed in range(3):
                            acc = float(rng.uniform(0.1, 0.7))
                            rows.append(
                                {
                                    "model": model,
                                    "checkpoint": ck,
                                    "condition": cond,
                                    "distance": dist,
                                    "layer": layer,
                                    "head": -1,
                                    "probe": "mlp",
                                    "seed": seed,
                                    "n_train": 1000,
                                    "n_val": 200,
                                    "accuracy": acc,
                                    "ci_low": acc - 0.03,
                                    "ci_high": acc + 0.03,
                                    "control_accuracy": 0.1,
                                    "selectivity": acc - 0.1,
                                    "task_accuracy": 0.9,
                                }
                            )
    return pd.DataFrame(rows)


def _demo_ablations():
    import pandas as pd

    rows = [
        {
            "experiment": "restart",
            "model": "qwen3-8b",
            "checkpoint": "final",
            "variant": v,
            "layer": -1,
            "head": -1,
            "direction": "none",
            "metric": "accuracy",
            "value": val,
            "ci_low": val - 0.05,
            "ci_high": val + 0.05,
            "n": 30,
        }
        for v, val in (("normal", 0.661), ("restart", 0.508))
    ]
    rows += [
        {
            "experiment": "patch",
            "model": "qwen3-8b",
            "checkpoint": "final",
            "variant": "restart",
            "layer": ly,
            "head": -1,
            "direction": "normal->restart",
            "metric": "nll",
            "value": 1 + 0.01 * ly,
            "ci_low": 0.9,
            "ci_high": 1.2,
            "n": 30,
        }
        for ly in range(36)
    ]
    return pd.DataFrame(rows)


def run(quick: bool = False) -> list[BenchRow]:
    return bench_ingest_kv(quick) + bench_ingest_write(quick) + bench_figures(quick)


if __name__ == "__main__":
    import sys

    for row in run(quick="--quick" in sys.argv):
        print(row)
