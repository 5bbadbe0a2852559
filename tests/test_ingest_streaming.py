"""``write_run`` streams its tables (row groups as traces arrive, columns framed many traces at a time):
the tables equal those of the per-trace contract builder, whatever the chunk size, and the CLI's two
streaming passes (fingerprint, then tables) write the same run as ``write_run`` over a trace list."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from memento_lens.analyses.ingest import _token_strings, default_configs, fast_schedule, ingest_files, write_run
from memento_lens.analyses.kv import account_trace, resolve_spec
from memento_lens.analyses.tokenization import load_tokenizer
from memento_lens.runtime.config import BlockMaskingConfig
from memento_lens.runtime.rundir import schema
from memento_lens.runtime.rundir.store import RunStore
from memento_lens.runtime.rundir.writer import trace_tables
from typer.testing import CliRunner

from memento_lens.cli import app


def _traces_file(path: Path, n: int = 12) -> Path:
    """Memento JSON lines of varied length and domain, plus one bad row (skipped and reported)."""
    rng = np.random.default_rng(3)
    lines = []
    for i in range(n):
        segs = []
        for b in range(1, int(rng.integers(1, 5)) + 1):
            segs.append({"type": "block", "block_idx": b, "text": f"step {b} of {i} " * int(rng.integers(1, 30))})
            segs.append({"type": "summary", "block_idx": b, "text": f"m{b} " * int(rng.integers(1, 6))})
        segs.append({"type": "answer", "text": f"answer {i}"})
        obj = {"id": f"t{i}", "problem": f"problem {i} " * (i % 3 + 1), "segments": segs}
        if i % 3:
            obj["domain"] = ["math", "code"][i % 2]
        lines.append(json.dumps(obj))
    lines.insert(4, json.dumps({"id": "bad", "segments": [{"type": "summary", "block_idx": 1, "text": "x"}]}))
    path.write_text("\n".join(lines) + "\n")
    return path


def _expected(traces, tok, config, spec) -> dict[str, pd.DataFrame]:
    """The reference: one contract frame per trace (rundir.writer.trace_tables), concatenated; occupancy
    row by row from account_trace (vanilla, then the config's mode)."""
    parts = []
    for t in traces:
        ids = np.asarray(t.token_ids, dtype=np.int64)
        sched = fast_schedule(ids, config, tok.ids, prompt_len=t.prompt_len)
        parts.append(
            trace_tables(
                t,
                sched,
                tok.ids,
                config.mode,
                str(t.meta["source_file"]),
                0,
                token_strings=_token_strings(t, ids, tok),
                trace_columns={"domain": str(t.meta.get("domain", ""))},
            )
        )
    out = {name: pd.concat([p[name] for p in parts], ignore_index=True) for name in ("traces", "tokens", "events")}
    configs = {"vanilla": BlockMaskingConfig.vanilla(config.mask_delimiters), config.mode: config}
    occ = []
    for t in traces:
        for o in account_trace(t, tok.ids, configs, spec).values():
            for step, held in enumerate(o.tokens.tolist()):
                occ.append((t.trace_id, o.mode, step, held, held * spec.bytes_per_token))
    out["occupancy"] = pd.DataFrame(occ, columns=["trace", "mode", "step", "tokens", "bytes"])
    return out


@pytest.mark.parametrize("chunk_tokens", [1, 300, 1 << 20])
def test_streamed_tables_equal_the_per_trace_builder(tmp_path, chunk_tokens):
    src = _traces_file(tmp_path / "traces.jsonl")
    tok = load_tokenizer("approx")
    res = ingest_files([src], tok, keep_text=True)
    assert len(res.traces) == 12 and res.report.n_skipped == 1
    config, spec = default_configs()["memento"], resolve_spec("qwen3-8b")
    write_run(tmp_path / "run", res.traces, tok, config=config, spec=spec, chunk_tokens=chunk_tokens)
    run = RunStore.open(tmp_path / "run", require_complete=True)
    expected = _expected(res.traces, tok, config, spec)
    for name, table in (("traces", schema.TRACES), ("tokens", schema.TOKENS), ("events", schema.EVENTS)):
        pd.testing.assert_frame_equal(run.read_table(table), table.frame(expected[name]), check_exact=True)
    occ = run.read_table(schema.OCCUPANCY)
    assert len(occ) == 2 * len(expected["tokens"])
    pd.testing.assert_frame_equal(
        occ.astype({"trace": object, "mode": object}),
        expected["occupancy"].astype({"trace": object, "mode": object}),
        check_exact=True,
    )
    groups = pq.ParquetFile(tmp_path / "run" / "tokens.parquet").metadata.num_row_groups
    assert groups == (12 if chunk_tokens == 1 else 1 if chunk_tokens > 10_000 else groups)
    if chunk_tokens == 300:
        assert groups > 1
    meta = run.read_json("traces_meta.json")
    assert sorted(meta) == sorted(t.trace_id for t in res.traces)
    assert run.manifest.info["n_traces"] == 12


def test_cli_two_passes_write_the_same_run_as_a_trace_list(tmp_path):
    src = _traces_file(tmp_path / "traces.jsonl")
    out = CliRunner().invoke(app, ["ingest", str(src), "--out", str(tmp_path / "cli")])
    assert out.exit_code == 0, out.output
    assert "(12 traces)" in out.output
    res = ingest_files([src], "approx", keep_text=True)
    config = BlockMaskingConfig(mask_delimiters=False, keep_last_n_blocks=0, require_assistant_section=False)
    write_run(tmp_path / "lib", res.traces, "approx", config=config, report=res.report, spec="qwen3-8b")
    cli, lib = RunStore.open(tmp_path / "cli"), RunStore.open(tmp_path / "lib")
    assert cli.manifest.config == lib.manifest.config  # the fingerprint of the first pass
    for table in schema.TRACE_TABLES:
        pd.testing.assert_frame_equal(cli.read_table(table), lib.read_table(table), check_exact=True)
    for name in ("ingest_report.json", "traces_meta.json"):
        assert cli.read_json(name) == lib.read_json(name)
    assert cli.read_json("ingest_report.json")["n_skipped"] == 1


def test_a_failed_stream_leaves_no_table_and_no_run(tmp_path):
    src = _traces_file(tmp_path / "traces.jsonl")
    res = ingest_files([src], "approx", keep_text=True)

    def broken():
        yield from res.traces[:5]
        raise RuntimeError("reader died")

    fp = {"n": 12, "sha256": "x"}
    with pytest.raises(RuntimeError, match="reader died"):
        write_run(tmp_path / "run", broken(), "approx", fingerprint=fp, chunk_tokens=1)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
    assert not list(tmp_path.glob("**/*.ml-tmp"))


@pytest.mark.parametrize(
    "text,expected",
    [
        # JSON lines: blank, CRLF, a bad line (one row error), a list, a scalar
        ('{"a": 1}\n\n{"b": 2}\n{not json\r\n  \n[1, 2]\n3\n', [{"a": 1}, {"b": 2}, ("error", "t:3"), [1, 2], 3]),
        ('{"a": 1}\n', [{"a": 1}]),
        ('{\n  "a": 1\n}\n', [{"a": 1}]),  # pretty-printed: one document
        ('[{"a": 1}, {"b": 2}]', [{"a": 1}, {"b": 2}]),  # a list on one line: its items
        ('[\n {"a": 1},\n {"b": 2}\n]\n', [{"a": 1}, {"b": 2}]),
        ("", []),
        ("\n \n", []),
        ('{"a": "x\u2028y"}\n{"b": 2}', [{"a": "x\u2028y"}, {"b": 2}]),  # lines end at \n only
    ],
)
def test_json_values_reads_json_lines_and_documents(tmp_path, text, expected):
    from memento_lens.runtime.traces.base import RowError, json_values

    path = tmp_path / "t.jsonl"
    path.write_text(text, encoding="utf-8")
    got = [("error", x.trace) if isinstance(x, RowError) else x for x in json_values(path)]
    assert got == expected


@pytest.mark.parametrize(
    "text,culprits",
    [
        ('{not json\n{"a": 1}\n', ["line 1", "column 2"]),  # neither JSON lines nor one document
        ('{\n  "segments": [\n    {"type": "block",', ["line 3", "truncated"]),  # a document cut short
    ],
)
def test_a_file_neither_json_lines_nor_a_document_is_one_error_naming_where(tmp_path, text, culprits):
    from memento_lens.runtime.traces import IngestError
    from memento_lens.runtime.traces.base import json_values

    path = tmp_path / "t.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(IngestError) as err:
        list(json_values(path))
    for c in ["t.json", "byte offset", *culprits]:
        assert c in str(err.value)


def test_json_values_names_the_byte_offset_of_bad_utf8(tmp_path):
    from memento_lens.runtime.errors import InputFileError
    from memento_lens.runtime.traces.base import json_values

    path = tmp_path / "t.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": "\xff"}\n')
    with pytest.raises(InputFileError, match=r"byte 0xff at byte offset 16"):
        list(json_values(path))


def test_an_input_that_changes_between_the_passes_is_refused_and_nothing_is_written(tmp_path):
    from memento_lens.analyses.ingest import IngestReport, iter_ingest_files, traces_fingerprint
    from memento_lens.runtime.errors import InputFileError

    src = _traces_file(tmp_path / "traces.jsonl")
    fp = traces_fingerprint(iter_ingest_files([src], "approx", IngestReport()))
    _traces_file(src, n=11)  # rewritten between the fingerprint pass and the table pass
    with pytest.raises(InputFileError, match=r"traces\.jsonl: traces changed while being ingested \(12 .* 11 "):
        write_run(tmp_path / "run", iter_ingest_files([src], "approx", IngestReport()), "approx", fingerprint=fp)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
