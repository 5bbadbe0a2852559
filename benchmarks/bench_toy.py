"""Toy-model benchmarks (issue 3).

Target: generating 1,000 toy sequences with capture (memento K/V of every layer written to a run directory)
on 2 cores in under 1 minute, through the runtime's own ``generate_to_run`` (physical eviction, keep 0,
temperature 1 so block digits are random). Baseline in the same run: teacher-forced dense replay of the same
token ids with K/V extraction (``dense_forward``, one pass per batch), i.e. the cheapest way to get the same K/V.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import BenchRow

TARGET_S = 60.0


def _model():
    from memento_lens.runtime.toy.shipped import ToyModelError, load_toy

    try:
        model, _ = load_toy("toy")
        return model, "shipped toy"
    except ToyModelError:
        from memento_lens.runtime.toy.model import build_model

        return build_model().eval(), "random toy-architecture model (shipped weights missing)"


def run(quick: bool = False) -> list[BenchRow]:
    from memento_lens.runtime.capture import default_captures
    from memento_lens.runtime.dense import dense_forward
    from memento_lens.runtime.generate import SamplingConfig
    from memento_lens.runtime.rundir.store import RunStore
    from memento_lens.runtime.runs import generate_to_run
    from memento_lens.runtime.toy.evaluate import toy_visibility
    from memento_lens.runtime.toy.task import BOS, EOS, TOY_MASKING, TOY_TOKENS, ToyLayout

    torch.set_num_threads(2)
    n = 100 if quick else 1000
    layout = ToyLayout()
    model, what = _model()
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=layout.length - 1, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "gen"
        t0 = time.perf_counter()
        generate_to_run(
            model,
            [[BOS]] * n,
            TOY_MASKING,
            TOY_TOKENS,
            out,
            sampling=sampling,
            eos_token_id=EOS,
            captures=default_captures(),
            batch_size=250,
        )
        gen_s = time.perf_counter() - t0
        store = RunStore.open(out, require_complete=True)
        traces = store.read_table("traces.parquet")
        tokens = store.read_table("tokens.parquet")
    full = traces[traces["n_tokens"] == layout.length]["trace"]
    ids = torch.tensor(
        tokens[tokens["trace"].isin(set(full))]
        .sort_values(["trace", "pos"])["token_id"]
        .to_numpy()
        .reshape(-1, layout.length)
    )
    vis = toy_visibility("memento", layout)
    t0 = time.perf_counter()
    for k in range(0, len(ids), 250):
        dense_forward(model, ids[k : k + 250], vis[None])
    dense_s = (time.perf_counter() - t0) * n / max(1, len(ids))
    per_1000 = gen_s * 1000 / n
    note = (
        f"{what}; {n} sequences of {layout.length} tokens ({len(full)} reached <eos> at full length), "
        f"generate_to_run with memento K/V capture, batch 250; baseline dense teacher-forced replay + K/V "
        f"extraction {dense_s:.2f} s for {n}"
    )
    return [
        BenchRow(
            "toy: generate 1,000 sequences with capture",
            "seconds per 1,000",
            per_1000,
            target=f"< {TARGET_S:.0f} s",
            passed=per_1000 < TARGET_S,
            note=note,
        ),
        BenchRow(
            "toy: generation+capture vs dense replay+KV",
            "time ratio",
            gen_s / max(dense_s, 1e-9),
            note="per-token decoding with physical eviction and capture, over one dense pass per batch",
        ),
    ]


if __name__ == "__main__":
    for row in run(quick=True):
        print(row)
