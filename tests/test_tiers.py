"""The test tiers (tests/conftest.py): every collected test is in exactly one of unit / integration / e2e."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent

# Collect the suite once in a subprocess and print each test's tier markers.
_COLLECT = """
import json, sys, pytest
class Tiers:
    def pytest_collection_finish(self, session):
        self.found = {i.nodeid: sorted(m.name for m in i.iter_markers() if m.name in ("unit", "integration", "e2e"))
                      for i in session.items}
t = Tiers()
rc = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", sys.argv[1]], plugins=[t])
print("TIERS=" + json.dumps(t.found))
sys.exit(rc)
"""


@pytest.mark.integration  # collects the whole suite in a subprocess
def test_every_test_has_exactly_one_tier():
    out = subprocess.run([sys.executable, "-c", _COLLECT, str(TESTS)], capture_output=True, text=True, cwd=TESTS.parent)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    found = json.loads(out.stdout.rsplit("TIERS=", 1)[1])
    assert len(found) > 100
    assert {t: m for t, m in found.items() if len(m) != 1} == {}
    tier = {t: m[0] for t, m in found.items()}
    # explicit markers and the slow rule win over the file's tier; unlisted files are integration
    assert tier["tests/test_demo.py::test_summarize_reads_the_headline_numbers_from_the_tables"] == "unit"
    assert tier["tests/test_demo.py::test_demo_pipeline_summary_names_what_it_wrote"] == "e2e"
    assert tier["tests/test_public_api.py::test_readme_example_runs"] == "integration"
    assert tier["tests/test_tiers.py::test_every_test_has_exactly_one_tier"] == "integration"
    assert {v for t, v in tier.items() if t.startswith("tests/test_fresh_clone.py")} == {"e2e"}
    assert {v for t, v in tier.items() if t.startswith("tests/test_schedule.py")} == {"unit"}
