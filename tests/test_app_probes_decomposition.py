"""App probes page: the channel decomposition chart shows the run's normal / restart / text numbers."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("streamlit")
from memento_lens.app.fixtures import FixtureSpec, write_fixture_run  # noqa: E402
from memento_lens.runtime.rundir.schema import PROBE_RESULTS  # noqa: E402
from memento_lens.runtime.rundir.store import RunStore  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

MAIN = str(Path(__file__).resolve().parent.parent / "app" / "main.py")


def _arr(v) -> list:
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"])).tolist()
    return list(v)


def _decomposed(run: Path, references: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for layer in (0, 1, -999 if references else -1):  # -999: this round's ALL_LAYERS; -1 in older runs
        for cond, dist in (("causal_control", -1), ("direct", 0), ("masked", 1), ("masked", 2)):
            acc, rst = rng.uniform(0.1, 0.6, size=2)
            rows.append(
                dict(
                    model="toy", checkpoint="final", task="toy", condition=cond, role="measurement",
                    distance=dist, layer=layer, head=-1, probe="mlp", seed=0, n_seeds=3, n_train=800, n_val=200,
                    accuracy=acc, ci_low=acc - 0.02, ci_high=acc + 0.02, restart_accuracy=rst,
                    restart_ci_low=rst - 0.02, restart_ci_high=rst + 0.02, text_accuracy=0.15, text_ci_low=0.13,
                    text_ci_high=0.17, text_ceiling=0.16, implicit_excess=acc - rst, excess_ci_low=acc - rst - 0.03,
                    excess_ci_high=acc - rst + 0.03, excess_seed_sd=0.01, control_accuracy=0.1,
                    selectivity=acc - 0.1, epochs=30, max_epochs=200, hit_cap=False, task_accuracy=0.95,
                )
            )  # fmt: skip
    df = PROBE_RESULTS.frame(rows)
    if references:
        for i, w in enumerate(("same_sum", "foreign", "delimiter_hidden")):
            df[f"{w}_accuracy"] = 0.11 + 0.01 * i + 0.001 * np.arange(len(df))
            df[f"{w}_ci_low"], df[f"{w}_ci_high"] = df[f"{w}_accuracy"] - 0.01, df[f"{w}_accuracy"] + 0.01
            df[f"excess_{w}"] = df["accuracy"] - df[f"{w}_accuracy"]
        df["stopped_by"], df["still_improving"], df["n_data_seeds"] = "plateau", False, 2
        df = PROBE_RESULTS.frame(df.to_dict("records"))
    RunStore.open(run).write_table("probe_results.parquet", df)
    return df


def test_probes_page_shows_the_decomposition(tmp_path):
    import streamlit as st

    st.cache_data.clear()
    run = write_fixture_run(tmp_path / "run", FixtureSpec(n_traces=2, attention_traces=1))
    df = _decomposed(run)
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.session_state["run_dirs"] = [str(run)]
    at.run()
    at.switch_page("views/probes.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    dec = [s for s in specs if "Channel decomposition" in str(s["layout"].get("title", ""))]
    assert len(dec) == 1
    bars = {t["name"]: t for t in dec[0]["data"]}
    want = df[df.layer == 1].sort_values(["condition", "distance"])  # default: the last single layer
    assert _arr(bars["normal world"]["y"]) == pytest.approx(want.accuracy.tolist())
    assert _arr(bars["restart world (text channel)"]["y"]) == pytest.approx(want.restart_accuracy.tolist())
    assert "causal control (pipeline check)" in _arr(bars["normal world"]["x"])
    at.selectbox(key="dec_layer").set_value(-1).run()
    assert not at.exception
    dec = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    dec = [s for s in dec if "Channel decomposition" in str(s["layout"].get("title", ""))][0]
    want = df[df.layer == -1].sort_values(["condition", "distance"])
    bars = {t["name"]: t for t in dec["data"]}
    assert _arr(bars["normal world"]["y"]) == pytest.approx(want.accuracy.tolist())


def test_probes_page_shows_the_reference_worlds(tmp_path):
    import streamlit as st

    st.cache_data.clear()
    run = write_fixture_run(tmp_path / "run", FixtureSpec(n_traces=2, attention_traces=1))
    df = _decomposed(run, references=True)
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.session_state["run_dirs"] = [str(run)]
    at.run()
    at.switch_page("views/probes.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    at.selectbox(key="dec_layer").set_value(-999).run()  # the all-layers rows, shown by name
    assert not at.exception
    dec = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    dec = [s for s in dec if "Channel decomposition" in str(s["layout"].get("title", ""))][0]
    bars = {t["name"]: t for t in dec["data"]}
    want = df[df.layer == -999].sort_values(["condition", "distance"])
    for name, col in (
        ("same-sum block", "same_sum_accuracy"),
        ("foreign passcode", "foreign_accuracy"),
        ("delimiters hidden", "delimiter_hidden_accuracy"),
    ):
        assert _arr(bars[name]["y"]) == pytest.approx(want[col].tolist())
    assert any("probe seeds x 2 data seeds" in c.value for c in at.caption)
