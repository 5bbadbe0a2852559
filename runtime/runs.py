"""Producing runs: replay or generate traces with captures and write them as run directories (resumable).

The format is :mod:`.rundir`'s; the captures are :mod:`.capture`'s. This module is the only one that joins
the replay/generator with the writer, so ``capture`` and ``replay`` do not import each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from .capture import Capture
from .config import BlockMaskingConfig, MementoTokenIds
from .errors import InputFileError, OptionError
from .progress import bar_for
from .rundir.kv import CaptureSink
from .rundir.store import Manifest, RunStore
from .rundir.writer import RunWriter, trace_tables
from .trace import Trace


def replay_to_run(
    model: Any,
    traces: Sequence[Trace],
    config: BlockMaskingConfig,
    tokens: MementoTokenIds,
    out: str | Path,
    *,
    captures: Sequence[Capture] = (),
    run_config: dict[str, Any] | None = None,
    kind: str = "replay",
    source: str = "replay",
    tokenizer: Any = None,
    batch_size: int = 64,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = False,
    part_traces: int = 256,
    allow_unclosed: bool = False,
) -> RunStore:
    """Replay traces with captures and write a complete run directory (resumable).

    Malformed traces raise :class:`~memento_lens.runtime.replay.ReplayError` before anything is written;
    ``allow_unclosed`` accepts traces whose last block is still open (generations cut by their length limit).
    """
    from .model import kv_bytes_per_token, model_info
    from .replay import replay, validate_all
    from .validate import check_run_request

    check_run_request(model, batch_size=batch_size, captures=captures, out=out)
    ids = [t.trace_id for t in traces]
    if not ids:
        raise OptionError("no traces to replay")
    seen: set[str] = set()
    dup = next((i for i in ids if i in seen or seen.add(i)), None)
    if dup is not None:
        raise InputFileError(f"trace ids must be unique within a run; {dup!r} appears more than once")
    validate_all(model, traces, config, tokens, allow_unclosed)  # bad input fails before anything is written
    cfg = {
        "masking": config.to_dict(),
        "tokens": tokens.to_dict(),
        "captures": [c.describe() for c in captures],
        "model_info": model_info(model),
        **(run_config or {}),
    }
    store = RunStore.create(out, kind, cfg, overwrite=overwrite, resume=resume)
    if store.complete:
        return store
    with store:  # on failure an overwrite's new run is removed; the old run was never touched
        writer = RunWriter(store)
        done = writer.done_traces()
        todo = [t for t in traces if t.trace_id not in done]
        sink = CaptureSink()
        for c in captures:
            c.sink = sink
        bpt = kv_bytes_per_token(model)
        bar = bar_for(progress, sum(len(t) for t in todo), "replay", "tok")  # one bar over every part
        for k in range(0, len(todo), part_traces):
            chunk = todo[k : k + part_traces]
            results = replay(
                model,
                chunk,
                config,
                tokens,
                batch_size=batch_size,
                captures=captures,
                progress=bar,
                allow_unclosed=allow_unclosed,
            )
            tables = [trace_tables(r.trace, r.schedule, tokens, config.mode, source, bpt, tokenizer) for r in results]
            writer.write_part(tables, sink if captures else None)
        bar.close()
        writer.finish(n_traces=len(traces))
    return store


def generate_to_run(
    model: Any,
    prompts: Sequence[Sequence[int]],
    config: BlockMaskingConfig,
    tokens: MementoTokenIds,
    out: str | Path,
    *,
    sampling: Any = None,
    eos_token_id: int | None = None,
    captures: Sequence[Capture] = (),
    run_config: dict[str, Any] | None = None,
    tokenizer: Any = None,
    batch_size: int = 16,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = False,
    complete: bool = True,
    replace: Callable[[Manifest], bool] | None = None,
) -> RunStore:
    """Generate from prompts in batches and write each batch as a part (resumable); with ``captures`` the
    generated traces are replayed (teacher forcing rebuilds the identical cache) to capture K/V.

    Batch ``j`` samples with seed ``sampling.seed + j``, so a resumed run regenerates nothing it kept and
    produces what an uninterrupted run would have.

    Args:
        complete: mark the run complete after generation. ``False``: the caller adds more files and calls
            ``store.mark_complete`` itself (inside ``with store:``, so a failure removes an overwrite's new run);
            until then the run is incomplete and an overwrite's new run stays staged beside the old one.
        replace: passed to :meth:`RunStore.create` (the caller's own earlier runs it replaces without ``overwrite``).
    """
    import dataclasses

    from .generate import SamplingConfig, generate
    from .model import kv_bytes_per_token, model_info
    from .replay import replay
    from .validate import check_run_request

    check_run_request(model, batch_size=batch_size, captures=captures, out=out)
    if not prompts:
        raise OptionError("no prompts to generate from")
    sampling = sampling or SamplingConfig()
    cfg = {
        "masking": config.to_dict(),
        "tokens": tokens.to_dict(),
        "sampling": dataclasses.asdict(sampling),
        "captures": [c.describe() for c in captures],
        "model_info": model_info(model),
        "prompts": [list(map(int, p)) for p in prompts],
        **(run_config or {}),
    }
    store = RunStore.create(out, "generate", cfg, overwrite=overwrite, resume=resume, replace=replace)
    if store.complete:
        return store
    with store:  # on failure an overwrite's new run is removed; the old run was never touched
        writer = RunWriter(store)
        done = writer.done_traces()
        sink = CaptureSink()
        for c in captures:
            c.sink = sink
        bpt = kv_bytes_per_token(model)
        n_batches = -(-len(prompts) // batch_size)
        # one bar over the job: max_new_tokens decoding steps per batch (a batch that stops early tops up)
        bar = bar_for(progress, n_batches * sampling.max_new_tokens, "generate", "step")
        for j, k in enumerate(range(0, len(prompts), batch_size)):
            ids = [f"gen-{i:05d}" for i in range(k, min(k + batch_size, len(prompts)))]
            bar.set_description(f"generate batch {j + 1}/{n_batches}")
            start = bar.n
            if all(i in done for i in ids):
                bar.update(sampling.max_new_tokens)
                continue
            batch_sampling = dataclasses.replace(sampling, seed=sampling.seed + j)
            results = generate(
                model,
                prompts[k : k + batch_size],
                config,
                tokens,
                sampling=batch_sampling,
                eos_token_id=eos_token_id,
                trace_ids=ids,
                progress=bar,
            )
            bar.update(start + sampling.max_new_tokens - bar.n)
            tables = [
                trace_tables(r.trace, r.schedule, tokens, config.mode, "generate", bpt, tokenizer) for r in results
            ]
            if captures:
                replay(model, [r.trace for r in results], config, tokens, captures=captures, strict=False)
            writer.write_part(tables, sink if captures else None)
        bar.close()
        if complete:
            writer.finish(n_traces=len(prompts))
        else:
            writer.merge()
    return store


__all__ = ["replay_to_run", "generate_to_run"]
