"""CLI: real pretrained models (``mementify``, ``presets``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .errors import user_errors


def mementify_cmd(
    model: str = typer.Option(
        "smollm2-135m", "--model", help="A real preset (smollm2-135m) or a local HF checkpoint directory."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Checkpoint directory to write (then: --model DIR anywhere)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16 | float16 (weights as saved)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the N(0, 0.01) noise on the new embeddings."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier mementified checkpoint at --out."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole report (also saved as mementify.json)."),
) -> None:
    """Add the memento tokens (paper's initialisation) and a chat template; save a checkpoint directory."""
    with user_errors():
        from memento_lens.runtime.mementify import MEMENTIFY_FILE, mementify

        report = mementify(model, out, seed=seed, dtype=dtype, overwrite=overwrite)
        if as_json:
            print(json.dumps(report.to_dict(), indent=2))
            return
        added = ", ".join(f"{t}={i}" for t, i in report.added_tokens.items()) or "none (the vocabulary had them)"
        print(f"mementified {report.source} -> {report.out} ({report.seconds:.1f} s, {report.dtype})")
        print(f"added tokens: {added}; vocabulary {report.vocab_before} -> {report.vocab_after}")
        print(f"chat template: {report.chat_template}; full report: {Path(report.out) / MEMENTIFY_FILE}")


def presets_cmd(
    convert: Optional[str] = typer.Option(
        None, "--convert", help="Convert this model preset now (otherwise it converts on first use)."
    ),
) -> None:
    """List the real presets, whether their packages are installed, and the cache directory."""
    with user_errors():
        import importlib.util

        from memento_lens.runtime.presets import (
            CACHE_ENV,
            MODEL_PRESETS,
            TOKENIZER_PRESETS,
            cache_dir,
            resolve_model,
        )

        if convert is not None:
            print(resolve_model(convert, log=lambda m: print(m)))
            return
        out = {"cache": str(cache_dir()), "cache_env": CACHE_ENV, "models": {}, "tokenizers": {}}
        for name, p in MODEL_PRESETS.items():
            out["models"][name] = {
                "package": p.package,
                "installed": importlib.util.find_spec(p.module) is not None,
                "what": p.description,
                "install": p.install_hint(),
            }
        for name, p in TOKENIZER_PRESETS.items():
            out["tokenizers"][name] = {
                "package": p.package,
                "installed": importlib.util.find_spec(p.module) is not None,
                "what": p.description,
                "install": p.install_hint(),
            }
        print(json.dumps(out, indent=2))


def token_counts_cmd(
    files: list[Path] = typer.Argument(..., help="Trace files (OpenMementos .parquet, Memento .json, vLLM .jsonl)."),
    exact: str = typer.Option("qwen3", "--tokenizer", help="The exact tokenizer: qwen3 or a local directory."),
    approx: str = typer.Option("approx", "--against", help="The approximation: approx or approx:<chars/token>."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON rows instead of a Markdown table."),
) -> None:
    """Exact token counts next to the approximate tokenizer's, per trace and part, with the error."""
    with user_errors():
        from memento_lens.analyses.figures.base import md_table
        from memento_lens.analyses.tokenization import compare_token_counts

        df = compare_token_counts(files, exact, approx)
        if as_json:
            print(df.to_json(orient="records", indent=2))
        else:
            print(md_table(df.assign(error=(100 * df["error"]).round(1)).rename(columns={"error": "error %"})))


def register(app: typer.Typer) -> None:
    app.command("mementify")(mementify_cmd)
    app.command("presets")(presets_cmd)
    app.command("token-counts")(token_counts_cmd)
