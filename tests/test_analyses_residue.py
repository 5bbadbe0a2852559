"""Erased-block residue (analyses/residue.py) on hand-built tensors and KV entries."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from memento_lens.analyses.residue import (
    RESIDUE_COLUMNS,
    align_ranges,
    residue,
    residue_per_position,
    residue_positions,
    residue_table,
)
from memento_lens.runtime.rundir import KVKey


def test_residue_relative_l2_and_cosine_per_head():
    normal = torch.zeros(1, 2, 2, 2)
    normal[0, 0] = torch.tensor([[3.0, 0.0], [0.0, 4.0]])  # ||.|| = 5
    normal[0, 1] = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    restart = normal.clone()
    restart[0, 0, 0, 0] = 0.0  # diff norm 3 -> rel 0.6
    restart[0, 1] = torch.tensor([[0.0, 1.0], [0.0, 0.0]])  # orthogonal -> cosine 0, rel sqrt(2)
    r = residue(normal, restart)
    assert r.rel_l2 == pytest.approx([0.6, np.sqrt(2)])
    assert r.cosine == pytest.approx([16 / 20, 0.0])  # <n, r> = 16, |n| = 5, |r| = 4


def test_residue_identical_is_zero_and_shape_mismatch_raises():
    x = torch.randn(1, 3, 4, 5)
    r = residue(x, x.clone())
    assert r.rel_l2 == pytest.approx(np.zeros(3)) and r.cosine == pytest.approx(np.ones(3))
    with pytest.raises(ValueError, match="differ in shape"):
        residue(x, x[:, :, :3])


def test_residue_per_position():
    normal = torch.ones(1, 1, 3, 4)
    restart = normal.clone()
    restart[0, 0, 1] = 0.0
    assert residue_per_position(normal, restart, head=0) == pytest.approx([0.0, 1.0, 0.0])


def test_align_ranges():
    assert align_ranges((10, 15), (12, 15)) == (slice(2, 5), slice(0, 3))
    assert align_ranges((0, 3), (3, 6)) is None


def test_residue_table_pairs_normal_with_restart_over_their_common_positions():
    torch.manual_seed(0)
    k_n, v_n = torch.randn(1, 2, 4, 3), torch.randn(1, 2, 4, 3)  # memento 0 at layer 1, positions [10, 14)
    k_r, v_r = k_n[:, :, 1:].clone(), v_n[:, :, 1:].clone()  # restart covers [11, 14) only
    k_r[0, 1] += 1.0  # head 1's keys differ; values are identical
    entries = {
        KVKey("t", 1, "normal", 0): (k_n, v_n, (10, 14)),
        KVKey("t", 1, "restart", 0): (k_r, v_r, (11, 14)),
        KVKey("t", 0, "normal", 2): (k_n, v_n, (30, 34)),  # no restart partner: left out
        KVKey("t", 1, "evicted_block", 0): (k_n, v_n, (2, 6)),  # another variant: ignored
        KVKey("u", 1, "restart", 0): (k_n, v_n, (10, 14)),  # another trace: ignored
    }
    keys = residue_table(entries, "t", "keys")
    assert list(keys.columns) == RESIDUE_COLUMNS
    assert keys[["block", "layer", "head", "start", "end"]].values.tolist() == [[0, 1, 0, 11, 14], [0, 1, 1, 11, 14]]
    want = residue(k_n[:, :, 1:], k_r)
    assert keys["rel_l2"].tolist() == pytest.approx(want.rel_l2.tolist())
    assert keys["rel_l2"].iloc[0] == pytest.approx(0.0) and keys["rel_l2"].iloc[1] > 0
    values = residue_table(entries, "t", "values")
    assert values["rel_l2"].tolist() == pytest.approx([0.0, 0.0])
    assert residue_table({}, "t").empty and list(residue_table({}, "t").columns) == RESIDUE_COLUMNS
    with pytest.raises(ValueError, match="keys' or 'values"):
        residue_table(entries, "t", "queries")


def test_residue_positions_over_the_overlap():
    normal = (torch.ones(1, 1, 3, 2), torch.ones(1, 1, 3, 2), (5, 8))
    rk = torch.ones(1, 1, 2, 2)
    rk[0, 0, 0] = 0.0  # position 6 differs entirely
    pos, vals = residue_positions(normal, (rk, rk.clone(), (6, 8)), "keys", head=0)
    assert pos == [6, 7] and vals.tolist() == pytest.approx([1.0, 0.0])
    assert residue_positions(normal, (rk, rk, (8, 10)), "keys", 0)[0] == []


@pytest.mark.integration  # writes a run through the run writer and reads it back
def test_run_residue_table_reads_the_run_through_the_reader(tmp_path):
    from memento_lens.analyses.residue import run_residue_table
    from memento_lens.app.fixtures import FixtureSpec, write_fixture_run
    from memento_lens.runtime.rundir import open_run

    path = write_fixture_run(tmp_path / "run", FixtureSpec(n_traces=1))
    run = open_run(path)
    trace = str(run.table("traces.parquet")["trace"].iloc[0])
    table = run_residue_table(run, trace, "values")
    idx = run.kv_index(trace)
    pairs = {(int(r.block), int(r.layer)) for r in idx.itertuples() if r.variant == "normal"} & {
        (int(r.block), int(r.layer)) for r in idx.itertuples() if r.variant == "restart"
    }
    assert set(zip(table["block"], table["layer"])) == pairs and len(pairs) > 1
    b, layer = sorted(pairs)[0]
    n = run.kv(KVKey(trace, layer, "normal", b))
    r = run.kv(KVKey(trace, layer, "restart", b))
    want = residue(n.values, r.values)
    got = table[(table["block"] == b) & (table["layer"] == layer)].sort_values("head")
    assert got["rel_l2"].tolist() == pytest.approx(want.rel_l2.tolist())
    assert got["rel_l2"].gt(0).all()  # the fixture perturbs the restart KV
