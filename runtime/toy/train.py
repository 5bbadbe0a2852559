"""Training the toy model with the paper's two-stage recipe.

Stage 1: full causal attention. Stage 2: memento attention (keep 0, delimiters stay), expressed as the
dense visibility mask of the runtime's schedule (:func:`.evaluate.toy_visibility`; one mask serves every
toy sequence because the structure is fixed). Loss on all tokens, AdamW, linear warmup then cosine decay,
a fixed step budget (deterministic for a seed and thread count). Data: fresh random sequences every step
(``dataset_size = 0``, the shipped ``toy``) or one fixed training set reshuffled every epoch (the paper's
x axis is "training epoch"). ``stop_exact`` ends training at the first checkpoint whose held-out memento
exact-match reaches it (to stop inside the paper's 77-95% task-accuracy range); ``stage1_fraction = 0``
trains with memento attention from the first step. Named recipes: :mod:`.variants`.

The output directory is a :class:`~memento_lens.runtime.rundir.store.RunStore` (kind ``toy_train``)::

    train_config.json          TrainConfig (the full recipe)
    training_log.json          loss per logged step + task accuracy per checkpoint
    README.md                  the command that produced it
    <checkpoint>/              HF format: config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
                               checkpoint.json (step, stage, accuracy)

Checkpoints are named ``step-NNNNNN`` (``step-000000`` is the initialisation when 0 is listed); the last
one is also written as ``final`` (``final_dtype``, float32 by default; intermediate checkpoints are stored
as float16 to keep the shipped package small).
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..rundir.store import RunStore
from .evaluate import EVAL_SEED, evaluate_all, toy_visibility
from .model import ToyModelConfig, build_model, count_parameters
from .task import ToyLayout, sample
from .tokenizer import save_tokenizer

RUN_KIND = "toy_train"
ARCHITECTURE_NAMES = {"qwen3": "Qwen3", "llama": "Llama", "gpt2": "GPT-2"}
FINAL = "final"


@dataclass
class TrainConfig:
    """The full toy training recipe (defaults = the shipped model's recipe).

    Attributes:
        steps: optimiser steps in total (stage 1 + stage 2).
        stage1_fraction: fraction of ``steps`` trained with full causal attention.
        batch_size: sequences per step (fresh random sequences every step).
        lr: peak learning rate; linear warmup over ``warmup_steps``, cosine decay to ``lr * min_lr_ratio``.
        checkpoints: steps at which checkpoints are saved (the last step is always saved, also as ``final``;
            0 saves the initialisation).
        eval_sequences: held-out sequences (seed ``eval_seed``) scored at each checkpoint.
        threads: torch CPU threads (0 = leave as is).
        dataset_size: 0 = fresh random sequences every step; N > 0 = one fixed set of N training sequences
            (drawn with ``seed``), reshuffled every epoch.
        stop_exact: stop at the first checkpoint whose held-out memento exact-match is >= this (0 = off).
        final_dtype: dtype of the ``final`` checkpoint.
    """

    steps: int = 1500
    stage1_fraction: float = 0.15
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 75
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    seed: int = 0
    checkpoints: tuple[int, ...] = (250, 500, 750, 1000, 1250)
    checkpoint_dtype: str = "float16"
    eval_sequences: int = 512
    eval_seed: int = EVAL_SEED
    log_every: int = 10
    threads: int = 2
    dataset_size: int = 0
    stop_exact: float = 0.0
    final_dtype: str = "float32"
    model: ToyModelConfig = field(default_factory=ToyModelConfig)
    layout: ToyLayout = field(default_factory=ToyLayout)

    @property
    def steps_per_epoch(self) -> int | None:
        """Optimiser steps per pass over the fixed training set (None with fresh samples)."""
        return math.ceil(self.dataset_size / self.batch_size) if self.dataset_size > 0 else None

    @property
    def stage1_steps(self) -> int:
        return int(round(self.steps * self.stage1_fraction))

    def lr_at(self, step: int) -> float:
        """Learning rate for (0-based) ``step``."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        t = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = dict(d)
        d["model"] = ToyModelConfig(**d.get("model", {}))
        d["layout"] = ToyLayout(**d.get("layout", {}))
        d["betas"] = tuple(d.get("betas", (0.9, 0.98)))
        d["checkpoints"] = tuple(d.get("checkpoints", ()))
        return cls(**d)


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


@dataclass
class TrainResult:
    """What a training run produced (also in ``training_log.json``)."""

    out: Path
    checkpoints: list[dict]
    losses: list[dict]
    seconds: float
    n_parameters: int
    reused: bool = False  # ``out`` already held this same training run (complete); nothing was retrained


def sequence_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over all positions. ``logits [b, t, v]``, ``ids [b, t]``."""
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1)
    )


def train(
    cfg: TrainConfig,
    out: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
    device: torch.device | str = "cpu",
    on_checkpoint: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train a toy model from scratch into the run directory ``out``."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    store = RunStore.create(out, RUN_KIND, {"train": cfg.to_dict()}, overwrite=overwrite, can_resume=False)
    if store.reused:  # this same training run, complete: its record, nothing retrained
        log = store.read_json("training_log.json")
        return TrainResult(
            out=Path(out),
            checkpoints=log["checkpoints"],
            losses=log["losses"],
            seconds=float(log["seconds"] or 0.0),
            n_parameters=int(log["n_parameters"]),
            reused=True,
        )
    with store:  # a failure removes an overwrite's new run (no hidden .<name>.overwrite-* left); the old is untouched
        return _train_into(store, cfg, out, progress, command, device, on_checkpoint)


def _train_into(store: RunStore, cfg: TrainConfig, out, progress, command, device, on_checkpoint) -> TrainResult:
    """The training itself, into ``store`` (marked complete last; an overwrite's new run is swapped in then)."""
    store.write_json("train_config.json", cfg.to_dict())
    layout = cfg.layout
    model = build_model(cfg.model, seed=cfg.seed, device=device, layout=layout)
    n_params = count_parameters(model)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=cfg.betas,
    )
    memento_mask = torch.zeros(1, 1, layout.length, layout.length, device=device)
    memento_mask.masked_fill_(~toy_visibility("memento", layout, device=device), torch.finfo(torch.float32).min)
    rng = np.random.default_rng(cfg.seed)
    data = _Data(cfg, rng)
    save_at = sorted({s for s in cfg.checkpoints if 0 < s < cfg.steps} | {cfg.steps})
    losses: list[dict] = []
    checkpoints: list[dict] = []
    t0 = time.perf_counter()
    running = 0.0
    from tqdm.auto import tqdm

    bar = tqdm(range(cfg.steps), desc="toy train", disable=not progress, dynamic_ncols=True)
    if 0 in cfg.checkpoints:
        entry = _checkpoint(store, model, cfg, 0, 0, None, 0.0, device)
        checkpoints.append(entry)
        store.write_json("training_log.json", _log(cfg, n_params, losses, checkpoints, None, command))
    model.train()
    for step in bar:
        stage = 1 if step < cfg.stage1_steps else 2
        lr = cfg.lr_at(step)
        for g in opt.param_groups:
            g["lr"] = lr
        ids = torch.from_numpy(data.batch(step)).to(device)
        mask = None if stage == 1 else memento_mask.expand(ids.shape[0], -1, -1, -1)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        loss = sequence_loss(logits, ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        running += loss.item()
        if (step + 1) % cfg.log_every == 0:
            losses.append(
                {
                    "step": step + 1,
                    "stage": stage,
                    "loss": running / cfg.log_every,
                    "lr": lr,
                    "elapsed_s": time.perf_counter() - t0,
                }
            )
            bar.set_postfix(stage=stage, loss=f"{running / cfg.log_every:.4f}", lr=f"{lr:.2e}")
            running = 0.0
        if step + 1 in save_at:
            entry = _checkpoint(store, model, cfg, step + 1, stage, loss.item(), time.perf_counter() - t0, device)
            checkpoints.append(entry)
            bar.write(
                f"checkpoint {entry['name']}: memento exact {entry['memento_exact']:.3f} "
                f"digit {entry['memento_digit']:.3f} (vanilla exact {entry['vanilla_exact']:.3f})"
            )
            store.write_json("training_log.json", _log(cfg, n_params, losses, checkpoints, None, command))
            if on_checkpoint is not None:
                on_checkpoint(entry)
            if cfg.stop_exact > 0 and entry["memento_exact"] >= cfg.stop_exact:
                break
    seconds = time.perf_counter() - t0
    _write_final(store, model, cfg, checkpoints[-1])
    store.write_json("training_log.json", _log(cfg, n_params, losses, checkpoints, seconds, command))
    store.add_file("README.md", lambda tmp: Path(tmp).write_text(_readme(cfg, n_params, checkpoints, seconds, command)))
    store.mark_complete(seconds=seconds, n_parameters=n_params, final=checkpoints[-1]["name"])
    return TrainResult(out=Path(out), checkpoints=checkpoints, losses=losses, seconds=seconds, n_parameters=n_params)


def _checkpoint(
    store: RunStore, model, cfg: TrainConfig, step: int, stage: int, loss: float | None, elapsed: float, device
) -> dict:
    acc = evaluate_all(
        model, cfg.eval_sequences, seed=cfg.eval_seed, modes=("vanilla", "memento"), layout=cfg.layout, device=device
    )
    entry = {
        "name": checkpoint_name(step),
        "step": step,
        "stage": stage,
        "sequences_seen": step * cfg.batch_size,
        "epoch": step / cfg.steps_per_epoch if cfg.steps_per_epoch else None,
        "loss": loss,
        "elapsed_s": elapsed,
        "memento_exact": acc["memento"].exact,
        "memento_digit": acc["memento"].digit,
        "vanilla_exact": acc["vanilla"].exact,
        "vanilla_digit": acc["vanilla"].digit,
        "eval_sequences": cfg.eval_sequences,
        "dtype": cfg.checkpoint_dtype,
    }
    if step != cfg.steps and not (cfg.stop_exact > 0 and entry["memento_exact"] >= cfg.stop_exact):
        _save_hf(store, model, entry["name"], getattr(torch, cfg.checkpoint_dtype), entry)
    return entry


class _Data:
    """Training sequences: fresh ones every step, or a fixed set reshuffled every epoch."""

    def __init__(self, cfg: TrainConfig, rng: np.random.Generator):
        self.cfg, self.rng = cfg, rng
        self.fixed = sample(cfg.dataset_size, rng, cfg.layout).token_ids if cfg.dataset_size > 0 else None
        self.order = np.arange(0)

    def batch(self, step: int) -> np.ndarray:
        cfg = self.cfg
        if self.fixed is None:
            return sample(cfg.batch_size, self.rng, cfg.layout).token_ids
        per_epoch = cfg.steps_per_epoch
        i = step % per_epoch
        if i == 0:
            self.order = self.rng.permutation(len(self.fixed))
        return self.fixed[self.order[i * cfg.batch_size : (i + 1) * cfg.batch_size]]


def _write_final(store: RunStore, model, cfg: TrainConfig, last: dict) -> None:
    dtype = cfg.final_dtype
    _save_hf(
        store, model, FINAL, getattr(torch, dtype), {**last, "name": FINAL, "step_name": last["name"], "dtype": dtype}
    )


def _save_hf(store: RunStore, model, name: str, dtype: torch.dtype, info: dict) -> None:
    """Save ``model`` (cast to ``dtype``) + tokenizer + checkpoint.json as HF files under ``name/``."""
    import copy

    with tempfile.TemporaryDirectory() as tmp:
        snap = copy.deepcopy(model).to(dtype=dtype).eval()
        snap.save_pretrained(tmp, safe_serialization=True)
        save_tokenizer(tmp)
        for f in sorted(Path(tmp).iterdir()):
            if f.is_file():
                store.add_file(f"{name}/{f.name}", lambda dst, src=f: shutil.copyfile(src, dst))
    store.write_json(f"{name}/checkpoint.json", info)


def _log(cfg: TrainConfig, n_params: int, losses, checkpoints, seconds, command) -> dict:
    return {
        "command": command,
        "n_parameters": n_params,
        "seconds": seconds,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "config": cfg.to_dict(),
        "checkpoints": checkpoints,
        "losses": losses,
    }


def _data_text(cfg: TrainConfig) -> str:
    if cfg.dataset_size <= 0:
        return "fresh random sequences every step"
    return f"a fixed set of {cfg.dataset_size} sequences ({cfg.steps_per_epoch} steps per epoch)"


def _readme(cfg: TrainConfig, n_params: int, checkpoints: list[dict], seconds: float, command: str | None) -> str:
    rows = "\n".join(
        f"| {c['name']} | {c['step']} | {c['stage']} | {c['dtype']} | {c['memento_exact']:.3f} | "
        f"{c['memento_digit']:.3f} | {c['vanilla_exact']:.3f} |"
        for c in checkpoints
    )
    return f"""# memento-lens toy model

{ARCHITECTURE_NAMES.get(cfg.model.architecture, cfg.model.architecture)} architecture, {cfg.model.num_hidden_layers} layers, hidden {cfg.model.hidden_size}, {n_params:,} parameters,
trained on the running-sum task ({cfg.layout.n_blocks} blocks x {cfg.layout.block_digits} digits,
{cfg.layout.memento_digits}-digit mementos, {cfg.layout.passcode_digits} unsummed passcode digits per block):
{cfg.stage1_steps} steps of full causal attention, then memento attention (keep 0) up to step {cfg.steps},
batch {cfg.batch_size}, {_data_text(cfg)}, AdamW peak lr {cfg.lr} (warmup {cfg.warmup_steps}, cosine), seed {cfg.seed},
architecture {cfg.model.architecture} with {cfg.model.num_attention_heads} query / {cfg.model.num_key_value_heads} KV heads.

Produced by:

    {command or "memento-lens toy train --out DIR"}

in {seconds / 60:.1f} minutes ({torch.get_num_threads()} CPU threads, torch {torch.__version__}).
`final` is the last step ({checkpoints[-1]["name"]}) in {cfg.final_dtype}; the step-* checkpoints are stored in {cfg.checkpoint_dtype}.
Accuracy: teacher-forced, on {cfg.eval_sequences} held-out sequences (seed {cfg.eval_seed}).

| checkpoint | step | stage | dtype | memento exact | memento digit | vanilla exact |
| --- | --- | --- | --- | --- | --- | --- |
{rows}

Full recipe: train_config.json; loss curve and accuracy per checkpoint: training_log.json.
"""
