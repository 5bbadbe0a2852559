"""Proof of correctness: the incremental runtime with physical eviction equals one dense forward pass.

For each config of the matrix (keep_last_n_blocks in {0, 1, 2} x mask_delimiters in {true, false}, plus
restart mode) and a random block-structured token stream, :func:`verify` measures the max |logit
difference| between

* segment replay (:func:`~memento_lens.runtime.replay.replay`, batched) and
* per-token generation (:func:`~memento_lens.runtime.generate.generate` teacher-forced through the same loop
  that samples)

and one full forward with the schedule's dense visibility mask (:func:`~memento_lens.runtime.dense.dense_forward`);
it also checks that the physical cache size equals the schedule's occupancy at every step, and that in
restart mode the tokens left in the cache at the end (prompt + mementos + glue) have exactly the K/V and
logits of a fresh prefill of those tokens alone at their original positions.

The whole matrix runs twice: in the working dtype, and on a float64 copy of the model. The float64 run is the
exactness proof (incremental == dense up to ~1e-10 of the logits' scale); the working-dtype run is judged with
a tolerance relative to the scale of the logits (or K/V) compared, so a trained model with large logits is held
to the same relative precision as a random one (:data:`RELATIVE_TOLERANCE`).
"""

from __future__ import annotations

import contextlib
import copy
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Sequence

import torch

from .capture import Capture
from .config import BlockMaskingConfig, MementoTokenIds
from .dense import dense_forward
from .hf_paths import RMS_NORM_EPS_ATTR, rms_norms
from .masks import visibility_mask
from .occupancy import schedule_occupancy
from .schedule import compute_schedule
from .trace import Trace

# Tolerance on a max |difference|, relative to the scale of what is compared (max |dense logit| or max |K/V|,
# floored at 1). float64 is the exactness proof: the incremental path must equal the dense reference up to
# float64 rounding. The working dtypes allow their own rounding: the shipped toy's logits reach ~16, where
# float32 per-token and batched kernels differ by up to ~2.5e-5 of the scale (about 200 float32 eps).
RELATIVE_TOLERANCE = {
    torch.float64: 1e-10,
    torch.float32: 1e-4,
    torch.float16: 5e-2,
    torch.bfloat16: 0.25,
}
REFERENCE_DTYPE = torch.float64
# Above this many parameters verify is proportionate unless asked for the full run: the float64 reference runs
# REFERENCE_SUBSET (compact, FIFO keep-N with masked delimiters, restart) and the per-token generation check uses
# the first stream only. A 135M-parameter model otherwise spends ~10 CPU-minutes in float64 per-token loops.
FULL_MATRIX_MAX_PARAMS = 50_000_000


def tolerance_for(dtype: torch.dtype, scale: float, relative: float | None = None) -> float:
    """Absolute tolerance for a difference between tensors of max magnitude ``scale`` computed in ``dtype``."""
    rel = relative if relative is not None else RELATIVE_TOLERANCE.get(dtype, RELATIVE_TOLERANCE[torch.float32])
    return rel * max(1.0, scale)


@dataclass
class Check:
    """One measured check. ``value`` is a max |difference| (or a count of mismatches for occupancy); None when
    the run under test failed before it could be measured (``note`` says why). ``dtype`` is the precision the
    model ran in (the working dtype, or the float64 reference run); ``scale`` the max magnitude of the
    reference values the tolerance is relative to."""

    name: str
    config: dict[str, Any]
    value: float | None
    tolerance: float
    passed: bool
    note: str = ""
    dtype: str = ""
    scale: float | None = None


@dataclass
class VerifyReport:
    """All checks of one model. ``relative_tolerance`` maps each dtype run to its relative tolerance."""

    model: str
    dtype: str
    relative_tolerance: dict[str, float]
    n_tokens: int
    checks: list[Check] = field(default_factory=list)
    n_params: int = 0
    scope: str = "full"  # "full", or what a proportionate run left out (large models; `--full` runs everything)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "model": self.model,
            "dtype": self.dtype,
            "dtypes": list(self.relative_tolerance),
            "relative_tolerance": self.relative_tolerance,
            "n_tokens": self.n_tokens,
            "n_params": self.n_params,
            "scope": self.scope,
            "seconds": self.seconds,
            "n_checks": len(self.checks),
            "n_failed": sum(not c.passed for c in self.checks),
            "checks": [asdict(c) for c in self.checks],
        }


def structured_stream(
    rng: random.Random,
    tokens: MementoTokenIds,
    ordinary: Sequence[int],
    *,
    n_blocks: int = 3,
    block_len: tuple[int, int] = (1, 6),
    memento_len: tuple[int, int] = (1, 4),
    glue: tuple[int, int] = (0, 2),
    prompt_len: int = 4,
    answer_len: int = 3,
) -> tuple[list[int], int]:
    """A random well-formed stream: prompt, ``n_blocks`` x (block, memento, glue), answer. Returns (ids, prompt_len)."""

    def words(lo_hi: tuple[int, int]) -> list[int]:
        return [rng.choice(ordinary) for _ in range(rng.randint(*lo_hi))]

    ids = [rng.choice(ordinary) for _ in range(prompt_len)]
    for _ in range(n_blocks):
        ids += [
            tokens.block_start,
            *words(block_len),
            tokens.block_end,
            tokens.summary_start,
            *words(memento_len),
            tokens.summary_end,
            *words(glue),
        ]
    ids += [rng.choice(ordinary) for _ in range(answer_len)]
    return ids, prompt_len


def matrix() -> list[BlockMaskingConfig]:
    """The configs ``verify`` checks (require_assistant_section off: synthetic streams have no ChatML)."""
    cfgs = [
        BlockMaskingConfig(mask_delimiters=md, keep_last_n_blocks=k, require_assistant_section=False)
        for k in (0, 1, 2)
        for md in (True, False)
    ]
    cfgs += [
        BlockMaskingConfig(
            mask_delimiters=False, keep_last_n_blocks=0, restart_mode=True, require_assistant_section=False
        ),
        BlockMaskingConfig(
            mask_delimiters=False, keep_last_n_blocks=1, restart_mode=True, require_assistant_section=False
        ),
    ]
    return cfgs


def reference_subset() -> list[BlockMaskingConfig]:
    """The configs the float64 reference checks on a large model: compact (keep 0, delimiters kept), FIFO keep 1
    with masked delimiters, and restart (keep 0) -- one of each eviction path."""
    return [c for c in matrix() if (c.keep_last_n_blocks, c.mask_delimiters, c.restart_mode) in REFERENCE_KEYS]


REFERENCE_KEYS = {(0, False, False), (1, True, False), (0, False, True)}


@dataclass
class FinalCacheKV(Capture):
    """Records the K/V of every token held in the cache after the last token (all layers)."""

    positions: list[int] = field(default_factory=list)
    kv: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def after_chunk(self, view: Any, start: int, end: int) -> None:
        if end == view.schedule.n_tokens:
            pos = view.cache.pos[0]
            self.positions = sorted(int(p) for p in pos[pos >= 0])
            self.kv = view.cache.gather(self.positions)


def _ordinary_ids(vocab_size: int, tokens: MementoTokenIds, exclude: Sequence[int | None] = ()) -> list[int]:
    bad = set(tokens.delimiters) | {
        t for t in (tokens.im_start, tokens.assistant, tokens.think_end, *exclude) if t is not None
    }
    pool = [i for i in range(min(vocab_size, 4096)) if i not in bad]
    return pool[len(pool) // 8 :] or pool


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def verify(
    model: Any,
    tokens: MementoTokenIds,
    *,
    name: str = "model",
    seed: int = 0,
    n_blocks: int = 3,
    configs: Sequence[BlockMaskingConfig] | None = None,
    relative_tolerance: float | None = None,
    streams: Sequence[tuple[list[int], int]] | None = None,
    exclude_ids: Sequence[int | None] = (),
    check_generate: bool = True,
    reference: bool = True,
    full: bool | None = None,
    progress: Any = None,
) -> VerifyReport:
    """Run the verification matrix on ``model``; see the module docstring.

    Args:
        full: run the whole matrix in both precisions. ``None`` (default): full up to
            :data:`FULL_MATRIX_MAX_PARAMS` parameters; above it the float64 reference runs :func:`reference_subset`
            and the per-token generation check uses the first stream only (``report.scope`` says so).
        progress: False/None, True (a bar on stderr) or a caller's bar; advances per check step with an ETA.
        relative_tolerance: for the working dtype (default :data:`RELATIVE_TOLERANCE`); the float64 run always
            uses ``RELATIVE_TOLERANCE[float64]``.
        reference: also run the whole matrix on a float64 copy of the model (skipped when the model already is
            float64). That run is the exactness proof; the working-dtype run shows the runtime in the
            precision it is used in.
    """
    import time

    from .progress import bar_for

    t0 = time.perf_counter()
    dtype = next(model.parameters()).dtype
    n_params = sum(p.numel() for p in model.parameters())
    full = n_params <= FULL_MATRIX_MAX_PARAMS if full is None else full
    rng = random.Random(seed)
    if streams is None:
        ordinary = _ordinary_ids(model.config.vocab_size, tokens, exclude_ids)
        base, pl = structured_stream(rng, tokens, ordinary, n_blocks=n_blocks)
        other = [rng.choice(ordinary) if t not in tokens.delimiters else t for t in base]  # same structure
        third, pl3 = structured_stream(rng, tokens, ordinary, n_blocks=n_blocks)
        streams = [(base, pl), (other, pl), (third, pl3)]
    traces = [Trace(f"verify-{i}", list(s), pl) for i, (s, pl) in enumerate(streams)]
    cfgs = list(configs) if configs is not None else matrix()
    rel = relative_tolerance if relative_tolerance is not None else RELATIVE_TOLERANCE.get(dtype, 1e-4)
    ref_cfgs = cfgs if full or configs is not None else reference_subset()
    gen_traces = None if full else 1
    report = VerifyReport(name, _name(dtype), {_name(dtype): rel}, max(len(t) for t in traces), n_params=n_params)
    if not full:
        report.scope = (
            f"proportionate ({n_params / 1e6:.0f}M parameters > {FULL_MATRIX_MAX_PARAMS / 1e6:.0f}M): per-token "
            f"generation on stream 0 only; float64 reference on {len(ref_cfgs)} of {len(cfgs)} configs "
            "(compact, keep-1 with masked delimiters, restart); --full runs everything"
        )
    run_ref = reference and dtype != REFERENCE_DTYPE
    steps_per_cfg = 2 if check_generate else 1
    bar = bar_for(progress, steps_per_cfg * (len(cfgs) + (len(ref_cfgs) if run_ref else 0)), "verify", "check")
    try:
        report.checks += _matrix_checks(model, tokens, traces, cfgs, rel, check_generate, gen_traces, bar)
        if run_ref:
            ref_rel = RELATIVE_TOLERANCE[REFERENCE_DTYPE]
            report.relative_tolerance[_name(REFERENCE_DTYPE)] = ref_rel
            bar.set_description("verify (float64 reference)")
            ref_model = copy.deepcopy(model).to(REFERENCE_DTYPE)
            try:
                with float64_rms_norms(ref_model):
                    report.checks += _matrix_checks(
                        ref_model, tokens, traces, ref_cfgs, ref_rel, check_generate, gen_traces, bar
                    )
            finally:
                del ref_model
    finally:
        bar.close()
    report.seconds = round(time.perf_counter() - t0, 1)
    return report


@contextlib.contextmanager
def float64_rms_norms(model: Any) -> Iterator[int]:
    """Make ``model``'s RMSNorms compute in their input's dtype while the context is open; yields how many.

    HF's RMSNorm forward casts its input to float32 whatever the model's dtype, so a ``.to(float64)`` model
    still rounds every norm output to float32. Two paths whose residual streams agree to 1e-16 (dense mask vs
    re-prefill in restart mode, which sum attention in a different order) can then round a norm output to
    neighbouring float32 values: a ~6e-8 relative step that the next layers carry into the logits (seen as
    2.4e-8 of the logit scale on SmolLM2's real weights). The reference run must be float64 end to end, so a
    forward hook on each norm instance recomputes its output in float64; hooks are removed in ``finally``.
    """

    def exact(module: Any, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = args[0]
        eps = getattr(module, RMS_NORM_EPS_ATTR)
        return module.weight.to(x.dtype) * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    handles = [m.register_forward_hook(exact) for m in rms_norms(model)]
    try:
        yield len(handles)
    finally:
        for h in handles:
            h.remove()


def _matrix_checks(
    model: Any,
    tokens: MementoTokenIds,
    traces: Sequence[Trace],
    configs: Sequence[BlockMaskingConfig],
    rel: float,
    check_generate: bool,
    gen_traces: int | None = None,
    bar: Any = None,
) -> list[Check]:
    """Every check of the matrix with ``model`` in its own dtype; tolerances are ``rel`` x the compared scale.
    ``gen_traces``: how many streams the per-token generation check runs (None: all); ``bar`` advances per step."""
    from .generate import generate
    from .progress import NullBar
    from .replay import replay

    bar = bar if bar is not None else NullBar()
    dtype = next(model.parameters()).dtype
    dt = _name(dtype)
    dev = next(model.parameters()).device
    checks: list[Check] = []
    for cfg in configs:
        cd = cfg.to_dict()
        scheds = [compute_schedule(t.token_ids, cfg, tokens, prompt_len=t.prompt_len) for t in traces]
        dense = [
            dense_forward(model, torch.tensor([t.token_ids], device=dev), visibility_mask(s, device=dev))
            for t, s in zip(traces, scheds)
        ]
        ref = [d.logits[0].cpu().to(torch.promote_types(d.logits.dtype, torch.float32)) for d in dense]
        scale = max(float(r.abs().max()) for r in ref)
        tol = tolerance_for(dtype, scale, rel)
        final = FinalCacheKV()
        try:
            rep = replay(model, traces[:1], cfg, tokens, keep_logits=True, captures=[final], max_chunk=5)
            rep += replay(model, traces[1:], cfg, tokens, keep_logits=True)
        except AssertionError as exc:  # the replay's own occupancy accounting disagreed with the schedule
            checks.append(Check("replay_vs_dense_logits", cd, None, tol, False, f"replay failed: {exc}", dt, scale))
            bar.update(2 if check_generate else 1)
            continue
        bar.update(1)
        d_rep = max(float((d - r.logits.to(d.dtype)).abs().max()) for d, r in zip(ref, rep))
        checks.append(
            Check(
                "replay_vs_dense_logits",
                cd,
                d_rep,
                tol,
                d_rep <= tol,
                f"{len(traces)} traces, {len(scheds[0].evictions)} evictions in trace 0",
                dt,
                scale,
            )
        )
        if check_generate:
            gen = list(traces[:gen_traces]) if gen_traces is not None else list(traces)
            gens = generate(
                model,
                [t.token_ids[: t.prompt_len] for t in gen],
                cfg,
                tokens,
                forced=[t.token_ids[t.prompt_len :] for t in gen],
                keep_logits=True,
            )
            bar.update(1)
            d_gen = max(float((d - g.logits.to(d.dtype)).abs().max()) for d, g in zip(ref, gens))
            checks.append(
                Check(
                    "generate_vs_dense_logits",
                    cd,
                    d_gen,
                    tol,
                    d_gen <= tol,
                    f"teacher-forced through the per-token sampling loop ({len(gen)} of {len(traces)} streams)",
                    dt,
                    scale,
                )
            )
            bad_occ = sum(int((g.measured.tokens != schedule_occupancy(s)).sum()) for g, s in zip(gens, scheds))
            bad_ev = sum(int(tuple(g.schedule.events) != s.events) for g, s in zip(gens, scheds))
            checks.append(
                Check(
                    "generate_cache_occupancy_vs_schedule",
                    cd,
                    float(bad_occ + bad_ev),
                    0.0,
                    bad_occ + bad_ev == 0,
                    "steps whose physical cache size differs from the schedule's occupancy, plus traces whose events differ",
                    dt,
                )
            )
        if cfg.restart_mode and cfg.keep_last_n_blocks == 0:
            checks.append(_restart_prefill_check(model, traces[0], final, cd, rel))
    return checks


def _restart_prefill_check(model: Any, trace: Trace, final: FinalCacheKV, cd: dict, rel: float) -> Check:
    """Restart KV == a fresh prefill of the surviving tokens (prompt + mementos + glue) at original positions."""
    pos = final.positions
    dev = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    ids = torch.tensor([[trace.token_ids[p] for p in pos]], device=dev)
    n = len(pos)
    causal = torch.ones(n, n, dtype=torch.bool, device=dev).tril_()
    fresh = dense_forward(model, ids, causal, position_ids=torch.tensor([pos], device=dev))
    diff = 0.0
    scale = 0.0
    for (k, v), fk, fv in zip(final.kv, fresh.keys, fresh.values):
        diff = max(diff, float((k - fk).abs().max()), float((v - fv).abs().max()))
        scale = max(scale, float(fk.abs().max()), float(fv.abs().max()))
    tol = tolerance_for(dtype, scale, rel)
    return Check(
        "restart_kv_vs_fresh_prefill",
        cd,
        diff,
        tol,
        diff <= tol,
        f"{n} surviving tokens of {len(trace)}; K and V, all layers",
        _name(dtype),
        scale,
    )


def verify_model(
    spec: str | None = None,
    *,
    device: str = "cpu",
    dtype: str | None = None,
    seed: int = 0,
    n_blocks: int = 3,
    reference: bool = True,
    full: bool | None = None,
    progress: Any = None,
) -> VerifyReport:
    """``memento-lens verify``: default a tiny random Qwen3 built from a config; else a loaded model spec.
    ``dtype`` is the working precision (default float32); ``reference`` adds the float64 run; ``full`` and
    ``progress`` as in :func:`verify`."""
    from .model import load_model

    lm = load_model(spec or "random:tiny", device=device, dtype=dtype or "float32", seed=seed)
    tokens = lm.require_tokens()
    return verify(
        lm.model,
        tokens,
        name=lm.name,
        seed=seed,
        n_blocks=n_blocks,
        exclude_ids=[lm.eos_token_id],
        reference=reference,
        full=full,
        progress=progress,
    )


__all__ = [
    "verify",
    "verify_model",
    "VerifyReport",
    "Check",
    "structured_stream",
    "matrix",
    "reference_subset",
    "FULL_MATRIX_MAX_PARAMS",
    "RELATIVE_TOLERANCE",
    "REFERENCE_DTYPE",
    "tolerance_for",
    "FinalCacheKV",
]
