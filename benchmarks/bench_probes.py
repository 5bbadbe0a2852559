"""Probes benchmark: the ``--quick`` passcode preset end to end (every world, 2 data replicates, text probe,
control), and the full toy sweep (50K samples per replicate; all layers plus all layers together; direct /
masked +1..+7 / control; every world; MLP and linear; 3 seeds; 2 replicates) extrapolated from measured pieces.

Ratios against baselines measured in the same run: probes fitted as one batched model vs one at a time, the
closed-form linear probe vs Adam run to its plateau, and batched dense replay vs one sequence at a time.
"""

from __future__ import annotations

import os
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
    from memento_lens.probes.features import extract_memento_kv
    from memento_lens.probes.models import make_probe
    from memento_lens.probes.passcode import (
        ALL_LAYERS,
        QUICK,
        PasscodeConfig,
        extract_features,
        masked_distances,
        plan,
        run_passcode,
    )
    from memento_lens.probes.tasks import ToyPasscodeTask
    from memento_lens.probes.train import FitTask, TrainConfig, fit_batched, fit_ridge
    from memento_lens.runtime.model import from_objects

    cli_threads = torch.get_num_threads()  # what `probe passcode` fits with (its --threads 0: torch's default)
    torch.set_num_threads(1)
    rows: list[BenchRow] = []
    model, which = _model()
    task = ToyPasscodeTask()
    n_layers = int(model.config.num_hidden_layers)

    # 1. the --quick preset end to end (what `probe passcode --quick` runs)
    cfg = PasscodeConfig(model="toy", task="toy", **QUICK)
    res = None

    def quick_run():
        nonlocal res
        res = run_passcode(cfg, from_objects(model, None, name="toy"), task=task)

    cpu0 = time.process_time()
    t_quick = _time(quick_run)
    cpu_quick = time.process_time() - cpu0
    mlp_curves = res.curves[res.curves.probe == "mlp"]
    epochs_seen = (
        float(mlp_curves.groupby(["condition", "distance", "layer", "world", "seed"]).epoch.max().mean())
        if len(mlp_curves)
        else float("nan")
    )
    rows.append(
        BenchRow(
            "probe passcode --quick (toy)",
            "seconds",
            t_quick,
            "< 60 s",
            t_quick < 60,
            f"{cfg.data_seeds} data replicates x {cfg.samples} samples, layers 0,-1, direct/masked +1/control, "
            f"worlds {', '.join(cfg.feature_worlds)} + text probe + control task, {'+'.join(cfg.probes)} "
            f"(closed form), {cfg.train.seeds} probe seeds: {res.info['n_fits']} probes "
            f"({res.info['n_distinct_fits']} distinct fits); features "
            f"{res.info['feature_seconds']:.1f}s, probes {res.info['probe_seconds']:.1f}s; CPU time {cpu_quick:.0f}s "
            f"(wall time depends on the shared box's load); {which}",
        )
    )

    # 2. full sweep, extrapolated from measured pieces
    full = PasscodeConfig(model="toy", task="toy")
    conds, _ = task.conditions(masked_distances(full, task.n_blocks), full.conditions)
    pairs, layers = plan(full, n_layers, conds)
    seeds = full.train.seeds
    per_pair = len(full.feature_worlds) * seeds + 1  # every world per seed, one control fit (per data replicate)
    n_single = sum(1 for _, ly in pairs if ly != ALL_LAYERS) * per_pair * len(full.probes)
    n_all = sum(1 for _, ly in pairs if ly == ALL_LAYERS) * per_pair * len(full.probes)
    n_text = len(conds) * seeds * len(full.probes)
    # features: both worlds, every memento, every layer, on n_feat samples
    n_feat = 500 if quick else 2000
    samples = task.samples(n_feat, 0)
    blocks = sorted({c.memento_block for c in conds})
    t_feat = _time(lambda: extract_features(task, model, samples, blocks, layers))
    # measured on normal + restart; every world is one more replay of the same size, per data replicate
    feat_full = t_feat * full.samples / n_feat * len(full.feature_worlds) / 2 * full.data_seeds
    # probe epochs: B stacked models on n_fit samples, seconds per model-epoch, scaled to the 50K split
    n_fit = 2000 if quick else 5000
    width = 2 * int(model.config.num_key_value_heads) * int(model.config.head_dim) * 5  # K+V x 5 span positions
    lab = np.random.default_rng(0).integers(0, 10, size=(n_fit, 5))
    idx = np.arange(n_fit)
    fit_idx, stop_idx, val_idx = (
        idx[: int(0.8 * n_fit)],
        idx[int(0.8 * n_fit) : int(0.9 * n_fit)],
        idx[int(0.9 * n_fit) :],
    )
    two = TrainConfig(max_epochs=2, patience=99)
    # the CLI fits with torch's default thread count (--threads 0): time the epochs as it runs them
    two_cli = TrainConfig(max_epochs=2, patience=99, threads=cli_threads)
    per_epoch = {}
    B = 8
    for name in full.probes:
        for w in (width, width * n_layers):
            x = [torch.randn(n_fit, w) for _ in range(2)]
            tasks = [FitTask(i % 2, 0, i) for i in range(B)]
            t = _time(lambda: fit_batched(make_probe(name), x, [lab], tasks, fit_idx, stop_idx, val_idx, two_cli))
            per_epoch[(name, w)] = t / (2 * B) / len(fit_idx)  # seconds per model-epoch per training sample
    torch.set_num_threads(1)
    x1 = [torch.randn(n_fit, width) for _ in range(2)]
    tasks1 = [FitTask(i % 2, 0, i) for i in range(B)]
    t1 = _time(lambda: fit_batched(make_probe("mlp"), x1, [lab], tasks1, fit_idx, stop_idx, val_idx, two))
    mlp_1thread = t1 / (2 * B) / len(fit_idx)
    n_train_full = full.samples * (1 - full.train.val_frac) * (1 - full.train.stop_frac)
    epoch_full = (
        sum(
            per_epoch[(name, width)] * (n_single / len(full.probes) + n_text / len(full.probes))
            + per_epoch[(name, width * n_layers)] * n_all / len(full.probes)
            for name in full.probes
            if not (name == "linear" and full.train.linear_solver == "ridge")  # closed form: no epochs
        )
        * n_train_full
    )  # one epoch of every probe of the sweep that trains by epochs
    # the plateau rule's patience alone costs patience + 1 epochs (the quick preset fits no MLP)
    epochs = full.train.patience + 1 if np.isnan(epochs_seen) else max(epochs_seen, full.train.patience + 1)
    epoch_full *= full.data_seeds  # every probe fitted once per data replicate
    total = feat_full + epoch_full * epochs
    # FLOP floor of one epoch of the sweep's MLP probes at this box's measured matmul rate (2 cores)
    widths = make_probe("mlp").widths(width)
    macs = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    macs_all = macs + (width * n_layers - width) * widths[1]
    n_mlp, n_mlp_all = (n_single + n_text) / len(full.probes), n_all / len(full.probes)
    flops_epoch = 6 * n_train_full * (n_mlp * macs + n_mlp_all * macs_all)  # fwd + bwd = 3 x 2 FLOP per MAC
    flops_epoch *= full.data_seeds  # every replicate fits its own probes (as epoch_full counts them)
    a, b_ = torch.randn(256, width), torch.randn(width, widths[1])
    t_mm = min(_time(lambda: [a @ b_ for _ in range(50)]) for _ in range(3))
    gflops = 50 * 2 * 256 * width * widths[1] / t_mm / 1e9 * (os.cpu_count() or 1)  # every core at that rate
    rows.append(
        BenchRow(
            "full toy sweep (extrapolated)",
            "seconds",
            total,
            "<= 600 s",
            total <= 600,
            f"{len(pairs)} (condition, layer set) pairs x {list(full.probes)} x ({len(full.feature_worlds)} worlds x "
            f"{seeds} seeds + control) + text = {n_single + n_all + n_text} probes per data replicate, x "
            f"{full.data_seeds} replicates. Features, normal + restart: {t_feat:.1f}s/{n_feat} seq -> {feat_full:.0f}s "
            f"for {len(full.feature_worlds)} worlds x {full.data_seeds} x 50K. One epoch of every probe on the 36K-sample fit split: {epoch_full:.0f}s "
            f"(batched, {B} models, {cli_threads} threads as the CLI fits; MLP {per_epoch[('mlp', width)] * 1e6:.0f} "
            f"us/sample-epoch at width {width}, {mlp_1thread * 1e6:.0f} at 1 thread); "
            f"x {epochs:.0f} epochs (MLP mean in the quick run, at least patience + 1) -> "
            f"{epoch_full * epochs:.0f}s. "
            f"{which}; EXTRAPOLATED, not a full run",
        )
    )
    floor_epoch = flops_epoch / (gflops * 1e9)
    rows.append(
        BenchRow(
            "full toy sweep: probe epochs / their FLOP floor",
            "time ratio",
            epoch_full / floor_epoch,
            "<= 1.5x",
            epoch_full / floor_epoch <= 1.5,
            f"one epoch of every MLP probe of the sweep, measured {epoch_full:.0f}s vs its floor {floor_epoch:.0f}s "
            f"(all {os.cpu_count()} cores at the 1-thread matmul rate); every epoch costs the same, so this is also "
            "the ratio of the sweep's probe training to its floor",
        )
    )
    rows.append(
        BenchRow(
            "full toy sweep: FLOP floor of one MLP epoch",
            "seconds",
            floor_epoch,
            "",
            None,
            f"{flops_epoch / 1e12:.1f} TFLOP per epoch of the sweep's MLP probes (paper MLP {widths}) at "
            f"{gflops:.0f} GFLOP/s (1-thread matmul rate x 2 cores, measured here): even a perfectly batched "
            "sweep needs this per epoch, so the 10-minute target is out of reach on 2 cores at 50K samples",
        )
    )

    # 3. ratios against baselines in the same run
    # the linear probe: closed form (ridge) vs the batched Adam trainer run to its plateau, on a planted signal
    rng = np.random.default_rng(1)
    planted = torch.tensor(
        np.eye(10)[lab].reshape(n_fit, 50) @ rng.normal(size=(50, width)) * 0.3 + rng.normal(size=(n_fit, width)),
        dtype=torch.float32,
    )
    adam = TrainConfig(linear_solver="adam")
    got = {}
    t_adam = _time(
        lambda: got.update(
            adam=fit_batched(
                make_probe("linear"), [planted], [lab], [FitTask(0, 0, 0)], fit_idx, stop_idx, val_idx, adam
            )
        )
    )
    t_ridge = _time(
        lambda: got.update(ridge=fit_ridge([planted], [lab], [FitTask(0, 0, 0)], fit_idx, stop_idx, val_idx, adam))
    )
    rows.append(
        BenchRow(
            "linear probe: closed form (ridge) vs Adam to its plateau",
            "speed ratio",
            t_adam / t_ridge,
            ">= 3x",
            t_adam / t_ridge >= 3,
            f"{len(fit_idx)}x{width} planted features: ridge {t_ridge:.2f}s ({got['ridge'].correct.mean():.1%} val), "
            f"Adam {t_adam:.2f}s ({got['adam'].correct.mean():.1%} val, {int(got['adam'].epochs[0])} epochs, "
            f"stopped by {got['adam'].stopped_by[0]})",
        )
    )
    x = [torch.randn(n_fit, width) for _ in range(2)]
    tasks = [FitTask(i % 2, 0, i) for i in range(B)]
    t_batched = _time(lambda: fit_batched(make_probe("mlp"), x, [lab], tasks, fit_idx, stop_idx, val_idx, two))
    t_single = _time(
        lambda: [fit_batched(make_probe("mlp"), x, [lab], [t], fit_idx, stop_idx, val_idx, two) for t in tasks]
    )
    rows.append(
        BenchRow(
            "MLP probes: one batched model vs one fit at a time",
            "speed ratio",
            t_single / t_batched,
            ">= 1.2x",
            t_single / t_batched >= 1.2,
            f"{B} probes, 2 epochs on {len(fit_idx)}x{width}: batched {t_batched:.2f}s, one at a time {t_single:.2f}s",
        )
    )
    n_seq = 64 if quick else 256
    ids = samples.token_ids[:n_seq]
    vis = task.visibility("normal")
    pos = {2: task.memento_positions(2)}
    ly = n_layers - 1
    one = _time(
        lambda: [
            extract_memento_kv(model, ids[i : i + 1], vis, pos, [ly], samples.labels[i : i + 1], batch_size=1)
            for i in range(n_seq)
        ]
    )
    many = _time(lambda: extract_memento_kv(model, ids, vis, pos, [ly], samples.labels[:n_seq], batch_size=n_seq))
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
    return rows


if __name__ == "__main__":
    import sys

    for r in run(quick="--quick" in sys.argv):
        print(r)
