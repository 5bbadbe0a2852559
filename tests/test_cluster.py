"""Replay sharded over a Ray cluster (runtime/cluster.py) into one run: identical to the single-process run,
a killed actor, a killed driver and --resume, a bad trace failing its unit alone, the CLI's mapping.

All cluster tests share one local ``ray.init(num_cpus=2)`` and one pool of two model actors (start-up costs
seconds); the tiny Llama runs first and the test that kills an actor last, so each actor loads the toy once.
"""

from __future__ import annotations

import json
import os
import random
import signal

import pytest
from conftest import local_ray_pool
from memento_lens.runtime.capture import default_captures
from memento_lens.runtime.config import BlockMaskingConfig
from memento_lens.runtime.errors import OptionError, RunDirError
from memento_lens.runtime.model import RANDOM_TOKENS, load_model
from memento_lens.runtime.replay import traces_from_ids
from memento_lens.runtime.rundir.kv import KVKey
from memento_lens.runtime.rundir.reader import RunReader
from memento_lens.runtime.rundir.schema import KV_INDEX, TRACE_TABLES
from memento_lens.runtime.runs import ReplayConfig, UnitsFailed, run_replay
from memento_lens.runtime.toy.task import sample
from memento_lens.runtime.trace import Trace
from memento_lens.runtime.verify import structured_stream

ray = pytest.importorskip("ray")  # the optional extra `ray`; make setup and CI install it

pytestmark = pytest.mark.integration

UNIT = 3  # traces per unit: 11 traces -> 4 units, the last one short


@pytest.fixture(scope="module")
def pool():
    yield from local_ray_pool(num_cpus=2)


@pytest.fixture(scope="module")
def toy():
    return load_model("toy")


@pytest.fixture(scope="module")
def toy_traces():
    return traces_from_ids(sample(11, 3).token_ids, prompt_len=1, prefix="toy")


def _cfg(traces, **kw):
    return ReplayConfig(traces, model="toy", captures=default_captures(evicted_block=True), unit_size=UNIT, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, toy, toy_traces):
    """The single-process run (no Ray) every sharded run must equal."""
    run, acct = run_replay(tmp_path_factory.mktemp("ref") / "run", _cfg(toy_traces), loaded=toy)
    assert acct.workers == 1 and acct.units == 4 and acct.units_run == 4
    return run.path


def _files(path):
    """Every file of a run with its sha256 (the manifest's record), the manifest itself left out."""
    return {k: v["sha256"] for k, v in json.loads((path / "manifest.json").read_text())["files"].items()}


def _same_run(a, b):
    """Same traces, same table rows in the same order, same K/V bit for bit, read through the reader."""
    ra, rb = RunReader(a), RunReader(b)
    for t in TRACE_TABLES:
        x, y = ra.table(t), rb.table(t)
        assert len(x) and x.equals(y), t.name
    idx = ra.table(KV_INDEX)
    assert len(idx) and idx.equals(rb.table(KV_INDEX))
    for r in idx.itertuples(index=False):
        key = KVKey(r.trace, int(r.layer), r.variant, int(r.block))
        ea, eb = ra.kv(key), rb.kv(key)
        assert ea.keys.dtype == eb.keys.dtype and (ea.keys == eb.keys).all() and (ea.values == eb.values).all()
    assert _files(a) == _files(b)  # and the files themselves are the same bytes


def _llama_traces(n):
    rng = random.Random(5)
    out = []
    for i in range(n):
        ids, pl = structured_stream(rng, RANDOM_TOKENS, list(range(6, 64)), n_blocks=rng.randint(1, 3))
        out.append(Trace(f"llama-{i:03d}", ids, pl))
    return out


def test_sharded_tiny_llama_equals_single_process(pool, tmp_path):
    traces = _llama_traces(6)
    cfg = dict(
        model="random:llama-tiny",
        masking=BlockMaskingConfig(mask_delimiters=False),
        captures=default_captures(),
        unit_size=4,
    )
    one, _ = run_replay(tmp_path / "one", ReplayConfig(traces, **cfg))
    two, acct = run_replay(tmp_path / "two", ReplayConfig(traces, workers=2, **cfg), pool=pool)
    assert acct.units == 2 and acct.workers == 2
    _same_run(one.path, two.path)
    # each actor loading the model split over two devices (layer 1 offloaded to "disk") gives the same run too
    split = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu"}
    split |= {"model.layers.1": "disk", "model.norm": "cpu", "lm_head": "cpu"}
    three, _ = run_replay(tmp_path / "three", ReplayConfig(traces, workers=2, device_map=split, **cfg), pool=pool)
    _same_run(one.path, three.path)
    assert three.manifest.info["production"][0]["device_map"] == split


def test_sharded_toy_run_equals_single_process(pool, toy_traces, reference, tmp_path):
    run, acct = run_replay(tmp_path / "run", _cfg(toy_traces, workers=2), pool=pool)
    assert run.complete and acct.workers == 2 and acct.units == 4 and acct.units_run == 4
    assert acct.tokens == sum(len(t) for t in toy_traces) and acct.retries == 0 and not acct.failures
    _same_run(reference, run.path)
    prod = run.manifest.info["production"]
    assert [p["workers"] for p in prod] == [2] and prod[0]["unit_size"] == UNIT  # how it was produced
    assert run.manifest.config == json.loads((reference / "manifest.json").read_text())["config"]


def test_bad_trace_fails_its_unit_alone(pool, toy_traces, reference, tmp_path):
    bad = list(toy_traces)
    bad[4] = Trace(bad[4].trace_id, [*bad[4].token_ids[:-1], 10_000], bad[4].prompt_len)  # outside the vocabulary
    with pytest.raises(UnitsFailed, match=r"'toy-00004'.*token \d+ has id 10000") as info:
        run_replay(tmp_path / "run", _cfg(bad, workers=2), pool=pool)
    err = info.value
    assert [f.unit for f in err.accounting.failures] == [1] and err.accounting.units_run == 3
    run = RunReader(tmp_path / "run")
    assert not run.complete and run.manifest.info["failed"][0]["trace"] == "toy-00004"
    kept = list(run.table(TRACE_TABLES[0])["trace"])  # the other units' traces, committed, in order
    assert kept == [t.trace_id for t in toy_traces if t.trace_id not in {f"toy-{i:05d}" for i in range(3, 6)}]
    # the trace fixed, --resume runs only that unit; the run then equals the reference
    fixed, acct = run_replay(tmp_path / "run", _cfg(toy_traces, workers=2, resume=True), pool=pool)
    assert fixed.complete and acct.units_kept == 3 and acct.units_run == 1 and not fixed.manifest.info["failed"]
    _same_run(reference, fixed.path)


class _DriverKilled(BaseException):
    """Stands for the driver being killed (not an Exception: nothing may catch it on the way out)."""


def _kill_after(n):
    def on_unit(res, acct):
        if acct.units_run >= n:
            raise _DriverKilled

    return on_unit


@pytest.mark.parametrize("first, then", [(2, 0), (0, 2)], ids=["ray-then-single", "single-then-ray"])
def test_killed_driver_resumes_keeping_finished_units(pool, toy, toy_traces, reference, tmp_path, first, then):
    out = tmp_path / "run"
    with pytest.raises(_DriverKilled):
        run_replay(out, _cfg(toy_traces, workers=first), loaded=toy, pool=pool, on_unit=_kill_after(2))
    assert not RunReader(out).complete and len(RunReader(out).table(TRACE_TABLES[0])) == 2 * UNIT
    # a worker killed while writing its part leaves a file under our own name, never recorded: resume rewrites it
    stray = out / "parts" / "00003" / "tokens.parquet"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"cut off")
    with pytest.raises(RunDirError, match="--resume"):
        run_replay(out, _cfg(toy_traces, workers=then), loaded=toy, pool=pool)  # refused without --resume
    run, acct = run_replay(out, _cfg(toy_traces, workers=then, resume=True), loaded=toy, pool=pool)
    assert run.complete and acct.units_kept == 2 and acct.units_run == 2 and run.unrecorded == []
    _same_run(reference, run.path)
    assert [p["workers"] for p in run.manifest.info["production"]] == [max(first, 1), max(then, 1)]


def test_cli_workers_maps_to_the_sharded_path(pool, toy_traces, reference, tmp_path, monkeypatch):
    import memento_lens.runtime.cluster as cluster
    from typer.testing import CliRunner

    from memento_lens.cli import app

    class Shared:  # the CLI's own pool, standing in for a fresh local cluster: the shared one, kept open
        def __init__(self, size, **kw):
            assert size == 2 and kw["gpus_per_worker"] == 0
            self.__dict__["_p"] = pool

        def __getattr__(self, name):
            return getattr(pool, name)

        def close(self):
            pass

    monkeypatch.setattr(cluster, "ReplayPool", Shared)
    path = tmp_path / "traces.jsonl"
    path.write_text(
        "".join(json.dumps({"trace": t.trace_id, "token_ids": t.token_ids, "prompt_len": 1}) + "\n" for t in toy_traces)
    )
    args = ["replay", "--model", "toy", "--traces", str(path), "--evicted-block", "--unit-size", str(UNIT)]
    r = CliRunner().invoke(app, [*args, "--workers", "2", "--out", str(tmp_path / "run"), "--json"])
    assert r.exit_code == 0, r.output
    acct = json.loads(r.stdout.strip().splitlines()[-1])
    assert acct["workers"] == 2 and acct["units"] == 4 and acct["tokens"] == sum(len(t) for t in toy_traces)
    assert RunReader(tmp_path / "run").table(TRACE_TABLES[0])["trace"].tolist() == [t.trace_id for t in toy_traces]


def test_workers_the_cluster_cannot_place_are_named(pool, tmp_path):
    from memento_lens.runtime.cluster import ReplayPool

    gpu = ReplayPool(1, gpus_per_worker=1, cpus_per_worker=0)  # this cluster has no GPU: never placed
    gpu.start_timeout = 1.0
    try:
        with pytest.raises(OptionError, match=r"1 of 1 Ray workers did not start.*1 GPU.*fewer --workers"):
            gpu.check_sees(str(tmp_path))
    finally:
        gpu.close()


def test_killed_actor_has_its_unit_retried_on_another(pool, toy_traces, reference, tmp_path):
    pids = dict(zip(map(id, pool.actors), pool.pids()))
    killed = []

    def kill_second(p, actor, unit):
        if unit.index == 1 and not killed:  # the actor holding unit 1 dies mid-unit
            killed.append(pids[id(actor)])
            os.kill(pids[id(actor)], signal.SIGKILL)

    pool.on_dispatch = kill_second
    try:
        run, acct = run_replay(tmp_path / "run", _cfg(toy_traces, workers=2), pool=pool)
    finally:
        pool.on_dispatch = None
    assert killed and acct.retries == 1 and acct.units_run == 4 and not acct.failures
    _same_run(reference, run.path)  # nothing lost, nothing written twice
    assert run.manifest.info["production"][0]["retries"] == 1
