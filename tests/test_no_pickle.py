"""Grep-level guard: nothing in the package unpickles (tensors: safetensors; tables: Parquet; metadata: JSON)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["runtime", "probes", "analyses", "app", "memento_lens", "benchmarks"]
FORBIDDEN = [
    r"\bimport pickle\b",
    r"\bfrom pickle\b",
    r"\bimport cPickle\b",
    r"\bdill\b",
    r"\bjoblib\b",
    r"torch\.load\(",
    r"pd\.read_pickle\(",
    r"\.to_pickle\(",
    r"np\.load\([^)]*allow_pickle\s*=\s*True",
    r"\bshelve\b",
    r"\bmarshal\.load",
]


def test_no_unpickling_in_package_sources():
    offenders = []
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            text = path.read_text()
            for pattern in FORBIDDEN:
                for m in re.finditer(pattern, text):
                    line = text.count("\n", 0, m.start()) + 1
                    offenders.append(f"{path.relative_to(ROOT)}:{line}: {m.group(0)}")
    assert not offenders, "unpickling found:\n" + "\n".join(offenders)


def test_guard_catches_a_planted_offender(tmp_path):
    planted = "import pickle\nx = torch.load(f)\n"
    hits = [p for p in FORBIDDEN if re.search(p, planted)]
    assert len(hits) == 2
