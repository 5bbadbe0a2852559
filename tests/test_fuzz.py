"""Bad-input fuzzing: random token streams into replay, random and malformed files into ingestion.
Nothing may crash except with the documented clear errors."""

from __future__ import annotations

import json

from conftest import TOKENS, tiny_qwen3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memento_lens.analyses.ingest import IngestError, ingest_file
from memento_lens.runtime.config import BlockMaskingConfig, ConfigError
from memento_lens.runtime.replay import ReplayError, replay
from memento_lens.runtime.trace import Trace

_MODEL = tiny_qwen3(vocab_size=16, layers=1)
SPECIAL = ["<|block_start|>", "<|block_end|>", "<|summary_start|>", "<|summary_end|>", "<think>", "</think>"]


@given(
    ids=st.lists(st.integers(-2, 20), min_size=0, max_size=40),
    prompt_len=st.integers(0, 5),
    restart=st.booleans(),
    mask=st.booleans(),
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_replay_of_random_streams_fails_only_with_named_errors(ids, prompt_len, restart, mask):
    cfg = BlockMaskingConfig(mask_delimiters=mask, restart_mode=restart)
    try:
        trace = Trace("fuzz-1", ids, min(prompt_len, len(ids)))
        [res] = replay(_MODEL, [trace], cfg, TOKENS)
    except (ReplayError, ConfigError, ValueError) as exc:
        assert "fuzz-1" in str(exc)  # the error names the trace
        return
    assert res.trace.token_ids == ids and all(0 <= t < 16 for t in ids)


text_piece = st.one_of(st.sampled_from(SPECIAL), st.text(alphabet='ab \n{}":,[]', max_size=6))
segment = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["block", "summary", "answer", "bogus"]),
        "block_idx": st.one_of(st.integers(-1, 4), st.text(max_size=2), st.none()),
        "text": st.one_of(st.lists(text_piece, max_size=6).map("".join), st.none()),
    }
)


@given(
    objs=st.lists(
        st.one_of(
            st.fixed_dictionaries({"problem": st.text(max_size=10), "segments": st.lists(segment, max_size=5)}),
            st.fixed_dictionaries(
                {"prompt": st.text(max_size=10), "text": st.lists(text_piece, max_size=8).map("".join)}
            ),
            st.integers(),
            st.none(),
            st.text(max_size=5),
        ),
        max_size=5,
    ),
    as_jsonl=st.booleans(),
)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_ingestion_of_random_files_skips_and_counts(tmp_path_factory, objs, as_jsonl):
    path = tmp_path_factory.mktemp("fuzz") / ("traces.jsonl" if as_jsonl else "traces.json")
    path.write_text("\n".join(json.dumps(o) for o in objs) if as_jsonl else json.dumps(objs))
    try:
        result = ingest_file(path, "approx")
    except (IngestError, ConfigError, ValueError) as exc:
        assert str(path) in str(exc) or "traces" in str(exc)
        return
    report = result.report
    assert report.n_ingested + len(report.skipped) == report.n_rows
    for issue in report.skipped:
        assert issue.source == str(path)


def test_truncated_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text('[{"problem": "x", "segments": [{"type": "block", "block_idx": 1, "te')
    try:
        result = ingest_file(path, "approx")
    except (IngestError, ConfigError, ValueError) as exc:
        assert "cut.json" in str(exc)
    else:
        assert result.report.n_ingested == 0 and result.report.skipped
        assert "cut.json" in str(result.report.skipped[0])
