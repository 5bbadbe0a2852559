"""CLI: schedule (model-free), plus the runtime commands (generate, replay, verify)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from .errors import user_errors


def schedule_cmd(
    batch: bool = typer.Option(False, "--batch", help="Read a JSON list of cases from stdin."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (the only output format for --batch)."),
    input_file: Optional[Path] = typer.Option(None, "--input", "-i", help="Read cases from this file instead of stdin."),
) -> None:
    """Eviction schedule of token streams, for checking against other engines.

    Each case: {"config": {...BlockMaskingConfig fields...}, "token_ids": {"block_start": id, ...},
    "prompt": [ids], "generated": [ids]}. Prints, per case, its events in order as
    {"kind", "position", "start", "end", "block"}.
    """
    from memento_lens.runtime.config import BlockMaskingConfig, ConfigError, MementoTokenIds
    from memento_lens.runtime.schedule import compute_schedule

    with user_errors():
        source = input_file.read_text() if input_file else sys.stdin.read()
        try:
            data = json.loads(source)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{input_file or '<stdin>'}: invalid JSON ({exc})") from None
        cases = data if batch else [data]
        if not isinstance(cases, list):
            raise ConfigError("--batch expects a JSON list of cases")
        out = []
        for i, case in enumerate(cases):
            where = f"case {i}"
            if not isinstance(case, dict):
                raise ConfigError(f"{where}: expected an object")
            cfg = BlockMaskingConfig.from_dict(case.get("config", {}), where=f"{where}.config")
            tok = MementoTokenIds.from_dict(case.get("token_ids", {}), where=f"{where}.token_ids")
            prompt = [int(t) for t in case.get("prompt", [])]
            generated = [int(t) for t in case.get("generated", [])]
            sched = compute_schedule(prompt + generated, cfg, tok, prompt_len=len(prompt))
            out.append([e.to_json() for e in sched.events])
        if batch or as_json:
            print(json.dumps(out if batch else out[0]))
        else:
            for e in out[0]:
                print(f"{e['kind']:>16}  pos={e['position']:<6} evict=[{e['start']}, {e['end']})  block={e['block']}"
                      + (f"  {e['message']}" if 'message' in e else ""))


def register(app: typer.Typer) -> None:
    app.command("schedule")(schedule_cmd)
