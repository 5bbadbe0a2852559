"""Bad trace files: replay JSONL, the three ingest formats (Memento JSON, vLLM JSONL, OpenMementos Parquet),
prompts files; token ids, UTF-8, structure, tokenizer coverage, empty inputs under --strict."""

from __future__ import annotations

import json

import pytest
from memento_lens.runtime.errors import InputFileError, MementoLensError, ModelError, OptionError

from .badinput_harness import BE, GOOD_IDS, SE, B, S, memento_obj, run_case, seg, write_jsonl

REPLAY = ["replay", "--model", "random:tiny", "--keep-delimiters", "--threads", "1"]


def _obj(**over):
    return {"trace": "t1", "token_ids": GOOD_IDS, "prompt_len": 1, **over}


REPLAY_LINES = [
    (_obj(token_ids=[0, 1, 3.7, 2]), InputFileError, "line 1", "token_ids", "3.7"),
    (_obj(token_ids=[0, 1, "w7", 2]), InputFileError, "line 1", "token_ids", "'w7'"),
    (_obj(token_ids=[0, 1, [7], 2]), InputFileError, "line 1", "token_ids"),
    (_obj(token_ids=[0, 1, True, 2]), InputFileError, "token_ids"),
    (_obj(token_ids=[0, -3, 2]), InputFileError, "token_ids", "negative"),
    (_obj(token_ids="0 1 2"), InputFileError, "token_ids", "str"),
    (_obj(token_ids=None), InputFileError, "token_ids"),
    (_obj(prompt_len=2.5), OptionError, "prompt_len"),
    (_obj(prompt_len="1"), OptionError, "prompt_len"),
    (_obj(prompt_len=99), OptionError, "prompt_len"),
    (_obj(prompt_len=-1), OptionError, "prompt_len"),
    ({"trace": "x"}, InputFileError, "line 1", "token_ids"),
    ([1, 2, 3], InputFileError, "line 1", "token_ids"),
    ("{not json", InputFileError, "line 1", "invalid JSON"),
    (_obj(token_ids=[0, 1, 7, 999]), MementoLensError, "t1", "token 3", "999"),  # outside random:tiny's vocab
    (_obj(token_ids=[0, 2, 7, 8]), MementoLensError, "t1", "token 1"),  # block_end with no open block
    (_obj(token_ids=[0, 1, 7, 1, 8, 2]), MementoLensError, "t1", "token 3"),  # nested block
    (_obj(token_ids=[0, 1, 7, 8]), MementoLensError, "t1", "never closed"),  # cut generation without the flag
    (_obj(token_ids=[0, 7, 8, 9, 10]), MementoLensError, "t1", "no memento blocks", "--mode vanilla"),
]


@pytest.mark.parametrize(
    "row,cls,culprits", [pytest.param(r[0], r[1], r[2:], id=str(i)) for i, r in enumerate(REPLAY_LINES)]
)
def test_replay_jsonl_rejects(cli, workdir, row, cls, culprits):
    path = write_jsonl(workdir / "t.jsonl", [row])
    run_case(cli, workdir, [*REPLAY, "--traces", path], cls, *culprits)


def test_replay_jsonl_duplicate_trace_id(cli, workdir):
    path = write_jsonl(workdir / "t.jsonl", [_obj(), _obj()])
    run_case(cli, workdir, [*REPLAY, "--traces", path], InputFileError, "line 2", "'t1'")


def test_replay_jsonl_empty(cli, workdir):
    (workdir / "t.jsonl").write_text("\n\n")
    run_case(cli, workdir, [*REPLAY, "--traces", workdir / "t.jsonl"], InputFileError, "t.jsonl", "no traces")


def test_replay_jsonl_not_utf8_names_byte_offset(cli, workdir):
    good = (json.dumps(_obj()) + "\n").encode()
    (workdir / "t.jsonl").write_bytes(good + b'{"trace": "\xc3\x28"}\n')
    run_case(
        cli, workdir, [*REPLAY, "--traces", workdir / "t.jsonl"], InputFileError, "t.jsonl", f"offset {len(good) + 11}"
    )


def test_replay_missing_traces_file(cli, workdir):
    run_case(cli, workdir, [*REPLAY, "--traces", workdir / "nope.jsonl"], InputFileError, "nope.jsonl")


def test_replay_of_an_approx_tokenized_run_names_the_vocabulary(cli, workdir):
    path = workdir / "m.json"
    path.write_text(json.dumps(memento_obj()))
    from typer.testing import CliRunner

    from memento_lens.cli import app

    assert CliRunner().invoke(app, ["ingest", str(path), "--out", str(workdir / "ing")]).exit_code == 0
    run_case(cli, workdir, [*REPLAY, "--traces", workdir / "ing"], ModelError, "approx", "vocabulary")


# -- prompts files -----------------------------------------------------------------------------------------
GEN = ["generate", "--model", "random:tiny", "--keep-delimiters", "--threads", "1", "--max-new-tokens", "2"]
PROMPTS = [
    (b'["w6", 3]', InputFileError, "prompt 1"),
    (b'[["w6"]]', InputFileError, "prompt 0"),
    (b"[[6, 7.5]]", InputFileError, "prompt 0[1]"),
    (b'[{"text": "w6"}]', InputFileError, "prompt 0"),
    (b"w6 \xff\n", InputFileError, "p.txt", "offset 3"),
]


@pytest.mark.parametrize(
    "data,cls,culprits", [pytest.param(r[0], r[1], r[2:], id=str(i)) for i, r in enumerate(PROMPTS)]
)
def test_prompts_file_rejects(cli, workdir, data, cls, culprits):
    (workdir / "p.txt").write_bytes(data)
    run_case(cli, workdir, [*GEN, "--prompts-file", workdir / "p.txt"], cls, *culprits)


def test_prompts_file_missing(cli, workdir):
    run_case(cli, workdir, [*GEN, "--prompts-file", workdir / "none.txt"], InputFileError, "--prompts-file")


# -- ingest: Memento JSON ---------------------------------------------------------------------------------
MEMENTO = [
    (memento_obj(segments=None), "segments"),
    (memento_obj(segments=["text"]), "segment 0"),
    (memento_obj(segments=[seg("chapter", 1, "a")]), "segment 0", "'chapter'"),
    (memento_obj(segments=[seg("block", 0, "a"), seg("summary", 0, "b")]), "block_idx", "1-based"),
    (memento_obj(segments=[seg("block", "one", "a"), seg("summary", 1, "b")]), "block_idx"),
    (memento_obj(segments=[seg("block", 1.5, "a"), seg("summary", 1, "b")]), "block_idx"),
    (memento_obj(segments=[seg("block", 1, "a"), seg("block", 1, "b"), seg("summary", 1, "c")]), "second block"),
    (memento_obj(segments=[seg("summary", 1, "b"), seg("block", 1, "a")]), "summary for block_idx 1"),
    (memento_obj(segments=[seg("block", 1, "a")]), "block_idx 1 has no summary"),
    (memento_obj(segments=[seg("block", 1, f"a {SE} b"), seg("summary", 1, "m")]), "literal token", SE),
    (memento_obj(segments=[seg("block", 1, f"a {B} b"), seg("summary", 1, "m")]), "literal token", B),
    (memento_obj(segments=[seg("block", 1, "a"), seg("summary", 1, f"m {BE}")]), "segment 1", BE),
    (memento_obj(segments=[seg("block", 1, "a"), seg("summary", 1, "m"), seg("answer", 0, f"x {S}")]), "segment 2"),
    (memento_obj(segments=[seg("block", 1, "a </think> b"), seg("summary", 1, "m")]), "</think>"),
    ([1, 2], "expected an object"),
]


@pytest.mark.parametrize("obj,culprits", [pytest.param(r[0], r[1:], id=str(i)) for i, r in enumerate(MEMENTO)])
def test_ingest_memento_json_strict_rejects(cli, workdir, obj, culprits):
    path = workdir / "m.json"
    path.write_text(json.dumps(obj) if not isinstance(obj, list) else json.dumps([obj]))
    run_case(cli, workdir, ["ingest", path, "--strict", "--out", workdir / "o"], InputFileError, "m.json", *culprits)


@pytest.mark.parametrize("content", ["", "[]", "\n\n"])
def test_ingest_strict_rejects_empty_input(cli, workdir, content):
    (workdir / "m.json").write_text(content)
    run_case(cli, workdir, ["ingest", workdir / "m.json", "--strict", "--out", workdir / "o"], InputFileError, "m.json")


def test_ingest_memento_json_not_utf8(cli, workdir):
    (workdir / "m.json").write_bytes(b'{"problem": "caf\xe9"}')
    run_case(
        cli, workdir, ["ingest", workdir / "m.json", "--out", workdir / "o"], InputFileError, "m.json", "offset 16"
    )


def test_ingest_unknown_extension(cli, workdir):
    (workdir / "t.txt").write_text("x")
    run_case(cli, workdir, ["ingest", workdir / "t.txt", "--out", workdir / "o"], MementoLensError, "t.txt", "--format")


def test_ingest_missing_file(cli, workdir):
    run_case(cli, workdir, ["ingest", workdir / "gone.json", "--out", workdir / "o"], InputFileError, "gone.json")


def test_ingest_real_text_through_the_toy_tokenizer(cli, workdir):
    obj = memento_obj(
        problem="What is the derivative of x squared?",
        segments=[seg("block", 1, "By the power rule the derivative is two x."), seg("summary", 1, "It is 2x.")],
    )
    (workdir / "m.json").write_text(json.dumps(obj))
    run_case(
        cli,
        workdir,
        ["ingest", workdir / "m.json", "--tokenizer", "toy", "--out", workdir / "o"],
        InputFileError,
        "<unk>",
        "hf:toy",
        "trace m",
        "--allow-unk",
    )


# -- ingest: vLLM JSONL ---------------------------------------------------------------------------------------
VLLM = [
    ({"prompt": "p"}, "no generated text"),
    ({"prompt": "p", "text": f"{B} a {BE}{S} m"}, "memento of block 0", "never closed"),
    ({"prompt": "p", "text": f"{B} a {BE}{S} m {SE}{B} b"}, "never closed"),
    ({"prompt": "p", "text": f"{SE} a"}, "no open memento"),
    ({"prompt": "p", "text": "x", "token_ids": [1, 2.5]}, "token_ids"),
    ({"prompt": "p", "text": "x", "token_ids": ["a"]}, "token_ids"),
    ({"prompt": "p", "text": "x", "prompt_token_ids": [[1]]}, "prompt_token_ids"),
    ("[1, 2]", "expected a JSON object"),
    ("{oops", "line 1", "invalid JSON"),
    ({"prompt": "p", "text": ""}, "empty response"),
]


@pytest.mark.parametrize("row,culprits", [pytest.param(r[0], r[1:], id=str(i)) for i, r in enumerate(VLLM)])
def test_ingest_vllm_strict_rejects(cli, workdir, row, culprits):
    path = write_jsonl(workdir / "v.jsonl", [row])
    run_case(cli, workdir, ["ingest", path, "--strict", "--out", workdir / "o"], InputFileError, "v.jsonl", *culprits)


def test_ingest_vllm_not_utf8_names_byte_offset(cli, workdir):
    first = (json.dumps({"prompt": "p", "text": f"{B} a {BE}{S} m {SE}"}) + "\n").encode()
    (workdir / "v.jsonl").write_bytes(first + b'{"prompt": "\xff"}\n')
    run_case(
        cli,
        workdir,
        ["ingest", workdir / "v.jsonl", "--out", workdir / "o"],
        InputFileError,
        "v.jsonl",
        f"offset {len(first) + 12}",
    )


# -- ingest: OpenMementos Parquet -----------------------------------------------------------------------------
def _parquet(path, rows):
    import pandas as pd

    pd.DataFrame(rows).to_parquet(path)
    return path


OPENMEMENTOS = [
    ([{"id": "r1", "problem": "q", "sentences": ["a", "b"], "blocks": [[0], [1]], "block_summaries": ["m"]}], "r1"),
    ([{"id": "r2", "problem": "q", "sentences": ["a"], "blocks": [["x"]], "block_summaries": ["m"]}], "r2", "block 0"),
    ([{"id": "r3", "problem": "q", "sentences": [f"a {B}"], "blocks": [[0]], "block_summaries": ["m"]}], "r3", B),
    ([{"id": "r4", "problem": "q", "sentences": ["a"], "blocks": [[0]], "block_summaries": [f"m {SE}"]}], "r4", SE),
    ([{"id": "r5", "problem": "q", "response": f"{B} a {BE}{S} m"}], "r5", "never closed"),
    ([{"id": "r6", "problem": "q", "response": f"{BE} a"}], "r6"),
]


@pytest.mark.parametrize("rows,culprits", [pytest.param(r[0], r[1:], id=str(i)) for i, r in enumerate(OPENMEMENTOS)])
def test_ingest_openmementos_strict_rejects(cli, workdir, rows, culprits):
    path = _parquet(workdir / "om.parquet", rows)
    run_case(
        cli, workdir, ["ingest", path, "--strict", "--out", workdir / "o"], InputFileError, "om.parquet", *culprits
    )


def test_ingest_parquet_without_needed_columns(cli, workdir):
    path = _parquet(workdir / "om.parquet", [{"id": "r", "text": "x"}])
    run_case(cli, workdir, ["ingest", path, "--out", workdir / "o"], MementoLensError, "om.parquet", "response")


def test_ingest_corrupt_parquet(cli, workdir):
    (workdir / "om.parquet").write_bytes(b"PAR1 not really")
    run_case(cli, workdir, ["ingest", workdir / "om.parquet", "--out", workdir / "o"], MementoLensError, "om.parquet")


@pytest.mark.parametrize("cmd", ["kv", "stats"])
def test_kv_and_stats_name_the_bad_file(cli, workdir, cmd):
    (workdir / "m.json").write_bytes(b"\xfe\xff")
    run_case(cli, workdir, [cmd, workdir / "m.json"], InputFileError, "m.json", "offset 0")


# -- the trace layer: document kinds, empty ingests, raw chain of thought, runs without traces ----------------
def _truncated(workdir):
    text = json.dumps(memento_obj(segments=[seg("block", 1, "w6 w7 " * 40), seg("summary", 1, "w8")]), indent=2)
    path = workdir / "m.json"
    path.write_text(text[: len(text) // 2])  # cut inside the block's text
    return path


@pytest.mark.parametrize("cmd", [["ingest", "--out", "o"], ["kv"], ["stats"]])
def test_a_truncated_json_document_is_one_error_naming_line_and_byte(cli, workdir, cmd):
    path = _truncated(workdir)
    out = run_case(
        cli, workdir, [cmd[0], path, *cmd[1:]], InputFileError, "m.json", "line ", "byte offset", "truncated"
    )
    assert "skipped" not in out.stderr


def test_vllm_format_on_a_json_document_names_the_document_kind(cli, workdir):
    path = workdir / "m.json"
    path.write_text(json.dumps(memento_obj(), indent=2))
    run_case(
        cli,
        workdir,
        ["ingest", path, "--format", "vllm-jsonl", "--out", workdir / "o"],
        InputFileError,
        "m.json",
        "one JSON document",
        "Memento JSON",
        "--format memento-json",
    )


@pytest.mark.parametrize("content", ["", "\n\n", "[]"])
def test_an_ingest_that_keeps_no_trace_is_an_error_and_writes_nothing(cli, workdir, content):
    (workdir / "m.json").write_text(content)
    run_case(
        cli, workdir, ["ingest", workdir / "m.json", "--out", workdir / "o"], InputFileError, "m.json", "no traces"
    )


def test_an_ingest_whose_every_row_is_skipped_names_the_first_reason(cli, workdir):
    bad = memento_obj(segments=[seg("summary", 1, "b"), seg("block", 1, "a")])
    path = write_jsonl(workdir / "m.jsonl", [bad, bad])
    run_case(
        cli,
        workdir,
        ["ingest", path, "--out", workdir / "o"],
        InputFileError,
        "m.jsonl",
        "no traces",
        "summary for block_idx 1",
        "1 more",
    )


@pytest.mark.parametrize("fmt", [[], ["--format", "vllm-jsonl"], ["--format", "memento-json"]])
def test_a_raw_chain_of_thought_file_is_named_as_such(cli, workdir, fmt):
    path = write_jsonl(workdir / "example_trace.jsonl", [{"task_id": "t1", "cot": "Let me think. 2+2 is 4."}])
    run_case(
        cli,
        workdir,
        ["ingest", path, *fmt, "--out", workdir / "o"],
        InputFileError,
        "example_trace.jsonl",
        "raw chain of thought",
        "segmentation pipeline",
    )


@pytest.mark.parametrize("cmd", [REPLAY, ["stats"]])
def test_a_run_without_traces_says_what_it_is(cli, workdir, cmd):
    from memento_lens.runtime.errors import RunDirError
    from memento_lens.runtime.rundir.store import RunStore

    store = RunStore.create(workdir / "probe", "passcode", {"seed": 0}, can_resume=False)
    with store:
        store.write_json("passcode_summary.json", {"summary": {}})
        store.mark_complete(rows=0)
    args = [*cmd, "--traces", workdir / "probe"] if cmd is REPLAY else [*cmd, workdir / "probe"]
    run_case(cli, workdir, args, RunDirError, "probe", "'passcode' run", "holds no traces")


@pytest.mark.parametrize("content", [b"", b"\n \n", b"[]"])
def test_an_empty_prompts_file_is_an_error_naming_it(cli, workdir, content):
    (workdir / "p.txt").write_bytes(content)
    run_case(cli, workdir, [*GEN, "--prompts-file", workdir / "p.txt"], InputFileError, "p.txt", "no prompts")


@pytest.mark.parametrize("model", ["random:tiny", "no/such/model"])  # checked before any model loads
def test_replay_of_a_bad_text_trace_file_names_it_before_loading_the_model(cli, workdir, model):
    bad = memento_obj(segments=[seg("summary", 1, "b"), seg("block", 1, "a")])
    path = workdir / "m.json"
    path.write_text(json.dumps(bad))
    args = [*REPLAY[:2], model, *REPLAY[3:], "--traces", path]
    run_case(cli, workdir, args, InputFileError, "m.json", "summary for block_idx 1")
    run_case(cli, workdir, [*args[:-1], _truncated(workdir)], InputFileError, "m.json", "truncated")
