"""Implicit-channel measurement for toy variants (stop-gap until the `probe passcode` decomposition lands).

For one toy model: passcode = the target block's passcode (:func:`passcode_labels`), features = K and V at
a memento's span (``<|summary_start|>`` .. ``<|summary_end|>``) at one layer, computed in two worlds:

* normal: keep 0 (the memento's block was visible when its K/V were computed);
* restart: every memento's K/V recomputed without its block (the explicit channel: text only).

The same MLP probe (the paper's 512-256-128, five 10-way heads) is fitted on each, on one label-unique split
(no passcode on both sides), with early stopping on a label-unique slice of the training part (patience 10,
cap 200 epochs, recorded), for several seeds. ``implicit excess = normal - restart`` with a paired
bootstrap CI over validation samples (per-sample accuracy averaged over seeds first).

    python scripts/toy_channel.py --model toy@step-000500 --samples 6000 --seeds 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Fit:
    """One probe fit: per-validation-sample accuracy (mean over digits) and how training ended."""

    per_sample: np.ndarray
    epochs: int
    capped: bool


def label_unique_split(labels: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean ``[n]`` validation mask; every copy of a passcode falls on the same side."""
    codes = labels @ (10 ** np.arange(labels.shape[1] - 1, -1, -1))
    uniq = np.unique(codes)
    rng = np.random.default_rng(seed)
    val_codes = rng.choice(uniq, size=int(round(val_fraction * len(uniq))), replace=False)
    return np.isin(codes, val_codes)


def fit_mlp(
    x: torch.Tensor,
    y: torch.Tensor,
    train: np.ndarray,
    val: np.ndarray,
    seed: int,
    *,
    lr: float = 1e-3,
    batch: int = 256,
    patience: int = 10,
    max_epochs: int = 200,
) -> Fit:
    """The paper's MLP probe trained to its plateau (early stopping on a label-unique slice of ``train``)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    tr_idx = np.flatnonzero(train)
    inner_val = label_unique_split(y[tr_idx].numpy(), 0.1, seed + 1000)
    fit_idx, stop_idx = tr_idx[~inner_val], tr_idx[inner_val]
    mu, sd = x[fit_idx].mean(0), x[fit_idx].std(0) + 1e-5
    xs = (x - mu) / sd
    n_digits = y.shape[1]
    net = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], 512),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.1),
        torch.nn.Linear(512, 256),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.1),
        torch.nn.Linear(256, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 10 * n_digits),
    )
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
    xf, yf = xs[fit_idx], y[fit_idx]
    best, best_state, bad, epoch = -1.0, None, 0, 0
    for epoch in range(1, max_epochs + 1):
        net.train()
        perm = torch.randperm(len(fit_idx), generator=g)
        for s in range(0, len(perm), batch):
            b = perm[s : s + batch]
            logits = net(xf[b]).view(len(b), n_digits, 10)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 10), yf[b].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            acc = (net(xs[stop_idx]).view(-1, n_digits, 10).argmax(-1) == y[stop_idx]).float().mean().item()
        if acc > best + 1e-4:
            best, bad = acc, 0
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
        else:
            bad += 1
            if bad >= patience:
                break
    net.load_state_dict(best_state)
    net.eval()
    vi = np.flatnonzero(val)
    with torch.no_grad():
        right = (net(xs[vi]).view(-1, n_digits, 10).argmax(-1) == y[vi]).float().mean(1).numpy()
    return Fit(per_sample=right, epochs=epoch, capped=bad < patience)


def bootstrap_ci(v: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def measure(
    model,
    *,
    samples: int = 6000,
    seeds: int = 2,
    layers: tuple[int, ...] = (-1,),
    distances: tuple[int, ...] = (1,),
    direct: bool = True,
    target: int = 1,
    data_seed: int = 12345,
    batch_size: int = 256,
) -> list[dict]:
    """Rows ``{condition, distance, layer, world, acc, ci, n_val, ...}`` plus implicit-excess rows."""
    from memento_lens.probes.features import extract_memento_kv
    from memento_lens.runtime.toy.evaluate import toy_visibility
    from memento_lens.runtime.toy.task import layout_of, passcode_labels, sample, text_ceiling

    layout = layout_of(model)
    n_layers = model.config.num_hidden_layers
    lys = sorted({ly % n_layers for ly in layers})
    batch = sample(samples, np.random.default_rng(data_seed), layout)
    labels = passcode_labels(batch, target)
    val = label_unique_split(labels, 0.2, data_seed)
    y = torch.as_tensor(labels, dtype=torch.long)
    mementos = sorted({target + d for d in distances} | ({target} if direct else set()))
    pos = {mb: layout.memento_span(mb) for mb in mementos}
    t0 = time.perf_counter()
    feats = {
        world: extract_memento_kv(
            model,
            batch.token_ids,
            toy_visibility("restart" if world == "restart" else "memento", layout),
            pos,
            lys,
            labels,
            batch_size=batch_size,
        )
        for world in ("normal", "restart")
    }
    replay_s = time.perf_counter() - t0
    rows = []
    ceiling = text_ceiling(layout)
    for mb in mementos:
        dist = mb - target
        cond = "direct" if dist == 0 else "masked"
        for ly in lys:
            per = {}
            for world in ("normal", "restart") if cond == "masked" else ("normal",):
                x = feats[world].matrix(mb, ly)
                t1 = time.perf_counter()
                fits = [fit_mlp(x, y, ~val, val, s) for s in range(seeds)]
                per[world] = np.mean([f.per_sample for f in fits], axis=0)
                lo, hi = bootstrap_ci(per[world])
                rows.append(
                    {
                        "condition": cond,
                        "distance": dist,
                        "layer": ly,
                        "world": world,
                        "accuracy": float(per[world].mean()),
                        "ci_low": lo,
                        "ci_high": hi,
                        "seed_accuracies": [float(f.per_sample.mean()) for f in fits],
                        "epochs": [f.epochs for f in fits],
                        "capped": any(f.capped for f in fits),
                        "n_val": int(val.sum()),
                        "n_train": int((~val).sum()),
                        "fit_s": time.perf_counter() - t1,
                    }
                )
            if cond == "masked":
                d = per["normal"] - per["restart"]
                lo, hi = bootstrap_ci(d)
                rows.append(
                    {
                        "condition": cond,
                        "distance": dist,
                        "layer": ly,
                        "world": "implicit_excess",
                        "accuracy": float(d.mean()),
                        "ci_low": lo,
                        "ci_high": hi,
                        "n_val": int(val.sum()),
                    }
                )
    for r in rows:
        r.update(text_ceiling=ceiling, samples=samples, seeds=seeds, replay_s=replay_s)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="toy spec, training run dir/checkpoint, or random:<variant>")
    ap.add_argument("--samples", type=int, default=6000)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--layers", default="-1")
    ap.add_argument("--distances", default="1")
    ap.add_argument("--no-direct", action="store_true")
    ap.add_argument("--json", help="append rows (JSON lines) to this file")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load(args.model)
    rows = measure(
        model,
        samples=args.samples,
        seeds=args.seeds,
        layers=tuple(int(v) for v in args.layers.split(",")),
        distances=tuple(int(v) for v in args.distances.split(",")),
        direct=not args.no_direct,
    )
    for r in rows:
        r.update(model=args.model, tag=args.tag)
        print(
            f"{args.model:40s} {r['condition']:7s} +{r['distance']} L{r['layer']} {r['world']:16s} "
            f"{100 * r['accuracy']:6.2f} [{100 * r['ci_low']:.2f}, {100 * r['ci_high']:.2f}] "
            f"epochs={r.get('epochs', '')}"
        )
    if args.json:
        with open(args.json, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


def load(spec: str):
    """A toy model from a spec; ``random:<variant>`` = the variant's initialisation (its training seed)."""
    if spec.startswith("random:"):
        from memento_lens.runtime.toy.model import build_model
        from memento_lens.runtime.toy.variants import variant

        cfg = variant(spec.split(":", 1)[1])
        return build_model(cfg.model, seed=cfg.seed, layout=cfg.layout).eval()
    from memento_lens.runtime.toy.shipped import load_toy

    return load_toy(spec)[0]


if __name__ == "__main__":
    main()
