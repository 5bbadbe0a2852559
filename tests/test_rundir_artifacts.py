"""Every run artifact is declared once (runtime/rundir/schema.py), read through one path (RunReader / the store's
read_table, which sees an unfinished run's parts), and one bytes-per-token rule holds per run (issues 16, 20)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from memento_lens.runtime.rundir import schema
from memento_lens.runtime.rundir.reader import RunReader
from memento_lens.runtime.rundir.store import RunStore
from typer.testing import CliRunner

from memento_lens.cli import app

ROOT = Path(__file__).resolve().parents[1]
# Concrete file names of the declared artifacts: no module outside runtime/rundir may spell them.
SPELLINGS = [
    schema.PASSCODE_SUMMARY.path,
    schema.RESTART_SUMMARY.path,
    schema.PATCH_SUMMARY.path,
    schema.ABLATION_BLOCKS.path,
    schema.INGEST_REPORT.path,
    schema.TRACES_META.path,
    schema.FIGURES_RECORD,
    "kv/shard-",
    "attention/shard-",
    "features/*/",
]


def _code_strings(path: Path):
    """String constants of a module that are not docstrings (f-string parts included)."""
    tree = ast.parse(path.read_text(), str(path))
    docs = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            yield node.lineno, node.value


def test_no_module_outside_rundir_spells_a_run_file_name():
    hits = []
    for folder in ("runtime", "probes", "analyses", "app", "memento_lens", "benchmarks", "scripts"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith("runtime/rundir/"):
                continue
            hits += [f"{rel}:{line}: {s!r}" for line, s in _code_strings(path) for n in SPELLINGS if n in s]
    assert not hits, "run file names spelled outside runtime/rundir/schema.py:\n" + "\n".join(hits)


def test_every_artifact_and_table_is_described():
    text = schema.describe()
    for t in schema.TABLES.values():
        assert f"`{t.path}`" in text
    for a in schema.ARTIFACTS.values():
        assert f"`{a.path}`" in text and a.writer in text
    assert str(schema.PASSCODE_CHANCE) in text
    assert schema.KV_SHARD.at(part=3) == "kv/shard-00003.safetensors" and schema.is_shard("kv/shard-00003.safetensors")
    assert not schema.is_shard("kv/index.parquet")
    assert schema.figure_path("kv-sawtooth", "csv") == "figures/kv-sawtooth.csv"


def test_feature_cache_is_declared_found_and_typed(tmp_path):
    from memento_lens.probes.features import MementoFeatures

    feats = MementoFeatures(
        kv={(1, 0): torch.ones(3, 2, 4, 8), (1, 2): torch.zeros(3, 2, 4, 8)},
        labels=torch.arange(3),
        positions={1: np.array([5, 6, 7, 8])},
    )
    st = RunStore.create(tmp_path / "run", "probe_passcode", {})
    prefix = schema.features_prefix("step-100")
    for world in schema.FEATURE_WORLDS:
        feats.save(st, f"{prefix}/{world}")
    st.write_json(schema.FEATURE_TEXT.at(prefix=prefix), {"task": "toy", "ceilings": {}})
    st.mark_complete()
    run = RunReader(tmp_path / "run")
    assert run.feature_sets() == ["features/step-100"]
    assert schema.feature_checkpoints(run.files()) == ["step-100"]
    idx = run.table(schema.features_index_path(prefix, "normal"))  # checked against FEATURE_INDEX
    assert list(idx.columns) == schema.FEATURE_INDEX.names
    assert list(idx["positions"].iloc[0]) == [5, 6, 7, 8]
    assert set(idx["file"]) <= set(run.files("features/step-100/normal/"))
    back = MementoFeatures.load(st, f"{prefix}/restart")
    assert torch.equal(back.kv[(1, 2)], feats.kv[(1, 2)]) and back.positions[1].tolist() == [5, 6, 7, 8]
    with pytest.raises(ValueError, match="feature_index"):  # a producer's bug is refused by the schema
        st.write_table(schema.features_index_path(prefix, "normal"), pd.DataFrame([{"layer": 0}]))


def test_store_read_table_sees_an_unfinished_runs_parts(tmp_path):
    """RunStore.read_table is the reader's read: an interrupted run's committed parts, not 'never written'."""
    from memento_lens.runtime.rundir.writer import RunWriter

    st = RunStore.create(tmp_path / "run", "replay", {})
    w = RunWriter(st)
    for tid in ("a", "b"):
        tables = {t.name: t.empty() for t in schema.TRACE_TABLES}
        tables["traces"] = schema.TRACES.frame(
            [dict(trace=tid, n_tokens=1, prompt_len=1, n_blocks=0, mode="memento", source="test")]
        )
        w.write_part([tables], None)
    assert not st.complete
    assert st.read_table(schema.TRACES)["trace"].tolist() == ["a", "b"]
    assert st.read_table("traces.parquet")["trace"].tolist() == ["a", "b"]
    assert RunReader(tmp_path / "run").table(schema.TRACES, trace="b")["trace"].tolist() == ["b"]


def test_manifest_typed_chance_and_model_and_older_runs(tmp_path):
    st = RunStore.create(tmp_path / "run", "probe_passcode", {})
    st.record_model({"name": "toy", "bytes_per_token": 2048})
    st.mark_complete(rows=1, chance=schema.PASSCODE_CHANCE)
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert m["chance"] == 0.1 and m["model"]["bytes_per_token"] == 2048 and "chance" not in m["info"]
    run = RunReader(tmp_path / "run")
    assert run.chance == 0.1 and run.bytes_per_token() == (2048, "toy (the run's own model)")
    old = RunStore.create(tmp_path / "old", "generate", {"model": "toy", "model_info": {"bytes_per_token": 64}})
    old.mark_complete()
    assert "chance" not in json.loads((tmp_path / "old" / "manifest.json").read_text())  # unchanged format
    assert RunReader(tmp_path / "old").chance is None
    assert RunReader(tmp_path / "old").bytes_per_token()[0] == 64


def test_kv_uses_the_runs_own_bytes_per_token_unless_told(tmp_path):
    """`kv` on a toy run: the toy's 2 KB/token (as the kv-sawtooth figure), stated; --model names another."""
    run = tmp_path / "toy"
    res = CliRunner().invoke(
        app, ["generate", "--model", "toy", "--n", 1, "--max-new-tokens", 30, "--threads", 1, "--out", str(run)]
    )
    assert res.exit_code == 0, res.output
    own = CliRunner().invoke(app, ["kv", str(run), "--json"])
    assert own.exit_code == 0, own.output
    got = json.loads(own.stdout.strip().splitlines()[-1])
    bpt = RunReader(run).model["bytes_per_token"]
    assert got["bytes_per_token"] == bpt == 2048 and "run's own model" in got["bytes_per_token_rule"]
    text = CliRunner().invoke(app, ["kv", str(run)])
    assert "2048" in text.output and "run's own model" in " ".join(text.output.split())
    named = json.loads(
        CliRunner().invoke(app, ["kv", str(run), "--model", "qwen3-8b", "--json"]).stdout.splitlines()[-1]
    )
    assert named["bytes_per_token"] == 147456 and "--model" in named["bytes_per_token_rule"]
    # the figure of the same run: the same rule, stated in its Markdown
    from memento_lens.analyses.figures import render_figures

    render_figures(["kv-sawtooth"], runs=[run], out_dir=tmp_path / "f", png=False)
    md = (tmp_path / "f" / "kv-sawtooth.md").read_text()
    assert "2,048 bytes/token" in md and "own model" in md
    occ = RunReader(run).table(schema.OCCUPANCY)
    peak = pd.read_csv(tmp_path / "f" / "kv-sawtooth.csv").groupby("mode")["kv_gb"].max()["memento"]
    assert peak == pytest.approx(occ[occ["mode"] == "memento"]["tokens"].max() * 2048 / 2**30)
