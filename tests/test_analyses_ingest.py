"""Ingestion of the shared Memento JSON examples, OpenMementos-shaped Parquet and vLLM JSONL; statistics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from memento_lens.analyses.ingest import (
    IngestError,
    detect_format,
    ingest_file,
    ingest_files,
    render_segments,
    write_run,
)
from memento_lens.analyses.stats import block_stats, blocks_from_tokens_table, domain_stats, trace_stats
from memento_lens.analyses.tokenization import ApproxTokenizer, HFTextTokenizer, load_tokenizer
from memento_lens.runtime.config import MEMENTO_TOKEN_STRINGS, THINK_END, THINK_START
from memento_lens.runtime.rundir.store import RunStore

DATA = Path("/work/shared/data")
if not DATA.exists():
    DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
EXAMPLES = [DATA / "memento_example_math.json", DATA / "memento_example_code.json"]
needs_examples = pytest.mark.skipif(not EXAMPLES[0].exists(), reason="shared example traces not present")


def char_tokenizer_dir(tmp_path: Path) -> Path:
    """A char-level HF tokenizer with the memento special tokens, saved locally (no network)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(32, 127)] + ["\n", "\t"]
    vocab = {"[UNK]": 0, **{c: i + 1 for i, c in enumerate(chars)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]")
    fast.add_special_tokens(
        {"additional_special_tokens": [*MEMENTO_TOKEN_STRINGS, THINK_START, THINK_END, "<|im_start|>", "<|im_end|>"]}
    )
    out = tmp_path / "tok"
    fast.save_pretrained(out)
    return out


@needs_examples
def test_memento_json_examples_approx():
    res = ingest_files(EXAMPLES, "approx")
    assert res.report.n_rows == 2 and res.report.n_ingested == 2 and res.report.n_skipped == 0
    tok = ApproxTokenizer()
    blocks = block_stats(res.traces, tok.ids)
    for path, trace in zip(EXAMPLES, res.traces):
        segs = json.loads(path.read_text())["segments"]
        want_b = [s["char_len"] for s in segs if s["type"] == "block"]
        want_m = [s["char_len"] for s in segs if s["type"] == "summary"]
        got = blocks[blocks["trace"] == trace.trace_id]
        assert got["block_chars"].tolist() == want_b and got["memento_chars"].tolist() == want_m
        assert got["block_tokens"].tolist() == [math.ceil(c / 4) for c in want_b]
        assert got["memento_tokens"].tolist() == [math.ceil(c / 4) for c in want_m]
        assert trace.meta["n_blocks"] == len(want_b)
    assert res.traces[0].meta["domain"] == "math" and res.traces[1].meta["domain"] == "code"
    ts = trace_stats(blocks)
    assert ts["n_blocks"].tolist() == [5, 4]
    ds = domain_stats(blocks).set_index("domain")
    assert set(ds.index) == {"math", "code", "all"} and ds.loc["all", "blocks"] == 9


@needs_examples
def test_memento_json_with_a_local_hf_tokenizer(tmp_path):
    tok = load_tokenizer(str(char_tokenizer_dir(tmp_path)))
    assert isinstance(tok, HFTextTokenizer)
    res = ingest_file(EXAMPLES[0], tok)
    assert res.report.n_ingested == 1
    segs = json.loads(EXAMPLES[0].read_text())["segments"]
    blocks = block_stats(res.traces, tok.ids)
    # Char-level vocabulary: content tokens == characters exactly.
    assert blocks["block_tokens"].tolist() == [s["char_len"] for s in segs if s["type"] == "block"]
    assert (blocks["ratio_tokens"] == blocks["ratio_chars"]).all()


def _row(response, domain="math", problem="What is 1+1?"):
    return {"problem": problem, "response": response, "domain": domain, "source": "synthetic", "difficulty": 3}


def test_openmementos_parquet_with_malformed_rows(tmp_path):
    good = render_segments(["aaaa bbbb cccc dddd", "eeee ffff"], ["m1", "m2 m2"], "42")
    bad_end = "<think>" + "<|block_end|>" + "x" * 8 + "</think>"  # block_end with no open block
    bad_sum = "<think><|block_start|>abcd<|block_end|>zz<|summary_end|></think>"  # summary_end with no memento
    rows = [_row(good), _row(None), _row(bad_end), _row(good, "code"), _row(bad_sum, "science"), _row("")]
    path = tmp_path / "train-00000.parquet"
    pd.DataFrame(rows).to_parquet(path)
    assert detect_format(path) == "openmementos"
    res = ingest_file(path, "approx")
    rep = res.report
    assert (rep.n_rows, rep.n_ingested, rep.n_skipped) == (6, 2, 4)
    skipped = {i.trace: i for i in rep.skipped}
    assert set(skipped) == {"train-00000:1", "train-00000:2", "train-00000:4", "train-00000:5"}
    prompt_len = res.traces[0].prompt_len
    # <think> is token 0 of the response, <|block_end|> token 1.
    assert skipped["train-00000:2"].position == prompt_len + 1
    assert "no open block" in skipped["train-00000:2"].message
    assert "no open memento" in skipped["train-00000:4"].message
    assert skipped["train-00000:1"].position is None
    assert "train-00000:2" in str(skipped["train-00000:2"])
    assert [t.meta["domain"] for t in res.traces] == ["math", "code"]
    assert res.traces[0].meta["block_chars"] == [19, 9] and res.traces[0].meta["memento_chars"] == [2, 5]
    with pytest.raises(IngestError, match=r"train-00000:1"):
        ingest_file(path, "approx", strict=True)


def test_openmementos_full_config_renders_from_sentences(tmp_path):
    rows = [
        {
            "problem": "p",
            "response": None,
            "domain": "math",
            "source": "s",
            "difficulty": 1,
            "sentences": ["One.", "Two.", "Three.", "Four."],
            "blocks": [[0, 1], [2, 3]],
            "block_summaries": ["S1", "S2"],
        },
        {
            "problem": "p",
            "response": None,
            "domain": "math",
            "source": "s",
            "difficulty": 1,
            "sentences": ["One."],
            "blocks": [[0, 0]],
            "block_summaries": ["S1", "extra"],
        },
    ]
    path = tmp_path / "full.parquet"
    pd.DataFrame(rows).to_parquet(path)
    res = ingest_file(path, "approx")
    assert res.report.n_ingested == 1 and res.report.n_skipped == 1
    assert res.traces[0].meta["block_chars"] == [len("One. Two."), len("Three. Four.")]
    assert "block_summaries" in res.report.skipped[0].message


def test_vllm_jsonl(tmp_path):
    text = render_segments(["abc def"], ["a"], "done")
    lines = [
        json.dumps({"request_id": "r0", "prompt": "<|im_start|>user\nq<|im_end|>\n", "text": text}),
        "{not json",
        json.dumps({"request_id": "r2", "prompt": "q", "outputs": [{"text": text}]}),
        json.dumps({"request_id": "r3", "prompt": "q"}),
    ]
    path = tmp_path / "out.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert detect_format(path) == "vllm-jsonl"
    res = ingest_file(path, "approx")
    assert [t.trace_id for t in res.traces] == ["r0", "r2"]
    assert res.report.n_skipped == 2
    msgs = " | ".join(str(i) for i in res.report.skipped)
    assert "invalid JSON" in msgs and "r3" in msgs


def test_vllm_token_ids_are_used_with_a_real_tokenizer(tmp_path):
    tok = load_tokenizer(str(char_tokenizer_dir(tmp_path)))
    text = render_segments(["abc"], ["a"], "x")
    ids = tok.encode(text).tolist()
    path = tmp_path / "ids.jsonl"
    path.write_text(
        json.dumps(
            {"request_id": "r", "prompt": "qq", "prompt_token_ids": [5, 6, 7], "text": "ignored", "token_ids": ids}
        )
        + "\n"
    )
    res = ingest_file(path, tok)
    t = res.traces[0]
    assert t.prompt_len == 3 and t.token_ids == [5, 6, 7] + ids


@needs_examples
def test_write_run_follows_the_contract(tmp_path):
    res = ingest_files(EXAMPLES, "approx", keep_text=True)
    store = write_run(tmp_path / "run", res.traces, "approx", spec="qwen3-8b", report=res.report)
    run = RunStore.open(tmp_path / "run", require_complete=True)
    traces = run.read_table("traces.parquet")
    assert {"trace", "n_tokens", "prompt_len", "n_blocks", "mode", "source"} <= set(traces.columns)
    assert traces["n_blocks"].tolist() == [5, 4]
    tokens = run.read_table("tokens.parquet")
    assert list(tokens.columns) == ["trace", "pos", "token_id", "token", "role", "block"]
    assert len(tokens) == traces["n_tokens"].sum()
    math_tok = tokens[tokens["trace"] == "memento_example_math"]
    assert "".join(math_tok["token"]).endswith(json.loads(EXAMPLES[0].read_text())["segments"][-1]["text"])
    assert set(tokens["role"]) == {"prompt", "block", "delimiter", "memento", "answer"}
    events = run.read_table("events.parquet")
    assert (events["kind"] == "compact").sum() == 9
    occ = run.read_table("occupancy.parquet")
    assert set(occ["mode"]) == {"vanilla", "memento"}
    assert (occ["bytes"] == occ["tokens"] * 147456).all()
    # Block stats from the run's tokens table equal those from the traces.
    from_run = blocks_from_tokens_table(tokens, traces)
    direct = block_stats(res.traces, ApproxTokenizer().ids)
    assert from_run["block_tokens"].tolist() == direct["block_tokens"].tolist()
    assert from_run["domain"].tolist() == direct["domain"].tolist()
    assert store.read_json("ingest_report.json")["n_ingested"] == 2


def test_toy_tokenizer_vllm_jsonl(tmp_path):
    from memento_lens.runtime.toy.task import TOKEN_TO_ID

    text = "<|block_start|> 3 1 4 1 5 <|block_end|> <|summary_start|> 0 1 4 <|summary_end|> <eos>"
    path = tmp_path / "toy.jsonl"
    path.write_text(json.dumps({"request_id": "toy0", "prompt": "<bos>", "text": text}) + "\n")
    tok = load_tokenizer("toy")
    res = ingest_file(path, tok)
    t = res.traces[0]
    assert t.prompt_len == 1 and t.token_ids[:3] == [
        TOKEN_TO_ID["<bos>"],
        TOKEN_TO_ID["<|block_start|>"],
        TOKEN_TO_ID["3"],
    ]
    b = block_stats(res.traces, tok.ids)
    assert b["block_tokens"].tolist() == [5] and b["memento_tokens"].tolist() == [3]


def test_unreadable_and_foreign_files(tmp_path):
    from memento_lens.runtime.config import ConfigError

    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(ConfigError, match="broken.parquet: unreadable Parquet"):
        ingest_file(bad, "approx")
    other = tmp_path / "other.parquet"
    pd.DataFrame({"x": [1]}).to_parquet(other)
    with pytest.raises(ConfigError, match="not an OpenMementos file"):
        ingest_file(other, "approx")
    with pytest.raises(ConfigError, match="unknown trace file type"):
        ingest_file(tmp_path / "x.txt" if (tmp_path / "x.txt").write_text("x") else None, "approx")
