"""The Python API raises the same errors as the CLI, before anything is written."""

from __future__ import annotations

import pytest
from memento_lens.runtime.errors import ConfigError, InputFileError, ModelError, OptionError, OutputError

from .badinput_harness import GOOD_IDS, snapshot


@pytest.fixture(scope="module")
def tiny():
    from memento_lens.runtime.model import load_model

    return load_model("random:tiny")


def _cfg():
    from memento_lens.runtime.config import BlockMaskingConfig

    return BlockMaskingConfig(mask_delimiters=False, require_assistant_section=False)


def _trace(tid="t", ids=GOOD_IDS):
    from memento_lens.runtime.trace import Trace

    return Trace(tid, list(ids), 1)


CASES = {
    "replay_to_run batch_size 0": (
        lambda lm, out: __import__("memento_lens.runtime.runs", fromlist=["x"]).replay_to_run(
            lm.model, [_trace()], _cfg(), lm.tokens, out, batch_size=0
        ),
        OptionError,
        "--batch-size",
    ),
    "replay_to_run duplicate ids": (
        lambda lm, out: __import__("memento_lens.runtime.runs", fromlist=["x"]).replay_to_run(
            lm.model, [_trace(), _trace()], _cfg(), lm.tokens, out
        ),
        InputFileError,
        "'t'",
    ),
    "replay_to_run no traces": (
        lambda lm, out: __import__("memento_lens.runtime.runs", fromlist=["x"]).replay_to_run(
            lm.model, [], _cfg(), lm.tokens, out
        ),
        OptionError,
        "no traces",
    ),
    "replay_to_run layer 7": (
        lambda lm, out: __import__("memento_lens.runtime.runs", fromlist=["x"]).replay_to_run(
            lm.model,
            [_trace()],
            _cfg(),
            lm.tokens,
            out,
            captures=__import__("memento_lens.runtime.capture", fromlist=["x"]).default_captures([7]),
        ),
        OptionError,
        "7",
    ),
    "generate_to_run no prompts": (
        lambda lm, out: __import__("memento_lens.runtime.runs", fromlist=["x"]).generate_to_run(
            lm.model, [], _cfg(), lm.tokens, out
        ),
        OptionError,
        "no prompts",
    ),
    "replay batch_size -1": (
        lambda lm, out: __import__("memento_lens.runtime.replay", fromlist=["x"]).replay(
            lm.model, [_trace()], _cfg(), lm.tokens, batch_size=-1
        ),
        OptionError,
        "batch_size",
    ),
    "trace prompt_len float": (lambda lm, out: _trace_bad_prompt(), InputFileError, "prompt_len"),
    "sampling top_k -1": (
        lambda lm, out: __import__("memento_lens.runtime.sampling", fromlist=["x"]).SamplingConfig(top_k=-1),
        OptionError,
        "--top-k",
    ),
    "load_model device bogus": (
        lambda lm, out: __import__("memento_lens.runtime.model", fromlist=["x"]).load_model(
            "random:tiny", device="bogus"
        ),
        OptionError,
        "bogus",
    ),
    "load_model dtype int4": (
        lambda lm, out: __import__("memento_lens.runtime.model", fromlist=["x"]).load_model(
            "random:tiny", dtype="int4"
        ),
        ConfigError,
        "int4",
    ),
    "load_model missing dir": (
        lambda lm, out: __import__("memento_lens.runtime.model", fromlist=["x"]).load_model(out.parent / "nomodel"),
        ModelError,
        "nomodel",
    ),
    "masking config keep True": (
        lambda lm, out: __import__("memento_lens.runtime.config", fromlist=["x"]).BlockMaskingConfig(
            mask_delimiters=False, keep_last_n_blocks=True
        ),
        ConfigError,
        "keep_last_n_blocks",
    ),
}


def _trace_bad_prompt():
    from memento_lens.runtime.trace import Trace

    return Trace("t", [0, 1, 2], 1.5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_library_raises_the_cli_errors(tiny, tmp_path, name):
    fn, cls, culprit = CASES[name]
    out = tmp_path / "run"
    before = snapshot(tmp_path)
    with pytest.raises(cls) as info:
        fn(tiny, out)
    assert culprit in str(info.value)
    assert snapshot(tmp_path) == before


def test_library_output_dir_that_is_a_file(tiny, tmp_path):
    from memento_lens.runtime.runs import replay_to_run

    (tmp_path / "run").write_text("mine")
    with pytest.raises(OutputError, match="existing file"):
        replay_to_run(tiny.model, [_trace()], _cfg(), tiny.tokens, tmp_path / "run")
    assert (tmp_path / "run").read_text() == "mine"


def test_library_ingest_strict_empty(tmp_path):
    from memento_lens.analyses.ingest import ingest_file

    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(InputFileError, match="e.jsonl"):
        ingest_file(tmp_path / "e.jsonl", strict=True)
