"""CLI: schedule (model-free), plus the runtime commands (generate, replay, verify)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from . import cli_options as opt
from .errors import user_errors


def schedule_cmd(
    batch: bool = opt.flag("--batch", "Read a JSON list of cases (stdin or --input)."),
    as_json: bool = opt.flag("--json", "Print JSON (the only output format for --batch)."),
    input_file: Optional[Path] = typer.Option(
        None, "--input", "-i", help="Read cases from this file instead of stdin."
    ),
) -> None:
    """Eviction schedule of token streams, for checking against other engines.

    Each case is one JSON object (token ids are integers; "block" in the output is 0-based):

    \b
    {"config": {"mask_delimiters": false, "keep_last_n_blocks": 0},
     "token_ids": {"block_start": 1, "block_end": 2,
                   "summary_start": 3, "summary_end": 4},
     "prompt": [0],
     "generated": [1, 7, 8, 2, 3, 9, 4, 10]}

    Prints, per case, its events in order as {"kind", "position", "start", "end", "block"}.
    """
    from memento_lens.runtime.config import BlockMaskingConfig, ConfigError, MementoTokenIds
    from memento_lens.runtime.schedule import compute_schedule
    from memento_lens.runtime.validate import check_token_ids, read_text

    with user_errors():
        source = read_text(input_file, "--input") if input_file else _read_stdin(batch)
        name = str(input_file or "<stdin>")
        try:
            data = json.loads(source)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{name}: invalid JSON ({exc})") from None
        cases = data if batch else [data]
        if not isinstance(cases, list):
            raise ConfigError(f"{name}: --batch expects a JSON list of cases")
        out = []
        for i, case in enumerate(cases):
            where = f"{name}: case {i}" if batch else name
            if not isinstance(case, dict):
                raise ConfigError(f"{where}: expected an object")
            cfg = BlockMaskingConfig.from_dict(case.get("config", {}), where=f"{where}: config")
            tok = MementoTokenIds.from_dict(case.get("token_ids", {}), where=f"{where}: token_ids")
            prompt = check_token_ids(case.get("prompt", []), f"{where}: prompt")
            generated = check_token_ids(case.get("generated", []), f"{where}: generated")
            sched = compute_schedule(prompt + generated, cfg, tok, prompt_len=len(prompt))
            out.append([e.to_json() for e in sched.events])
        if batch or as_json:
            print(json.dumps(out if batch else out[0]))
        else:
            for e in out[0]:
                print(
                    f"{e['kind']:>16}  pos={e['position']:<6} evict=[{e['start']}, {e['end']})  block={e['block']}"
                    + (f"  {e['message']}" if "message" in e else "")
                )


def _read_stdin(batch: bool, stdin=None) -> str:
    """All of stdin; on a terminal, first say what is expected (a bare ``schedule`` otherwise waits in silence)."""
    stdin = stdin if stdin is not None else sys.stdin
    if stdin.isatty():
        what = "a JSON list of cases" if batch else "one JSON case"
        print(
            f"schedule: reading {what} from stdin (format: --help); end with Ctrl-D, or pass --input FILE",
            file=sys.stderr,
        )
    return stdin.read()


# ---------------------------------------------------------------------------------------------------------
# Runtime commands: generate, replay, verify
# ---------------------------------------------------------------------------------------------------------
def _read_config(config_file: Optional[Path]):
    """The BlockMaskingConfig of --config FILE (checked before any model loads), or None."""
    from memento_lens.runtime.config import BlockMaskingConfig, ConfigError
    from memento_lens.runtime.validate import read_text

    if config_file is None:
        return None
    try:
        data = json.loads(read_text(config_file, "--config"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--config {config_file}: invalid JSON ({exc})") from None
    return BlockMaskingConfig.from_dict(data, where=str(config_file))


def _masking(
    mode: str,
    keep: int,
    mask_delimiters: Optional[bool],
    from_file,
    max_block_tokens: int,
    lm,
):
    """The BlockMaskingConfig from --config FILE or the flags (the delimiter default: ``runtime.config.masking_for``);
    a choice contradicting the model's training warns."""
    from memento_lens.runtime.config import delimiter_conflict, masking_for

    cfg = from_file
    if cfg is None:
        cfg = masking_for(
            mode, keep, mask_delimiters, lm.masking, model_name=lm.name, max_block_tokens=max_block_tokens
        )
    note = delimiter_conflict(cfg, lm.masking, lm.name)
    if note:
        print(f"warning: {note}", file=sys.stderr)
    return cfg


_setup = opt.setup  # one thread/seed rule for every command (cli_options.setup)


def _captures(
    capture: bool,
    layers: Optional[str],
    evicted_block: bool,
    attention_layers: Optional[str],
    attention_queries: Optional[str],
):
    from memento_lens.runtime.capture import default_captures
    from memento_lens.runtime.validate import check_int, parse_int_list

    if not capture:
        return []
    queries = parse_int_list(attention_queries, "--attention-queries")
    for q in queries or ():
        check_int(q, "--attention-queries", min=0)
    return default_captures(
        parse_int_list(layers, "--layers"),
        evicted_block,
        parse_int_list(attention_layers, "--attention-layers") or (),
        queries,
    )


def _check_captures(model, layers: Optional[str], attention_layers: Optional[str]) -> None:
    """--layers / --attention-layers against the loaded model (named in the error)."""
    from memento_lens.runtime.validate import check_layers, parse_int_list

    check_layers(parse_int_list(layers, "--layers"), model, "--layers")
    check_layers(parse_int_list(attention_layers, "--attention-layers"), model, "--attention-layers")


def _load(model: str, device: str, dtype: Optional[str], device_map: Optional[str] = None):
    """Load a model spec; random specs always get the same weights, so a run can be replayed by spec."""
    from memento_lens.runtime.model import load_model

    return load_model(model, device=device, dtype=dtype, device_map=device_map)


_MODE_HELP = "vanilla (no eviction) | memento (evict each finished block) | restart (evict, then recompute mementos)."
_MASK_DEFAULT = "Default: what the model was trained with when it records it (the toy keeps them); else required."


def generate_cmd(
    prompt: list[str] = typer.Option(
        [],
        "--prompt",
        "-p",
        metavar="TEXT",
        help="Prompt text (repeatable). Chat template applied when the tokenizer has one.",
    ),
    prompts_file: Optional[Path] = typer.Option(
        None, "--prompts-file", help="One prompt per line (or a JSON list of strings / token-id lists)."
    ),
    n: int = typer.Option(
        1, "--n", "-n", help="Traces per prompt; with no prompt, N traces from the tokenizer's BOS token."
    ),
    model: str = opt.model(),
    mode: str = typer.Option("memento", "--mode", help=_MODE_HELP),
    keep: int = opt.keep(),
    mask_delimiters: Optional[bool] = opt.mask_delimiters(_MASK_DEFAULT),
    config_file: Optional[Path] = typer.Option(
        None, "--config", help="BlockMaskingConfig as JSON (overrides --mode/--keep/--mask-delimiters)."
    ),
    max_block_tokens: int = typer.Option(
        0, "--max-block-tokens", help="Force <|block_end|> once a block holds this many tokens (0: off)."
    ),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature (0: greedy)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass in (0, 1] (1: off)."),
    top_k: int = typer.Option(0, "--top-k", help="Sample among the k most likely tokens (0: off)."),
    min_p: float = typer.Option(0.0, "--min-p", help="Drop tokens below min_p x the top probability (0: off)."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="Generated tokens per trace at most (>= 1)."),
    batch_size: int = opt.batch_size(16, "prompts"),
    allow_unk: bool = opt.allow_unk(),
    capture: bool = opt.capture(),
    layers: Optional[str] = opt.layers(),
    evicted_block: bool = opt.evicted_block(),
    attention_layers: Optional[str] = opt.attention_layers(),
    attention_queries: Optional[str] = opt.attention_queries(),
    out: Path = opt.out(Path("runs/generate")),
    overwrite: bool = opt.overwrite(),
    resume: bool = opt.resume(),
    device: str = opt.device(),
    dtype: Optional[str] = opt.dtype(),
    seed: int = opt.seed(),
    threads: int = opt.threads(),
) -> None:
    """Generate with block masking and physical KV eviction; write a run directory."""
    with user_errors():
        from memento_lens.runtime.generate import SamplingConfig
        from memento_lens.runtime.runs import GenerateConfig, run_generate

        sampling = SamplingConfig(
            temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p, max_new_tokens=max_new_tokens, seed=seed
        )
        cfg = GenerateConfig(
            model=model,
            prompts=list(prompt) + (_read_prompts(prompts_file) if prompts_file is not None else []),
            n=n,
            mode=mode,
            keep=keep,
            mask_delimiters=mask_delimiters,
            max_block_tokens=max_block_tokens,
            masking=_read_config(config_file),
            sampling=sampling,
            captures=_captures(capture, layers, evicted_block, attention_layers, attention_queries),
            batch_size=batch_size,
            allow_unk=allow_unk,
            overwrite=overwrite,
            resume=resume,
            progress=opt.show_progress(),
            device=device,
            dtype=dtype,
        )
        _setup(threads, seed)
        store, acct = run_generate(out, cfg)
        for note in acct.notes:
            print(note, file=sys.stderr)
        _summary(store)


def _read_prompts(path: Path) -> list:
    """Prompts from a file: a JSON list of strings / token-id lists, one JSON string, or one prompt per line."""
    from memento_lens.runtime.errors import InputFileError
    from memento_lens.runtime.validate import check_token_ids, read_text

    raw = read_text(path, "--prompts-file")
    try:
        loaded = json.loads(raw)
    except json.JSONDecodeError:
        lines = [line for line in raw.splitlines() if line.strip()]
        if not lines:  # else generate would start one trace from BOS, as if no file were given
            raise InputFileError(f"--prompts-file {path}: no prompts (the file is empty or blank)")
        return lines
    items = loaded if isinstance(loaded, list) else [loaded]
    if not items:
        raise InputFileError(f"--prompts-file {path}: no prompts (an empty JSON list)")
    out: list = []
    for i, p in enumerate(items):
        if isinstance(p, str):
            out.append(p)
        elif isinstance(p, list):
            out.append(check_token_ids(p, f"{path}: prompt {i}"))
        else:
            raise InputFileError(f"{path}: prompt {i}: expected a string or a list of token ids, got {p!r}")
    return out


def _read_traces(path: Path, tokenizer=None):
    """The traces of ``--traces PATH`` through the trace layer (``runtime.traces.load_traces``): a run directory,
    a JSONL of {"trace", "token_ids", "prompt_len"} objects, or any text trace format (Memento JSON, OpenMementos,
    vLLM JSONL: tokenized with ``tokenizer``, the model's). Strict: a bad row is an error naming file and row.
    Returns (traces, the run's tokenizer description or None)."""
    from memento_lens.runtime.errors import InputFileError
    from memento_lens.runtime.traces import load_traces

    if not path.exists():
        raise InputFileError(f"--traces {path}: no such file or directory")
    source = load_traces(path, tokenizer, strict=True)
    traces = source.list()
    if not traces:
        raise InputFileError(f"--traces {path}: no traces in the file")
    return traces, source.recorded_tokenizer


def _traces_need_model_tokenizer(path: Path) -> bool:
    """Whether ``--traces PATH`` is text to tokenize with the model's tokenizer (read once the model is loaded);
    a missing path, a raw chain-of-thought file, an unknown type, a truncated file or a bad row is refused now,
    before any model loads."""
    from memento_lens.runtime.errors import InputFileError
    from memento_lens.runtime.traces import check_rows, needs_tokenizer

    if not path.exists():
        raise InputFileError(f"--traces {path}: no such file or directory")
    if not needs_tokenizer(path):
        return False
    check_rows(path)  # a truncated file or a bad row fails now, not after the model has loaded
    return True


def _check_queries(attention_queries: Optional[str], traces) -> None:
    """--attention-queries must lie inside the longest trace (else nothing would be captured, silently)."""
    from memento_lens.runtime.errors import OptionError
    from memento_lens.runtime.validate import parse_int_list

    queries = parse_int_list(attention_queries, "--attention-queries") or []
    longest = max((len(t) for t in traces), default=0)
    bad = [q for q in queries if q >= longest]
    if bad:
        raise OptionError(f"--attention-queries: position {bad[0]} is beyond the longest trace ({longest} tokens)")


def _check_run_tokenizer(source: Path, tokenizer: object, model_name: str) -> None:
    """A run ingested with --tokenizer approx holds counting ids, not any model's vocabulary: say so plainly."""
    from memento_lens.runtime.errors import ModelError

    if isinstance(tokenizer, dict) and tokenizer.get("tokenizer") == "approx":
        raise ModelError(
            f"--traces {source}: its token ids come from --tokenizer approx (counting ids, not a vocabulary), so "
            f"they are outside model {model_name!r}'s vocabulary; ingest with the model's tokenizer "
            "(--tokenizer toy or a tokenizer directory) to replay it"
        )


def replay_cmd(
    traces_path: Optional[Path] = typer.Option(
        None,
        "--traces",
        help="Run directory, JSONL of {trace, token_ids, prompt_len} (integer ids), or a trace file (Memento .json, "
        "OpenMementos .parquet, vLLM .jsonl: tokenized with the model's tokenizer).",
    ),
    toy: int = typer.Option(0, "--toy", help="Instead of --traces: sample this many toy-task sequences."),
    model: str = opt.model(),
    mode: str = typer.Option("memento", "--mode", help=_MODE_HELP),
    keep: int = opt.keep(),
    mask_delimiters: Optional[bool] = opt.mask_delimiters(_MASK_DEFAULT),
    config_file: Optional[Path] = typer.Option(
        None, "--config", help="BlockMaskingConfig as JSON (overrides --mode/--keep/--mask-delimiters)."
    ),
    layers: Optional[str] = opt.layers(),
    evicted_block: bool = opt.evicted_block(),
    attention_layers: Optional[str] = opt.attention_layers(),
    attention_queries: Optional[str] = opt.attention_queries(),
    capture: bool = opt.capture(),
    allow_truncated: bool = opt.flag(
        "--allow-truncated", "Accept traces whose last block is still open (generations cut by their length limit)."
    ),
    batch_size: int = opt.batch_size(64, "traces"),
    out: Path = opt.out(Path("runs/replay")),
    overwrite: bool = opt.overwrite(),
    resume: bool = opt.resume(),
    device: str = opt.device(),
    dtype: Optional[str] = opt.dtype(),
    seed: int = opt.seed(),
    threads: int = opt.threads(),
    workers: int = opt.workers(),
    ray_address: Optional[str] = opt.ray_address(),
    gpus_per_worker: float = opt.gpus_per_worker(),
    device_map: Optional[str] = opt.device_map(),
    unit_size: int = opt.unit_size(16),
    as_json: bool = opt.flag("--json", "Print the accounting (units, tokens, seconds, retries, failures) as JSON."),
) -> None:
    """Teacher-forced segment replay with the schedule; capture memento K/V into a run directory (in one process,
    or sharded over a Ray cluster with --workers / --ray-address)."""
    with user_errors():
        from memento_lens.runtime.errors import OptionError
        from memento_lens.runtime.replay import traces_from_ids
        from memento_lens.runtime.runs import ReplayConfig, run_replay
        from memento_lens.runtime.validate import check_int, check_output_dir

        from_file = _read_config(config_file)
        check_int(batch_size, "--batch-size", min=1)
        check_int(toy, "--toy", min=0)
        check_output_dir(out, "--out")
        caps = _captures(capture, layers, evicted_block, attention_layers, attention_queries)
        if (traces_path is None) == (toy <= 0):
            raise OptionError("give exactly one of --traces PATH or --toy N")
        run_tokenizer, text_traces = None, False
        if traces_path is not None:
            text_traces = _traces_need_model_tokenizer(traces_path)
            traces, run_tokenizer = ([], None) if text_traces else _read_traces(traces_path)
            source = str(traces_path)
        else:
            from memento_lens.runtime.toy.task import sample

            traces = traces_from_ids(sample(toy, seed).token_ids, prompt_len=1, prefix="toy")
            source = f"toy.task.sample(n={toy}, seed={seed})"
        _setup(threads, seed)
        sharded = workers > 1 or ray_address is not None
        if sharded:
            from memento_lens.runtime.cluster import require_ray

            require_ray()  # before any model loads: the install command
        # sharded: each actor loads its own copy where Ray puts it; this process keeps one on CPU to check with
        lm = _load(model, "cpu" if sharded else device, dtype, None if sharded else device_map)
        lm.require_tokens()  # a vocabulary without the memento tokens fails here, before any work
        cfg = _masking(mode, keep, mask_delimiters, from_file, 0, lm)
        _check_captures(lm.model, layers if capture else None, attention_layers if capture else None)
        if text_traces:  # text trace files: tokenized with this model's tokenizer (its chat template)
            traces, run_tokenizer = _read_traces(traces_path, lm.tokenizer)
        if traces_path is not None:
            _check_run_tokenizer(traces_path, run_tokenizer, lm.name)
        _check_queries(attention_queries if capture and attention_layers else None, traces)
        store, acct = run_replay(
            out,
            ReplayConfig(
                traces,
                model=model,
                masking=cfg,
                captures=caps,
                source=source,
                run_config={"model": lm.name, "source": source},
                batch_size=batch_size,
                unit_size=unit_size,
                allow_unclosed=allow_truncated,
                overwrite=overwrite,
                resume=resume,
                progress=opt.show_progress(),
                device=device,
                dtype=dtype,
                device_map=device_map,
                workers=workers,
                ray_address=ray_address,
                gpus_per_worker=gpus_per_worker,
                threads=threads,
            ),
            loaded=lm,
        )
        _summary(store)
        _report_accounting(acct, as_json)


def verify_cmd(
    model: Optional[str] = opt.model(None, "Default: a tiny random Qwen3 built from a config."),
    device: str = opt.device(),
    dtype: Optional[str] = typer.Option(
        None, "--dtype", help="Working precision: float32 (default), float64, bfloat16, float16."
    ),
    seed: int = opt.seed(),
    blocks: int = typer.Option(3, "--blocks", help="Blocks in the random test streams (>= 1)."),
    reference: bool = opt.flag(
        "--float64-reference/--no-float64-reference",
        "Also run every check on a float64 copy of the model (the exactness proof, ~1e-10 of the logits' scale).",
        default=True,
    ),
    full: bool = opt.flag(
        "--full",
        "Run the whole matrix in both precisions even on a large model (above 50M parameters verify is "
        "proportionate by default: per-token generation on one stream, float64 reference on 3 of 8 configs; "
        "the report's 'scope' says what ran).",
    ),
    out: Optional[Path] = opt.out(None, "Also write the JSON report to this file."),
    overwrite: bool = opt.overwrite(),
    threads: int = opt.threads(),
) -> None:
    """Check incremental eviction against one dense forward; print a JSON report; exit 1 on failure."""
    with user_errors():
        from memento_lens.runtime.validate import check_int, check_output_file
        from memento_lens.runtime.verify import verify_model

        if out is not None:
            check_output_file(out, "--out", overwrite=overwrite)
        check_int(blocks, "--blocks", min=1)
        _setup(threads, seed)
        report = verify_model(
            model,
            device=device,
            dtype=dtype,
            seed=seed,
            n_blocks=blocks,
            reference=reference,
            full=True if full else None,
            progress=opt.show_progress(),
        )
        text = json.dumps(report.to_dict(), indent=2)
        if out is not None:
            from memento_lens.runtime.rundir.store import atomic_write_bytes

            atomic_write_bytes(out, text.encode())
        print(text)
    if not report.passed:
        raise typer.Exit(1)


def _summary(store) -> None:
    from rich.console import Console

    from memento_lens.runtime.rundir.schema import is_shard

    info = store.manifest.info
    files = store.manifest.files
    kv = sum(1 for f in files if is_shard(f))
    for line in store.notes():  # found its own complete run / files it did not write
        Console(stderr=True).print(line, markup=False)
    Console(stderr=True).print(
        f"[green]{store.manifest.status}[/green] run at {store.path}: "
        f"{info.get('n_traces', '?')} traces, {kv} K/V shard(s)"
    )


def _report_accounting(acct, as_json: bool) -> None:
    """The replay's accounting: JSON on stdout with --json, else one line on stderr."""
    if as_json:
        print(json.dumps(acct.to_dict()))
        return
    print(
        f"{acct.units_run} unit(s) replayed, {acct.units_kept} kept, of {acct.units}; {acct.tokens} tokens in "
        f"{acct.seconds:.1f} s ({acct.tokens_per_s:.0f} tok/s) on {acct.workers} worker(s); "
        f"{acct.retries} retried, {len(acct.failures)} failed",
        file=sys.stderr,
    )


def register(app: typer.Typer) -> None:
    app.command("schedule")(schedule_cmd)
    app.command("generate")(generate_cmd)
    app.command("replay")(replay_cmd)
    app.command("verify")(verify_cmd)
