"""Capture into a run directory: the contract's files, K/V equal to the dense reference, resume, refusal."""

from __future__ import annotations

import random

import pandas as pd
import pytest
import torch
from conftest import TOKENS, tiny_qwen3
from memento_lens.runtime.capture import (
    ATTENTION_REL_PRECISION,
    AttentionWeights,
    EvictedBlockKV,
    MementoKV,
    default_captures,
    expand_attention,
)
from memento_lens.runtime.config import BlockMaskingConfig
from memento_lens.runtime.dense import dense_forward
from memento_lens.runtime.generate import SamplingConfig
from memento_lens.runtime.masks import visibility_mask
from memento_lens.runtime.rundir import KVKey, KVReader
from memento_lens.runtime.rundir.store import RunError, RunStore
from memento_lens.runtime.rundir.writer import RunWriter
from memento_lens.runtime.runs import generate_to_run, replay_to_run
from memento_lens.runtime.schedule import compute_schedule
from memento_lens.runtime.trace import Trace
from memento_lens.runtime.verify import structured_stream

ORDINARY = list(range(5, 48))


@pytest.fixture(scope="module")
def model():
    return tiny_qwen3()


def traces(n=3, seed=0, n_blocks=3):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ids, pl = structured_stream(rng, TOKENS, ORDINARY, n_blocks=n_blocks)
        out.append(Trace(f"t{i}", ids, pl))
    return out


def test_run_directory_contract_and_kv_values(model, tmp_path):
    cfg = BlockMaskingConfig(mask_delimiters=True)
    trs = traces()
    caps = [MementoKV(), EvictedBlockKV(layers=(1,)), AttentionWeights(layers=(0,), queries=(12,))]
    store = replay_to_run(model, trs, cfg, TOKENS, tmp_path / "run", captures=caps)
    store = RunStore.open(tmp_path / "run", require_complete=True)  # checksums verified
    assert store.manifest.config["masking"]["mask_delimiters"] is True
    cols = {
        "traces": ["trace", "n_tokens", "prompt_len", "n_blocks", "mode", "source"],
        "tokens": ["trace", "pos", "token_id", "token", "role", "block"],
        "events": ["trace", "kind", "position", "start", "end", "block", "rewind_to", "message"],
        "occupancy": ["trace", "mode", "step", "tokens", "bytes"],
    }
    for name, want in cols.items():
        assert list(store.read_table(f"{name}.parquet").columns) == want
    kv = KVReader(tmp_path / "run")
    assert list(kv.index.columns) == ["trace", "variant", "layer", "block", "start", "end", "shard", "key", "value"]
    for t in trs:
        sched = compute_schedule(t.token_ids, cfg, TOKENS, prompt_len=t.prompt_len)
        dense = dense_forward(model, torch.tensor([t.token_ids]), visibility_mask(sched))
        for span in sched.blocks:
            s, e = span.summary_start, span.summary_end + 1
            for layer in (0, 1):
                k, v = kv.get(KVKey(t.trace_id, layer, "normal", span.block))
                assert kv.span(KVKey(t.trace_id, layer, "normal", span.block)) == (s, e)
                assert k.shape == (1, 2, e - s, 16)
                assert torch.allclose(k, dense.keys[layer][:, :, s:e], atol=1e-5)
                assert torch.allclose(v, dense.values[layer][:, :, s:e], atol=1e-5)
        for ev in sched.evictions:
            k, _ = kv.get(KVKey(t.trace_id, 1, "evicted_block", ev.block))
            assert torch.allclose(k, dense.keys[1][:, :, ev.start : ev.end], atol=1e-5)
        assert KVKey(t.trace_id, 0, "evicted_block", 0) not in kv  # only layer 1 was asked for
        vis = visibility_mask(sched)[12]
        stored = kv.attention(t.trace_id, "normal", 0, 12)  # float16 over the visible keys only
        assert stored.dtype == torch.float16 and stored.shape == (1, 4, int(vis.sum()))
        att = torch.from_numpy(expand_attention(stored, vis.numpy()))
        assert att.shape == (4, len(t)) and float(att[:, ~vis].abs().max()) == 0.0
        # float16 storage: each weight within 2**-11 of itself, so a row sums to 1 within 5e-4
        assert torch.allclose(att.sum(-1), torch.ones(4), atol=ATTENTION_REL_PRECISION)


def test_restart_counterfactual_equals_restart_mode_run(model, tmp_path):
    trs = traces(2, seed=4)
    # With delimiters masked, a memento-mode run's counterfactual sees exactly what a restart run sees.
    replay_to_run(model, trs, BlockMaskingConfig(mask_delimiters=True), TOKENS, tmp_path / "n", captures=[MementoKV()])
    replay_to_run(
        model,
        trs,
        BlockMaskingConfig(mask_delimiters=True, restart_mode=True),
        TOKENS,
        tmp_path / "r",
        captures=[MementoKV()],
    )
    normal, restart = KVReader(tmp_path / "n"), KVReader(tmp_path / "r")
    n_checked = 0
    for key in normal.keys():
        if key.variant != "restart":
            continue
        k1, v1 = normal.get(key)
        k2, v2 = restart.get(key)
        assert torch.allclose(k1, k2, atol=1e-5) and torch.allclose(v1, v2, atol=1e-5)
        if key.layer == 1:  # layer-0 keys depend on token and position only; deeper ones saw the block
            kn, _ = normal.get(KVKey(key.trace, key.layer, "normal", key.block))
            assert not torch.allclose(k1[:, :, :-1], kn[:, :, :-1], atol=1e-3)
        n_checked += 1
    assert n_checked == 2 * 2 * 3
    # the restart run's "normal" variant: the memento tokens first computed with the block visible
    k, _ = restart.get(KVKey("t0", 0, "normal", 1))
    kn, _ = normal.get(KVKey("t0", 0, "normal", 1))
    assert torch.allclose(k, kn[:, :, : k.shape[2]], atol=1e-5)


def test_resume_keeps_finished_traces(model, tmp_path, monkeypatch):
    trs = traces(3, seed=7)
    cfg = BlockMaskingConfig(mask_delimiters=False)
    calls = []
    real = RunWriter.write_part

    def failing(self, tables, sink):
        if len(calls) == 1:
            raise KeyboardInterrupt("simulated interruption")
        calls.append(tables[0]["traces"]["trace"].tolist())
        return real(self, tables, sink)

    monkeypatch.setattr(RunWriter, "write_part", failing)
    with pytest.raises(KeyboardInterrupt):
        replay_to_run(model, trs, cfg, TOKENS, tmp_path / "run", captures=[MementoKV()], part_traces=1)
    monkeypatch.setattr(RunWriter, "write_part", real)
    st = RunStore.open(tmp_path / "run")
    assert not st.complete
    with pytest.raises(RunError, match="--overwrite"):
        replay_to_run(model, trs, cfg, TOKENS, tmp_path / "run", captures=[MementoKV()], part_traces=1)
    import memento_lens.runtime.replay as replay_mod

    seen: list[str] = []
    real_replay = replay_mod.replay
    monkeypatch.setattr(
        replay_mod,
        "replay",
        lambda m, trs_, *a, **k: seen.extend(t.trace_id for t in trs_) or real_replay(m, trs_, *a, **k),
    )
    replay_to_run(model, trs, cfg, TOKENS, tmp_path / "run", captures=[MementoKV()], part_traces=1, resume=True)
    assert seen == ["t1", "t2"]  # t0 was finished before the interruption and is kept
    monkeypatch.setattr(replay_mod, "replay", real_replay)
    replay_to_run(model, trs, cfg, TOKENS, tmp_path / "fresh", captures=[MementoKV()])
    a, b = KVReader(tmp_path / "run"), KVReader(tmp_path / "fresh")
    assert set(a.keys()) == set(b.keys())
    for key in a.keys():
        assert torch.equal(a.get(key)[0], b.get(key)[0])
    ta = pd.read_parquet(tmp_path / "run" / "tokens.parquet")
    tb = pd.read_parquet(tmp_path / "fresh" / "tokens.parquet")
    pd.testing.assert_frame_equal(
        ta.sort_values(["trace", "pos"]).reset_index(drop=True), tb.sort_values(["trace", "pos"]).reset_index(drop=True)
    )
    # a different config in the same directory is refused, even with --resume
    with pytest.raises(RunError, match="first difference: masking.mask_delimiters"):
        replay_to_run(
            model,
            trs,
            BlockMaskingConfig(mask_delimiters=True),
            TOKENS,
            tmp_path / "run",
            captures=[MementoKV()],
            resume=True,
        )
    replay_to_run(model, trs, BlockMaskingConfig(mask_delimiters=True), TOKENS, tmp_path / "run", overwrite=True)
    assert RunStore.open(tmp_path / "run").manifest.config["masking"]["mask_delimiters"] is True


def test_generate_run_writes_tables_and_capture(model, tmp_path):
    cfg = BlockMaskingConfig(mask_delimiters=False, require_assistant_section=False)
    prompts = [[0, TOKENS.block_start, 7, 8, TOKENS.block_end, TOKENS.summary_start, 9]] * 2
    store = generate_to_run(
        model,
        prompts,
        cfg,
        TOKENS,
        tmp_path / "g",
        captures=default_captures(),
        sampling=SamplingConfig(max_new_tokens=6, seed=1),
        batch_size=1,
    )
    tr = store.read_table("traces.parquet")
    assert tr["trace"].tolist() == ["gen-00000", "gen-00001"] and (tr["mode"] == "memento").all()
    occ = store.read_table("occupancy.parquet")
    assert len(occ) == tr["n_tokens"].sum()
    assert (occ["bytes"] == occ["tokens"] * 2 * 2 * 2 * 16 * 4).all()


def test_generate_run_resume_reproduces_uninterrupted_run(model, tmp_path, monkeypatch):
    cfg = BlockMaskingConfig(mask_delimiters=False, require_assistant_section=False)
    prompts = [[0, TOKENS.block_start, 7 + i] for i in range(3)]
    sampling = SamplingConfig(max_new_tokens=5, seed=11)
    generate_to_run(model, prompts, cfg, TOKENS, tmp_path / "full", sampling=sampling, batch_size=1)
    real = RunWriter.write_part
    calls = []

    def failing(self, tables, sink):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated interruption")
        return real(self, tables, sink)

    monkeypatch.setattr(RunWriter, "write_part", failing)
    with pytest.raises(KeyboardInterrupt):
        generate_to_run(model, prompts, cfg, TOKENS, tmp_path / "cut", sampling=sampling, batch_size=1)
    monkeypatch.setattr(RunWriter, "write_part", real)
    assert not RunStore.open(tmp_path / "cut").complete
    generate_to_run(model, prompts, cfg, TOKENS, tmp_path / "cut", sampling=sampling, batch_size=1, resume=True)
    a = pd.read_parquet(tmp_path / "full" / "tokens.parquet")
    b = pd.read_parquet(tmp_path / "cut" / "tokens.parquet")
    pd.testing.assert_frame_equal(
        a.sort_values(["trace", "pos"]).reset_index(drop=True), b.sort_values(["trace", "pos"]).reset_index(drop=True)
    )


def test_cli_generate_then_replay_its_run(tmp_path):
    from typer.testing import CliRunner

    from memento_lens.cli import app

    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "generate",
            "--model",
            "random:tiny",
            "-p",
            "w1 <|block_start|> w2",
            "-p",
            "w3",
            "--mode",
            "restart",
            "--keep-delimiters",
            "--max-new-tokens",
            "8",
            "--out",
            str(tmp_path / "g"),
            "--threads",
            "1",
            "--temperature",
            "0.7",
            "--seed",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output
    gen = RunStore.open(tmp_path / "g", require_complete=True)
    assert gen.manifest.config["masking"]["restart_mode"] is True
    assert gen.manifest.config["sampling"]["temperature"] == 0.7
    res = runner.invoke(
        app,
        [
            "replay",
            "--traces",
            str(tmp_path / "g"),
            "--model",
            "random:tiny",
            "--mode",
            "restart",
            "--keep-delimiters",
            "--out",
            str(tmp_path / "r"),
            "--threads",
            "1",
            "--allow-truncated",
        ],
    )
    assert res.exit_code == 0, res.output
    rep = RunStore.open(tmp_path / "r", require_complete=True)
    pd.testing.assert_frame_equal(
        rep.read_table("tokens.parquet")[["trace", "pos", "token_id", "role"]],
        gen.read_table("tokens.parquet")[["trace", "pos", "token_id", "role"]],
    )


@pytest.mark.parametrize("defer", [False, True])
def test_restart_run_variants_match_dense_reference(model, tmp_path, defer):
    """Restart runs: `restart` = the recomputed memento K/V (dense with the restart visibility); `normal` = as
    first computed (block visible); with a deferred flush the whole memento was first computed with the block."""
    cfg = BlockMaskingConfig(mask_delimiters=False, restart_mode=True, keep_last_block_for_answer=defer)
    trs = traces(1, seed=9, n_blocks=3)
    replay_to_run(model, trs, cfg, TOKENS, tmp_path / "r", captures=[MementoKV()])
    kv = KVReader(tmp_path / "r")
    t = trs[0]
    sched = compute_schedule(t.token_ids, cfg, TOKENS, prompt_len=t.prompt_len)
    dense = dense_forward(model, torch.tensor([t.token_ids]), visibility_mask(sched))
    plain = dense_forward(model, torch.tensor([t.token_ids]), torch.ones(len(t), len(t), dtype=torch.bool).tril())
    rewound = {e.rewind_to for e in sched.evictions}
    assert rewound
    for span in sched.blocks:
        s, e = span.summary_start, span.summary_end
        k, _ = kv.get(KVKey(t.trace_id, 1, "restart", span.block))
        if s in rewound:
            assert torch.allclose(k, dense.keys[1][:, :, s : e + 1], atol=1e-5)
            kn, _ = kv.get(KVKey(t.trace_id, 1, "normal", span.block))
            assert kv.span(KVKey(t.trace_id, 1, "normal", span.block)) == (s, e + 1 if defer else e)
            if span.block == 0:  # nothing evicted before block 0's memento: first pass == plain causal
                assert torch.allclose(kn, plain.keys[1][:, :, s : s + kn.shape[2]], atol=1e-5)
