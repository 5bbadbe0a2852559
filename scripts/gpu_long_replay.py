"""A Qwen3-8B-shaped random model replaying one long trace (default 32K tokens) with memento K/V capture:
memento vs vanilla wall time (issue 17's GPU check; target memento <= 0.5x vanilla). ``--tiny`` runs the same
code on a tiny shape on CPU (the dry run). Prints one JSON line."""

from __future__ import annotations

import argparse
import json
import random
import time

import torch

QWEN3_8B = dict(vocab_size=151936, layers=36, hidden=4096, mlp=12288, heads=32, kv_heads=8, head_dim=128)
TINY = dict(vocab_size=512, layers=2, hidden=64, mlp=128, heads=4, kv_heads=2, head_dim=16)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="tiny shape on CPU float32 (dry run)")
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    args = ap.parse_args()
    from memento_lens.runtime.capture import MementoKV
    from memento_lens.runtime.config import BlockMaskingConfig
    from memento_lens.runtime.model import RANDOM_TOKENS, random_causal_lm
    from memento_lens.runtime.replay import replay
    from memento_lens.runtime.trace import Trace
    from memento_lens.runtime.verify import structured_stream

    shape = TINY if args.tiny else QWEN3_8B
    device, dtype = ("cpu", torch.float32) if args.tiny else (args.device, getattr(torch, args.dtype))
    t0 = time.perf_counter()
    model = random_causal_lm(
        arch="qwen3", **shape, max_positions=max(args.tokens + 1024, 40960), device=device, dtype=dtype
    )
    load_s = time.perf_counter() - t0
    # blocks of ~1K tokens and mementos of ~60 (the paper's ratio), until the trace is args.tokens long
    rng = random.Random(0)
    block, memento = ((900, 1100), (40, 80)) if args.tokens >= 10000 else ((60, 100), (8, 16))  # short: dry run
    n_blocks = max(1, args.tokens // (block[1] + memento[1]))
    ids, pl = structured_stream(
        rng,
        RANDOM_TOKENS,
        range(10, shape["vocab_size"]),
        n_blocks=n_blocks,
        block_len=block,
        memento_len=memento,
        prompt_len=min(1000, args.tokens // 20),
        answer_len=50,
    )
    ids = ids[: args.tokens] if len(ids) > args.tokens else ids
    trace = Trace("long", ids, pl)
    out = {
        "shape": shape,
        "device": str(device),
        "dtype": str(dtype),
        "tokens": len(ids),
        "blocks": n_blocks,
        "load_s": round(load_s, 1),
    }
    for mode in ("vanilla", "memento"):
        cfg = BlockMaskingConfig.from_mode(mode, mask_delimiters=False)
        caps = [MementoKV()] if mode == "memento" else []
        if device != "cpu":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        [r] = replay(model, [trace], cfg, RANDOM_TOKENS, captures=caps, allow_unclosed=True)
        if device != "cpu":
            torch.cuda.synchronize()
            out[f"{mode}_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        out[f"{mode}_s"] = round(time.perf_counter() - t0, 3)
        out[f"{mode}_peak_kv_tokens"] = int(max(r.occupancy.tokens))
        if caps:
            out["captured_kv"] = len(caps[0].sink.kv)
    out["memento_over_vanilla"] = round(out["memento_s"] / out["vanilla_s"], 3)
    out["target_met"] = out["memento_over_vanilla"] <= 0.5
    print(json.dumps(out))


if __name__ == "__main__":
    main()
