"""Seams of the one trace layer: the same trace file gives the same token ids through ``ingest`` -> ``replay``,
through ``replay --traces FILE`` directly and through the passcode task (outside the inserted passcode span);
and a format registered from outside the package reaches load_traces, ingest and replay."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from memento_lens.runtime.config import MEMENTO_TOKEN_STRINGS, THINK_END, THINK_START
from memento_lens.runtime.rundir.reader import open_run
from memento_lens.runtime.traces import (
    FORMATS,
    FileHead,
    RawTrace,
    TraceFormat,
    load_traces,
    register_format,
    render_segments,
    unregister_format,
)
from typer.testing import CliRunner

from memento_lens.cli import app

CHAT = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen3 over a char-level tokenizer with the memento tokens and a chat template, saved as a
    local checkpoint (what ``--model DIR`` and ``--tokenizer DIR`` load)."""
    from memento_lens.runtime.model import random_causal_lm
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {"[UNK]": 0, **{c: i + 1 for i, c in enumerate(chars)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]")
    tok.add_special_tokens(
        {"additional_special_tokens": [*MEMENTO_TOKEN_STRINGS, THINK_START, THINK_END, "<|im_start|>", "<|im_end|>"]}
    )
    tok.chat_template = CHAT
    model = random_causal_lm(vocab_size=len(tok), layers=1, hidden=32, mlp=32, heads=2, kv_heads=1)
    out = tmp_path_factory.mktemp("model")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _memento_json(path: Path) -> Path:
    segs = []
    for b in range(1, 4):
        segs += [
            {"type": "block", "block_idx": b, "text": f"step {b}: add {b} and {b}."},
            {"type": "summary", "block_idx": b, "text": f"got {2 * b}"},
        ]
    path.write_text(json.dumps({"problem": "What is 1+1?", "segments": [*segs, {"type": "answer", "text": "2"}]}))
    return path


def _cli(args) -> None:
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, (res.output, res.exception)


def _run_ids(run: Path) -> tuple[list[int], int]:
    r = open_run(run)
    toks = r.table("tokens", columns=["trace", "pos", "token_id"]).sort_values("pos")
    (prompt_len,) = r.table("traces")["prompt_len"].tolist()
    return toks["token_id"].tolist(), int(prompt_len)


REPLAY = ["replay", "--keep-delimiters", "--threads", "1", "--layers", "0"]


def test_ingest_replay_and_the_passcode_task_see_the_same_token_ids(model_dir, tmp_path):
    from memento_lens.probes.real import PASSCODE_PREFIX, PASSCODE_SUFFIX, TEMPLATE_PASSCODE, TracePasscodeTask, _encode
    from memento_lens.runtime.model import load_model

    src = _memento_json(tmp_path / "m.json")
    _cli(["ingest", src, "--tokenizer", model_dir, "--out", tmp_path / "ing"])
    _cli([*REPLAY, "--traces", tmp_path / "ing", "--model", model_dir, "--out", tmp_path / "rep"])
    _cli([*REPLAY, "--traces", src, "--model", model_dir, "--out", tmp_path / "direct"])
    ingested, ingested_pl = _run_ids(tmp_path / "ing")
    replayed, replayed_pl = _run_ids(tmp_path / "rep")
    direct, direct_pl = _run_ids(tmp_path / "direct")
    assert ingested == replayed == direct and ingested_pl == replayed_pl == direct_pl

    lm = load_model(str(model_dir))
    task = TracePasscodeTask(str(src), lm.tokenizer, lm.require_tokens(), target=1)
    pt = task.trace
    ids = pt.token_ids.tolist()
    chat = "<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n"  # the chat template, applied once
    assert ids[: pt.prompt_len] == lm.tokenizer.encode(chat, add_special_tokens=False)
    assert pt.prompt_len == ingested_pl and ids[: pt.prompt_len] == ingested[:ingested_pl]
    inserted = len(_encode(lm.tokenizer, PASSCODE_PREFIX + TEMPLATE_PASSCODE + PASSCODE_SUFFIX))
    at = int(pt.passcode_slot[0]) - len(_encode(lm.tokenizer, PASSCODE_PREFIX))
    assert ids[at - 1] == task.tokens.block_start and pt.schedule.blocks[1].start == at - 1  # start of block 1
    assert ids[:at] + ids[at + inserted :] == ingested  # outside the passcode span: the very same ids
    assert ids[at : at + inserted] == _encode(lm.tokenizer, PASSCODE_PREFIX + TEMPLATE_PASSCODE + PASSCODE_SUFFIX)


class PipeSeparated(TraceFormat):
    """A format defined outside the package: ``problem | block | memento`` per line (``.psv``)."""

    name = "test-psv"
    help = "problem | block | memento, one trace per line"

    @classmethod
    def detect(cls, head: FileHead) -> bool:
        return head.name.endswith(".psv")

    def read(self) -> Iterator[RawTrace]:
        for i, line in enumerate(self.path.read_text().splitlines()):
            problem, block, memento = (p.strip() for p in line.split("|"))
            response = render_segments([block], [memento], "done")
            yield RawTrace(f"psv-{i}", "", response, {"format": self.name}, problem=problem)


@pytest.fixture
def psv_format():
    register_format(PipeSeparated)  # the one registry line a new format needs
    try:
        yield PipeSeparated
    finally:
        unregister_format(PipeSeparated.name)


def test_a_new_format_is_one_class_and_one_registration(psv_format, model_dir, tmp_path):
    from memento_lens.runtime.model import load_model

    src = tmp_path / "t.psv"
    src.write_text("What is 2+2? | two and two make four. | four\n")
    lm = load_model(str(model_dir))
    source = load_traces(src, lm.tokenizer, strict=True)
    (trace,) = source.list()
    assert source.format == "test-psv" and trace.trace_id == "psv-0" and trace.meta["n_blocks"] == 1
    _cli(["ingest", src, "--tokenizer", model_dir, "--out", tmp_path / "ing"])
    _cli([*REPLAY, "--traces", src, "--model", model_dir, "--out", tmp_path / "rep"])
    assert _run_ids(tmp_path / "ing") == _run_ids(tmp_path / "rep") == (list(trace.token_ids), trace.prompt_len)
    assert np.array_equal(np.asarray(trace.token_ids), load_traces(src, lm.tokenizer).list()[0].token_ids)


def test_unregistered_the_format_is_gone(tmp_path):
    assert "test-psv" not in FORMATS
    from memento_lens.runtime.config import ConfigError

    (tmp_path / "t.psv").write_text("q | b | m\n")
    with pytest.raises(ConfigError, match="unknown trace file type"):
        load_traces(tmp_path / "t.psv")
