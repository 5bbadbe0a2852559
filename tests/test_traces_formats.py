"""The trace layer's units: detection of every registered format, token-id and run readers, the re-iterable
TraceSource, the fast structure check (equal to compute_schedule), and the one chat-template rule."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from memento_lens.runtime.config import BlockMaskingConfig, MementoTokenIds
from memento_lens.runtime.schedule import compute_schedule
from memento_lens.runtime.traces import (
    FORMATS,
    IngestError,
    chat_prompt,
    detect_format,
    load_tokenizer,
    load_traces,
    needs_tokenizer,
)
from memento_lens.runtime.traces.load import structure_schedule

MEMENTO = {
    "problem": "q",
    "segments": [
        {"type": "block", "block_idx": 1, "text": "a b c"},
        {"type": "summary", "block_idx": 1, "text": "m"},
        {"type": "answer", "text": "x"},
    ],
}


def _write(path, text):
    path.write_text(text)
    return path


def test_every_format_is_detected_from_its_file(tmp_path):
    pd.DataFrame({"id": ["r"], "problem": ["q"], "response": ["<|block_start|>a<|block_end|>"]}).to_parquet(
        tmp_path / "om.parquet"
    )
    cases = {
        "om.parquet": "openmementos",
        "m.json": _write(tmp_path / "m.json", json.dumps(MEMENTO, indent=2)),
        "m.jsonl": _write(tmp_path / "m.jsonl", json.dumps(MEMENTO) + "\n"),
        "ids.jsonl": _write(tmp_path / "ids.jsonl", '{"trace": "t", "token_ids": [0, 1], "prompt_len": 1}\n'),
        "v.jsonl": _write(tmp_path / "v.jsonl", '{"prompt": "p", "text": "x", "token_ids": [1]}\n'),
    }
    expected = {
        "om.parquet": "openmementos",
        "m.json": "memento-json",
        "m.jsonl": "memento-json",
        "ids.jsonl": "token-ids",
        "v.jsonl": "vllm-jsonl",
    }
    for name in cases:
        assert detect_format(tmp_path / name) == expected[name], name
    assert needs_tokenizer(tmp_path / "m.json") and not needs_tokenizer(tmp_path / "ids.jsonl")
    assert set(expected.values()) | {"run"} <= set(FORMATS)


@pytest.mark.unit
def test_a_raw_chain_of_thought_file_is_refused_by_name(tmp_path):
    path = _write(tmp_path / "example_trace.jsonl", '{"task_id": "t1", "cot": "Let me think"}\n')
    with pytest.raises(IngestError, match="example_trace.jsonl: raw chain of thought"):
        load_traces(path)


def test_token_ids_and_run_directories_need_no_tokenizer(tmp_path):
    from typer.testing import CliRunner

    from memento_lens.cli import app

    path = _write(tmp_path / "ids.jsonl", '{"trace": "t", "token_ids": [0, 1, 7, 2, 3, 8, 4], "prompt_len": 1}\n')
    src = load_traces(path)
    (t,) = src.list()
    assert src.format == "token-ids" and src.tokens is None and t.token_ids == [0, 1, 7, 2, 3, 8, 4]
    assert isinstance(load_traces(path, arrays=True).list()[0].token_ids, np.ndarray)
    res = CliRunner().invoke(
        app, ["ingest", str(_write(tmp_path / "m.json", json.dumps(MEMENTO))), "--out", str(tmp_path / "run")]
    )
    assert res.exit_code == 0, res.output
    run = load_traces(tmp_path / "run")
    (rt,) = run.list()
    approx = load_tokenizer("approx")
    assert run.format == "run" and run.tokens == approx.ids and run.recorded_tokenizer["tokenizer"] == "approx"
    assert rt.token_ids == load_traces(tmp_path / "m.json", approx).list()[0].token_ids


@pytest.mark.unit
def test_a_source_is_read_again_per_iteration_with_a_fresh_report(tmp_path):
    bad = {"problem": "q", "segments": [{"type": "summary", "block_idx": 1, "text": "x"}]}
    path = _write(tmp_path / "m.jsonl", json.dumps(MEMENTO) + "\n" + json.dumps(bad) + "\n")
    src = load_traces(path)
    assert len(src.list()) == 1 and src.report.n_rows == 2 and src.report.n_skipped == 1
    assert len(src.list()) == 1 and src.report.n_rows == 2  # not 4: each pass has its own report
    with pytest.raises(IngestError, match="m.jsonl: trace m:1: segment 0: summary for block_idx 1"):
        load_traces(path, strict=True).list()


@pytest.mark.unit
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("keep", [0, 1])
def test_the_fast_structure_check_equals_compute_schedule(seed, keep):
    tokens = MementoTokenIds(block_start=1, block_end=2, summary_start=3, summary_end=4, im_start=5, assistant=6)
    rng = np.random.default_rng(seed)
    # well-formed blocks with random damage: dropped, doubled and stray delimiters
    ids = [9, 9]
    for _ in range(6):
        ids += [1, *[9] * int(rng.integers(0, 4)), 2, 3, *[9] * int(rng.integers(0, 3)), 4]
    ids = np.asarray(ids, dtype=np.int64)
    for _ in range(3):
        at = int(rng.integers(0, len(ids)))
        ids = np.insert(ids, at, int(rng.integers(1, 5))) if rng.random() < 0.5 else np.delete(ids, at)
    for cfg in (
        BlockMaskingConfig(mask_delimiters=False, keep_last_n_blocks=keep, require_assistant_section=False),
        BlockMaskingConfig(mask_delimiters=True, keep_last_n_blocks=keep, require_assistant_section=True),
    ):
        assert structure_schedule(ids, cfg, tokens, 2) == compute_schedule(ids.tolist(), cfg, tokens, prompt_len=2)


@pytest.mark.unit
def test_the_chat_template_has_one_owner():
    """Trace files and generation prompts render a problem through the same function."""
    from memento_lens.runtime.generate import encode_prompts
    from memento_lens.runtime.model import random_tokenizer
    from memento_lens.runtime.traces import HFTextTokenizer

    tok = random_tokenizer(48)
    assert chat_prompt(tok, "w1") is None  # no template: the caller's fallback
    assert HFTextTokenizer("t", tokenizer=tok).prompt_text("w1").startswith("<|im_start|>user\nw1")  # ChatML
    tok.chat_template = "{% for m in messages %}<bos> {{ m['content'] }}{% endfor %} w9"
    text = chat_prompt(tok, "w1 w2")
    assert text == "<bos> w1 w2 w9"
    assert HFTextTokenizer("t", tokenizer=tok).prompt_text("w1 w2") == text
    assert encode_prompts(tok, ["w1 w2"])[0] == tok.encode(text, add_special_tokens=False)
