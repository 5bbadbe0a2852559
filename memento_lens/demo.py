"""The demo pipeline as a library function: the whole toolkit on the shipped toy model, into one run.

Steps: generate mementified traces with KV capture (normal + restart memento K/V, evicted blocks, attention
of the memento queries); quick passcode probe sweep; restart ablation and causal KV patching; the paper
figures; headline numbers read back from the tables just written. :func:`run_demo` returns the run and a
:class:`DemoSummary` (also written to ``demo_summary.json``); ``memento-lens demo`` only prints them.

The run directory follows the store's rules (:mod:`memento_lens.runtime.rundir.store`): the run stays
``incomplete`` until the summary is written, so an interrupted demo never looks finished, and a replaced run is
written beside the old one and swapped in only then. The same demo on its own complete run reuses it.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager

DEFAULT_OUT = Path("runs/demo")
SUMMARY_FILE = "demo_summary.json"


@dataclass(frozen=True)
class DemoConfig:
    """Everything that changes the demo's results (recorded in the run's manifest as ``config``).

    Attributes:
        model: ``toy`` or ``toy@<checkpoint>`` (the demo's task is the toy's).
        traces: mementified traces to generate.
        probe_samples: sequences per data replicate for the quick passcode sweep (2 replicates, the quick preset).
        ablation_samples: sequences for the restart ablation and KV patching.
        seed, device: as everywhere.
        threads: torch threads while the demo runs (1 is fastest for the toy on 2 cores; restored after).
        png: also export PNG figures (needs chromium).
    """

    model: str = "toy"
    traces: int = 256
    probe_samples: int = 2000
    ablation_samples: int = 64
    seed: int = 0
    device: str = "cpu"
    threads: int = 1
    png: bool = True


@dataclass
class DemoSummary:
    """The demo's headline numbers, read back from the run's tables.

    Attributes:
        task_accuracy: ``{"<variant>/<metric>": value}`` for the teacher-forced memento digits and the generated
            whole mementos, normal and restart KV.
        probe_accuracy_last_layer: MLP passcode probe accuracy at the last layer per condition (masked at +1).
        probe_channels_last_layer: the channel decomposition of the same rows, per condition: ``normal``,
            ``restart`` (memento K/V recomputed without the block), ``text`` (probe on the memento tokens) and
            ``excess`` = normal - restart with its paired CI (``excess_ci_low``, ``excess_ci_high``); where the rows
            have them, the reference worlds (``same_sum``, ``foreign``, ``delimiter_hidden``) with ``excess_<world>``
            and its CI, and the row's ``n_val`` (validation samples, all replicates), ``n_seeds``, ``n_data_seeds``.
        probe_flags_last_layer: per condition, ``probe`` (which probe the numbers are from), ``stopped_by``,
            ``still_improving`` and, for the causal control, ``check`` (pass / fail against chance).
        peak_kv_tokens: mean over traces of the peak KV occupancy, ``vanilla`` and ``memento``.
        kv_bytes_per_token: from the occupancy table.
        n_traces: traces generated.
        figures: ``written`` (figure names rendered), ``skipped`` (``{name: reason}``), ``png_skipped``.
        timings_s: seconds per step.
    """

    task_accuracy: dict[str, float]
    probe_accuracy_last_layer: dict[str, float]
    peak_kv_tokens: dict[str, float]
    kv_bytes_per_token: float
    n_traces: int
    figures: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    probe_channels_last_layer: dict[str, dict[str, float]] = field(default_factory=dict)
    probe_flags_last_layer: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DemoResult:
    """What :func:`run_demo` produced.

    Attributes:
        run: the run directory (a :class:`~memento_lens.runtime.rundir.store.RunStore`).
        summary: the headline numbers (``demo_summary.json``).
        figures: the :class:`~memento_lens.analyses.figures.FigureReport`; None when ``reused`` (the summary's
            ``figures`` names what was rendered).
        reused: ``run`` already held this same demo's complete run; its summary was read, nothing recomputed.
    """

    run: Any
    summary: DemoSummary
    figures: Any = None
    reused: bool = False

    @classmethod
    def read(cls, run: Any) -> "DemoResult":
        """The results a complete demo run holds."""
        return cls(run, DemoSummary(**run.read_json(SUMMARY_FILE)), reused=True)


StepFn = Callable[[str], ContextManager[Any]]


def _null_step(name: str) -> ContextManager[Any]:
    return contextlib.nullcontext()


def is_demo_run(manifest: Any) -> bool:
    """Whether a run's manifest is a demo run's (the demo replaces those without ``overwrite``)."""
    return manifest.kind == "generate" and manifest.config.get("demo") is True


def run_demo(
    out: str | Path = DEFAULT_OUT,
    config: DemoConfig = DemoConfig(),
    *,
    overwrite: bool = False,
    step: StepFn | None = None,
) -> DemoResult:
    """Run the demo pipeline into ``out``.

    Args:
        out: the run directory. This same demo's complete run there is reused (``DemoResult.reused``; nothing
            recomputed); an earlier different or unfinished demo run is replaced; another memento-lens run only
            with ``overwrite``; anything else is refused naming the path (the store's rules).
        config: see :class:`DemoConfig`.
        overwrite: replace whatever memento-lens run ``out`` holds, recomputing even this same demo's run.
        step: called with each step's name; the returned context manager wraps the step (the CLI shows a
            status line and the step's time). Timings are measured here either way.
    """
    import torch

    out = Path(out)
    step = step or _null_step
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, config.threads))
    try:
        torch.manual_seed(config.seed)
        return _pipeline(out, config, step, overwrite)
    finally:
        torch.set_num_threads(before)


def _pipeline(out: Path, config: DemoConfig, step: StepFn, overwrite: bool) -> DemoResult:
    from memento_lens.runtime.capture import AttentionWeights, EvictedBlockKV, MementoKV
    from memento_lens.runtime.generate import SamplingConfig
    from memento_lens.runtime.model import load_model
    from memento_lens.runtime.runs import generate_to_run
    from memento_lens.runtime.toy.task import BOS, EOS, TOY_MASKING, ToyLayout

    timings: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        with step(name):
            result = fn()
        timings[name] = time.perf_counter() - t0
        return result

    cfg = config
    layout = ToyLayout()
    loaded = timed(f"load {cfg.model}", lambda: load_model(cfg.model, device=cfg.device))
    model, tokens = loaded.model, loaded.require_tokens()
    n_layers = int(model.config.num_hidden_layers)

    # Attention over every query is pos x pos per layer and head; the demo keeps the memento queries of the
    # first four blocks (what the app's attention page is about), which keeps the run small.
    queries = tuple(int(p) for b in range(4) for p in layout.memento_span(b))
    captures = [MementoKV(), EvictedBlockKV(), AttentionWeights(layers=tuple(range(n_layers)), queries=queries)]
    sampling = SamplingConfig(temperature=1.0, seed=cfg.seed, max_new_tokens=layout.length - 1)
    run_config = {"demo": True, **asdict(cfg)}  # everything that changes the results: the reuse key

    store = timed(
        f"generate {cfg.traces} mementified traces with KV capture",
        lambda: generate_to_run(
            model,
            [[BOS]] * cfg.traces,
            TOY_MASKING,
            tokens,
            out,
            sampling=sampling,
            eos_token_id=EOS,
            tokenizer=loaded.tokenizer,
            run_config=run_config,
            captures=captures,
            batch_size=64,
            overwrite=overwrite,
            replace=is_demo_run,
            complete=False,  # complete (and swapped in over an earlier run) only once the summary is written
        ),
    )
    if store.reused:  # this same demo's complete run: its summary, nothing recomputed
        return DemoResult.read(store)
    with store:  # a failure in any later step removes an overwrite's new run; the old one is untouched
        return _analyse(store, loaded, cfg, n_layers, timed, timings)


def _analyse(
    store: Any, loaded: Any, cfg: DemoConfig, n_layers: int, timed: Callable[..., Any], timings: dict[str, float]
) -> DemoResult:
    """The steps after generation, into ``store`` (still incomplete; during an overwrite, staged beside the old
    run); marks it complete last."""
    import pandas as pd

    from memento_lens.analyses.figures import render_figures
    from memento_lens.probes.ablation import ablation_inputs, patch_experiment, restart_experiment
    from memento_lens.probes.passcode import QUICK, PasscodeConfig, run_passcode

    def probe() -> pd.DataFrame:
        pc = PasscodeConfig(
            model=cfg.model, seed=cfg.seed, device=cfg.device, **{**QUICK, "samples": cfg.probe_samples}
        )
        return run_passcode(pc, loaded).rows

    n_rep = QUICK["data_seeds"]
    probe_rows = timed(f"passcode probes (quick: {n_rep} data replicates x {cfg.probe_samples} sequences)", probe)
    store.write_table("probe_results.parquet", probe_rows)

    def ablate() -> pd.DataFrame:
        inputs = ablation_inputs(cfg.model, samples=cfg.ablation_samples, seed=cfg.seed, loaded=loaded)
        restart = restart_experiment(inputs, cfg.model, generated=True, device=cfg.device)
        patch = patch_experiment(
            inputs, cfg.model, directions=["restart->normal", "normal->restart"], device=cfg.device
        )
        return pd.concat([restart.rows, patch.rows], ignore_index=True)

    ablations = timed(f"restart ablation and KV patching ({cfg.ablation_samples} sequences)", ablate)
    store.write_table("ablations.parquet", ablations)

    staged = Path(store.path)  # the new run's files live here until mark_complete swaps it in
    report = timed(
        "render the paper figures",
        lambda: render_figures(["all"], runs=[store], out_dir=staged / "figures", png=cfg.png),
    )

    summary = summarize(store, probe_rows, ablations, n_layers)
    summary.figures = {
        "written": sorted(r.name for r in report.rendered),
        "skipped": dict(report.skipped),
        "png_skipped": report.png_skipped,
    }
    summary.timings_s = {k: round(v, 2) for k, v in timings.items()}
    store.write_json(SUMMARY_FILE, summary.to_dict())
    store.mark_complete(demo=True, n_traces=cfg.traces)
    if Path(store.path) != staged:  # swapped in over an earlier run: name the figure files where they now are
        report.out_dir = str(Path(store.path) / "figures")
        for r in report.rendered:
            r.files = [str(Path(store.path) / Path(f).relative_to(staged)) for f in r.files]
    return DemoResult(store, summary, report)


def summarize(store: Any, probe_rows: Any, ablations: Any, n_layers: int) -> DemoSummary:
    """The demo's headline numbers, read back from the run's occupancy table and the result tables."""
    import numpy as np
    import pandas as pd

    from memento_lens.runtime.occupancy import Occupancy
    from memento_lens.runtime.rundir.tables import occupancies_from_table

    occs = [o for o in occupancies_from_table(store.read_table("occupancy.parquet"), {}) if o.mode != "vanilla"]
    # vanilla attention keeps every token of the same trace
    vanilla = [Occupancy.vanilla(len(o.tokens), o.bytes_per_token, o.prompt_len, o.trace) for o in occs]
    restart = ablations[ablations["experiment"] == "restart"]
    task = {
        f"{r.variant}/{r.metric}": float(r.value)
        for r in restart.itertuples()
        if r.metric in ("accuracy_teacher_forced", "memento_exact_generated")
    }
    have = list(dict.fromkeys(probe_rows["probe"])) if len(probe_rows) else []
    probe_name = "mlp" if "mlp" in have else (have[0] if have else "mlp")  # the paper's probe when it ran
    last = probe_rows[(probe_rows["layer"] == n_layers - 1) & (probe_rows["probe"] == probe_name)]
    if "head" in last.columns:
        last = last[last["head"] == -1]
    probes: dict[str, float] = {}
    channels: dict[str, dict[str, float]] = {}
    flags: dict[str, dict[str, Any]] = {}
    decomposition = {
        "normal": "accuracy",
        "restart": "restart_accuracy",
        "text": "text_accuracy",
        "excess": "implicit_excess",
        "excess_ci_low": "excess_ci_low",
        "excess_ci_high": "excess_ci_high",
    }
    optional = {}
    for w in ("same_sum", "foreign", "delimiter_hidden"):
        optional.update({w: f"{w}_accuracy", f"excess_{w}": f"excess_{w}"})
        optional.update({f"excess_{w}_ci_low": f"excess_{w}_ci_low", f"excess_{w}_ci_high": f"excess_{w}_ci_high"})
    optional.update({"n_val": "n_val", "n_seeds": "n_seeds", "n_data_seeds": "n_data_seeds"})
    optional.update({"check_bound": "check_bound", "check_alpha": "check_alpha"})
    for cond in ("direct", "masked", "causal_control"):
        sub = last[last["condition"] == cond]
        if cond == "masked":
            sub = sub[sub["distance"] == 1]
        if len(sub):
            row = sub.iloc[0]
            probes[cond] = float(row["accuracy"])
            if all(c in sub.columns for c in decomposition.values()):
                channels[cond] = {k: float(row[c]) for k, c in decomposition.items()}
                channels[cond].update(
                    {k: float(row[c]) for k, c in optional.items() if c in sub.columns and not pd.isna(row[c])}
                )
            flags[cond] = {"probe": probe_name}
            for c in ("stopped_by", "still_improving", "check"):
                if c in sub.columns and not pd.isna(row[c]) and row[c] != "":
                    flags[cond][c] = row[c].item() if hasattr(row[c], "item") else row[c]
    return DemoSummary(
        task_accuracy=task,
        probe_accuracy_last_layer=probes,
        probe_channels_last_layer=channels,
        probe_flags_last_layer=flags,
        peak_kv_tokens={
            "vanilla": float(np.mean([o.peak_tokens for o in vanilla])) if vanilla else float("nan"),
            "memento": float(np.mean([o.peak_tokens for o in occs])) if occs else float("nan"),
        },
        kv_bytes_per_token=float(occs[0].bytes_per_token) if occs else float("nan"),
        n_traces=len({o.trace for o in occs}),
    )


__all__ = ["DEFAULT_OUT", "DemoConfig", "DemoResult", "DemoSummary", "is_demo_run", "run_demo", "summarize"]
