"""The schedule is bit-identical to the one recorded before eviction policies moved out of the tracker.

``tests/golden/schedule_events.json`` holds the events and block spans that the pre-policy
``BlockTracker`` (flags branched inside ``step``) produced for seeded random streams under every
combination of config flags, with and without ChatML markers. Regenerate only for an intended change of
semantics: ``python tests/test_schedule_golden.py --write``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from memento_lens.analyses.kv import fast_schedule
from memento_lens.runtime.config import BlockMaskingConfig, MementoTokenIds
from memento_lens.runtime.schedule import compute_schedule

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).parent / "golden" / "schedule_events.json"
PLAIN = MementoTokenIds(block_start=1, block_end=2, summary_start=3, summary_end=4)
CHATML = MementoTokenIds(block_start=1, block_end=2, summary_start=3, summary_end=4, im_start=5, assistant=6)
FLAGS = ("mask_delimiters", "compact_on_summary_end", "require_assistant_section", "restart_mode")


def _stream(rng: np.random.Generator) -> list[int]:
    if rng.random() < 0.3:  # noise: any token anywhere (malformed streams, nesting, stray delimiters)
        return rng.integers(0, 9, size=int(rng.integers(0, 40))).tolist()
    ids = [0, 5, 6] if rng.random() < 0.5 else [0]  # a ChatML assistant header, or none
    for _ in range(int(rng.integers(0, 6))):
        ids += [1] + [7] * int(rng.integers(0, 5)) + [2, 3] + [8] * int(rng.integers(0, 3)) + [4]
        if rng.random() < 0.15:
            ids += [int(rng.integers(1, 5))]  # an occasional stray delimiter
    return ids + [7] * int(rng.integers(0, 4))


def cases() -> list[dict]:
    """Deterministic: every flag combination x keep x cap x answer deferral, a few streams each."""
    rng = np.random.default_rng(20261203)
    out = []
    for flags in itertools.product((False, True), repeat=len(FLAGS)):
        for keep, cap, defer in itertools.product((-1, 0, 1, 3), (0, 2), (False, True)):
            for vocab in ("plain", "chatml"):
                ids = _stream(rng)
                out.append(
                    {
                        "config": {
                            **dict(zip(FLAGS, flags)),
                            "keep_last_n_blocks": keep,
                            "max_block_tokens": cap,
                            "keep_last_block_for_answer": defer,
                        },
                        "vocab": vocab,
                        "ids": ids,
                        "prompt_len": int(rng.integers(0, min(len(ids), 8) + 1)),
                    }
                )
    return out


def _result(sched) -> dict:
    return {
        "events": [[e.kind.value, e.position, e.start, e.end, e.block, e.rewind_to, e.message] for e in sched.events],
        "blocks": [[b.block, b.start, b.end, b.summary_start, b.summary_end] for b in sched.blocks],
        "n_tokens": sched.n_tokens,
        "require_assistant_section": sched.config.require_assistant_section,  # as resolved for the vocab
    }


def _digest(cs: list[dict]) -> str:
    return hashlib.sha256(json.dumps(cs, sort_keys=True).encode()).hexdigest()


def _run(case: dict, schedule=compute_schedule) -> dict:
    cfg = BlockMaskingConfig(**case["config"])
    tokens = CHATML if case["vocab"] == "chatml" else PLAIN
    return _result(schedule(case["ids"], cfg, tokens, prompt_len=case["prompt_len"]))


def test_golden_covers_evictions_of_every_kind():
    kinds = {ev[0] for r in json.loads(GOLDEN.read_text())["results"] for ev in r["events"]}
    assert kinds == {"compact", "restart", "deferred_flush", "forced_block_end", "warning"}


@pytest.mark.parametrize("schedule", [compute_schedule, fast_schedule], ids=["compute", "fast"])
def test_schedule_matches_golden(schedule):
    golden = json.loads(GOLDEN.read_text())
    got = cases()
    assert _digest(got) == golden["cases_sha256"]  # the generator is unchanged
    for i, case in enumerate(got):
        assert _run(case, schedule) == golden["results"][i], (i, case)


if __name__ == "__main__" and "--write" in sys.argv:
    cs = cases()
    GOLDEN.write_text(
        json.dumps({"cases_sha256": _digest(cs), "results": [_run(c) for c in cs]}, separators=(",", ":")) + "\n"
    )
    print(f"wrote {len(cs)} cases to {GOLDEN}")
