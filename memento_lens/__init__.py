"""memento-lens: interpretability for erased-block KV traces.

The public API, importable from one place::

    from memento_lens import load_model, generate, SamplingConfig, generate_to_run, KVReader, KVKey

Names are resolved lazily (PEP 562): ``import memento_lens`` imports neither torch nor pandas and has no
side effects; the module behind a name is imported the first time the name is used. The user-facing
top-level folders (``runtime/``, ``probes/``, ``analyses/``, ``app/``) are installed as
``memento_lens.runtime`` etc. (see ``[tool.setuptools.package-dir]`` in pyproject.toml).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (the one owner; this file only points there)
_EXPORTS: dict[str, str] = {
    # core types and the schedule
    "BlockMaskingConfig": "memento_lens.runtime.config",
    "MementoTokenIds": "memento_lens.runtime.config",
    "compute_schedule": "memento_lens.runtime.schedule",
    "BlockTracker": "memento_lens.runtime.schedule",
    "Schedule": "memento_lens.runtime.schedule",
    "EvictionEvent": "memento_lens.runtime.events",
    "EventKind": "memento_lens.runtime.events",
    "EvictionPolicy": "memento_lens.runtime.policies.base",
    "policy_for": "memento_lens.runtime.policies",
    "world_config": "memento_lens.runtime.config",
    "masking_for": "memento_lens.runtime.config",
    "visibility_mask": "memento_lens.runtime.masks",
    "visible_at": "memento_lens.runtime.masks",
    "events_from_table": "memento_lens.runtime.masks",
    "Trace": "memento_lens.runtime.trace",
    "Role": "memento_lens.runtime.trace",
    "assign_roles": "memento_lens.runtime.trace",
    "MementoLensError": "memento_lens.runtime.errors",
    # models, generation, replay, capture
    "load_model": "memento_lens.runtime.model",
    "LoadedModel": "memento_lens.runtime.model",
    "generate": "memento_lens.runtime.generate",
    "SamplingConfig": "memento_lens.runtime.sampling",
    "GenerationResult": "memento_lens.runtime.generate",
    "replay": "memento_lens.runtime.replay",
    "dense_forward": "memento_lens.runtime.dense",
    "generate_to_run": "memento_lens.runtime.runs",
    "replay_to_run": "memento_lens.runtime.runs",
    "run_generate": "memento_lens.runtime.runs",
    "GenerateConfig": "memento_lens.runtime.runs",
    "run_replay": "memento_lens.runtime.runs",
    "ReplayConfig": "memento_lens.runtime.runs",
    "load_traces": "memento_lens.runtime.traces.load",
    "default_captures": "memento_lens.runtime.capture",
    "MementoKV": "memento_lens.runtime.capture",
    "EvictedBlockKV": "memento_lens.runtime.capture",
    "AttentionWeights": "memento_lens.runtime.capture",
    "verify_model": "memento_lens.runtime.verify",
    # run directories
    "RunStore": "memento_lens.runtime.rundir.store",
    "RunReader": "memento_lens.runtime.rundir.reader",
    "open_run": "memento_lens.runtime.rundir.reader",
    "KVReader": "memento_lens.runtime.rundir.reader",
    "KVKey": "memento_lens.runtime.rundir.kv",
    # the shipped toy
    "TOY_MASKING": "memento_lens.runtime.toy.task",
    "BOS": "memento_lens.runtime.toy.task",
    "EOS": "memento_lens.runtime.toy.task",
    # probes and ablations
    "PasscodeConfig": "memento_lens.probes.passcode",
    "run_passcode": "memento_lens.probes.passcode",
    "run_restart": "memento_lens.probes.ablation",
    "run_patch": "memento_lens.probes.ablation",
    # analyses
    "ingest_files": "memento_lens.analyses.ingest",
    "kv_summary": "memento_lens.analyses.kv",
    "Occupancy": "memento_lens.runtime.occupancy",
    "KVSpec": "memento_lens.runtime.occupancy",
    "residue_table": "memento_lens.analyses.residue",
    "attention_mass_by_role": "memento_lens.analyses.attention",
    "render_figures": "memento_lens.analyses.figures",
    # the whole pipeline
    "run_demo": "memento_lens.demo",
    "DemoConfig": "memento_lens.demo",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'memento_lens' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
