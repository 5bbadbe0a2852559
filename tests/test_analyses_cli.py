"""The analyses CLI end to end on the shared examples (no PNG: fast)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from memento_lens.cli import app

DATA = Path("/work/shared/data")
if not DATA.exists():  # a checkout next to shared/
    DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
EXAMPLES = [str(DATA / "memento_example_math.json"), str(DATA / "memento_example_code.json")]
pytestmark = pytest.mark.skipif(not Path(EXAMPLES[0]).exists(), reason="shared example traces not present")
runner = CliRunner()


def test_kv_json():
    res = runner.invoke(app, ["kv", *EXAMPLES, "--json", "--per-trace", "--model", "qwen3-32b"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["bytes_per_token"] == 256 * 1024
    modes = {m["mode"]: m for m in data["modes"]}
    assert modes["memento"]["peak_reduction_vs_vanilla"] > 1.5
    assert {t["trace"] for t in data["traces"]} == {"memento_example_math", "memento_example_code"}


def test_ingest_then_figures(tmp_path):
    run = tmp_path / "run"
    res = runner.invoke(app, ["ingest", *EXAMPLES, "--out", str(run)])
    assert res.exit_code == 0, res.output
    assert pd.read_parquet(run / "traces.parquet")["n_blocks"].tolist() == [5, 4]
    res = runner.invoke(app, ["figures", "--run", str(run), "--no-png", "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert [r["name"] for r in rep["rendered"]] == ["kv-sawtooth", "compression-cdf"]
    assert (run / "figures" / "kv-sawtooth.csv").exists()
    # The same ingest again finds its own complete run: says so, exits 0, changes nothing.
    before = (run / "manifest.json").read_bytes()
    res = runner.invoke(app, ["ingest", *EXAMPLES, "--out", str(run)])
    assert res.exit_code == 0 and "already holds the complete run" in res.output
    assert (run / "manifest.json").read_bytes() == before
    # A different ingest into it is refused naming the first differing field, and nothing is lost.
    res = runner.invoke(app, ["ingest", *EXAMPLES, "--out", str(run), "--keep", "1"])
    assert res.exit_code == 2 and "masking.keep_last_n_blocks" in res.output and "--overwrite" in res.output
    assert "--resume" not in res.output  # ingest has no such option
    assert (run / "figures" / "kv-sawtooth.csv").exists()


def test_errors_are_one_line(tmp_path):
    res = runner.invoke(app, ["figures", "--no-png"])
    assert res.exit_code == 2 and "--run" in res.output
    res = runner.invoke(
        app, ["figures", "probe-conditions", "--traces", EXAMPLES[0], "--out", str(tmp_path), "--no-png"]
    )
    assert res.exit_code == 1 and "probe_results.parquet" in res.output
    res = runner.invoke(app, ["kv", str(tmp_path / "missing.json")])
    assert res.exit_code == 2 and "missing.json" in res.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q", "text": "<|block_end|>x"}\n')
    res = runner.invoke(app, ["stats", str(bad), "--strict"])
    assert res.exit_code == 2 and "bad:0" in res.output and "token" in res.output
