"""Probes benchmark: the ``--quick`` passcode preset end to end, and the full toy sweep (50K samples, all layers,
three conditions + distances, MLP + linear, with control tasks) extrapolated from measured fractions.

Ratios against baselines measured in the same run: batched dense replay vs one sequence at a time, and probe
training with 1 vs 2 torch threads (the reason ``--threads`` defaults to 1).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from benchmarks.common import BenchRow


def _model():
    """The shipped toy if its weights exist, else a random model of the toy's architecture (same cost)."""
    try:
        from memento_lens.runtime.toy.shipped import load_toy

        model, _ = load_toy("toy")
        return model, "shipped toy"
    except Exception:  # weights not built yet
        from memento_lens.runtime.toy.model import build_model

        return build_model(seed=0).eval(), "random toy-architecture model (shipped weights absent)"


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(quick: bool = False) -> list[BenchRow]:
    from memento_lens.probes.features import (
        extract_memento_kv,
        toy_memento_positions,
        toy_passcode_batch,
        toy_visibility,
    )
    from memento_lens.probes.models import make_probe
    from memento_lens.probes.passcode import QUICK, PasscodeConfig, plan, run_passcode
    from memento_lens.probes.train import TrainConfig, fit_probe, label_unique_split
    from memento_lens.runtime.model import from_objects
    from memento_lens.runtime.toy.task import ToyLayout

    torch.set_num_threads(1)
    rows: list[BenchRow] = []
    model, which = _model()
    layout = ToyLayout()
    n_layers = int(model.config.num_hidden_layers)

    # 1. the --quick preset end to end (what the demo runs)
    cfg = PasscodeConfig(model="toy", task="toy", **QUICK)
    t_quick = _time(lambda: run_passcode(cfg, from_objects(model, None, name="toy")))
    rows.append(
        BenchRow(
            "probe passcode --quick (toy)",
            "seconds",
            t_quick,
            "< 60 s",
            t_quick < 60,
            f"{cfg.samples} samples, all {n_layers} layers, MLP+linear with control; {which}",
        )
    )

    # 2. full sweep, extrapolated: feature throughput on a fraction, probe fits on a fraction of 50K
    full = PasscodeConfig(model="toy", task="toy")
    pairs, _, _ = plan(full, n_layers, layout.n_blocks)
    wanted = sorted({(c.memento_block, ly) for c, ly in pairs})
    n_feat = 1000 if quick else 5000
    batch, labels = toy_passcode_batch(n_feat, 0, layout)
    vis = toy_visibility(layout)
    pos = toy_memento_positions(layout, range(layout.n_blocks))
    feats = None

    def extract():
        nonlocal feats
        feats = extract_memento_kv(
            model,
            batch.token_ids,
            vis,
            {mb: pos[mb] for mb, _ in wanted},
            list(range(n_layers)),
            labels,
            wanted=wanted,
            batch_size=256,
        )

    t_feat = _time(extract)
    feat_full = t_feat * full.samples / n_feat

    # probe fits: one MLP and one linear fit (+ control) on n_fit samples; epochs as observed, time scaled by size
    n_fit = 5000 if quick else 20000
    b2, l2 = toy_passcode_batch(n_fit, 1, layout)
    mb, ly = 2, n_layers - 1
    f2 = extract_memento_kv(model, b2.token_ids, vis, {mb: pos[mb]}, [ly], l2, wanted=[(mb, ly)], batch_size=256)
    x = f2.matrix(mb, ly)
    tr, va = label_unique_split(l2, 0.2, 0)
    tc = TrainConfig()
    per_fit = {}
    for name in full.probes:
        t0 = time.perf_counter()
        res = fit_probe(make_probe(name), x, l2, tr, va, tc, seed=0)
        per_fit[name] = (time.perf_counter() - t0, res.epochs)
    scale = full.samples / n_fit
    control_factor = 1.6  # control fits stop early (no signal): measured about 0.4-0.7 of a main fit
    probe_full = sum(t for t, _ in per_fit.values()) * scale * len(pairs) * control_factor
    total = feat_full + probe_full
    rows.append(
        BenchRow(
            "full toy sweep (extrapolated)",
            "seconds",
            total,
            "<= 600 s",
            total <= 600,
            f"{len(pairs)} (condition, layer) pairs x {list(full.probes)} + control; features "
            f"{t_feat:.1f}s/{n_feat} seq -> {feat_full:.0f}s for 50K; probe fits measured on {n_fit} "
            f"samples ({', '.join(f'{k} {t:.1f}s/{e} ep' for k, (t, e) in per_fit.items())}) scaled x{scale:.1f}; "
            f"{which}; EXTRAPOLATED, not a full run",
        )
    )

    # 3. ratios against baselines in the same run
    n_seq = 64 if quick else 256
    ids = batch.token_ids[:n_seq]
    one = _time(
        lambda: [
            extract_memento_kv(
                model, ids[i : i + 1], vis, {2: pos[2]}, [ly], labels[i : i + 1], wanted=[(2, ly)], batch_size=1
            )
            for i in range(n_seq)
        ]
    )
    many = _time(
        lambda: extract_memento_kv(
            model, ids, vis, {2: pos[2]}, [ly], labels[:n_seq], wanted=[(2, ly)], batch_size=n_seq
        )
    )
    rows.append(
        BenchRow(
            "feature replay: batched dense vs one sequence at a time",
            "speed ratio",
            one / many,
            ">= 2x",
            one / many >= 2,
            f"{n_seq} sequences: {one:.2f}s vs {many:.2f}s",
        )
    )
    xs = torch.randn(8000, x.shape[1])
    ys = np.random.default_rng(0).integers(0, 10, size=(8000, 5))
    tr3, va3 = label_unique_split(ys, 0.2, 0)
    one_cfg = TrainConfig(max_epochs=2, patience=99, threads=1)
    two_cfg = TrainConfig(max_epochs=2, patience=99, threads=2)
    t1 = _time(lambda: fit_probe(make_probe("mlp"), xs, ys, tr3, va3, one_cfg))
    t2 = _time(lambda: fit_probe(make_probe("mlp"), xs, ys, tr3, va3, two_cfg))
    torch.set_num_threads(1)
    rows.append(
        BenchRow(
            "MLP probe epochs: 1 thread vs 2 threads",
            "speed ratio",
            t2 / t1,
            "",
            None,
            f"2 epochs on 8000x{x.shape[1]}: 1 thread {t1:.2f}s, 2 threads {t2:.2f}s (>1 means 1 "
            "thread is faster on this box)",
        )
    )
    return rows


if __name__ == "__main__":
    import sys

    for r in run(quick="--quick" in sys.argv):
        print(r)
