"""run_replay without a cluster: ReplayConfig's own checks, the error without ray, a model split over two
devices by a device map (identical run), and the single-process path's units."""

from __future__ import annotations

import json
import random
import sys

import pytest
from memento_lens.runtime.capture import default_captures
from memento_lens.runtime.config import BlockMaskingConfig
from memento_lens.runtime.errors import InputFileError, OptionError
from memento_lens.runtime.model import RANDOM_TOKENS, load_model
from memento_lens.runtime.runs import ReplayConfig, run_replay
from memento_lens.runtime.trace import Trace
from memento_lens.runtime.verify import structured_stream

pytestmark = pytest.mark.integration


def _traces(n, seed=5):
    rng = random.Random(seed)
    return [
        Trace(f"t{i}", *structured_stream(rng, RANDOM_TOKENS, list(range(6, 64)), n_blocks=rng.randint(1, 3)))
        for i in range(n)
    ]


@pytest.mark.parametrize(
    "kw, culprit",
    [
        ({"workers": -1}, "--workers"),
        ({"unit_size": 0}, "--unit-size"),
        ({"batch_size": 0}, "--batch-size"),
        ({"gpus_per_worker": 1.0}, "--gpus-per-worker needs --workers"),
        ({"gpus_per_worker": -1.0, "workers": 2}, "--gpus-per-worker"),
        ({"gpus_per_worker": 1.0, "workers": 2}, "add --device cuda"),
        ({"ray_address": " "}, "--ray-address"),
        ({"device_map": "balanced"}, "--device-map 'balanced'"),
        ({"device_map": "auto", "device": "cuda"}, "--device-map places the model"),
    ],
)
def test_config_checks_itself(kw, culprit):
    with pytest.raises(OptionError, match=culprit):
        ReplayConfig(_traces(1), **kw)


def test_config_refuses_no_traces_and_duplicate_ids():
    with pytest.raises(OptionError, match="no traces"):
        ReplayConfig([])
    t = _traces(1)[0]
    with pytest.raises(InputFileError, match="'t0' appears more than once"):
        ReplayConfig([t, t])


def test_sharded_request_without_ray_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as when it is not installed
    cfg = ReplayConfig(
        _traces(2), model="random:llama-tiny", masking=BlockMaskingConfig(mask_delimiters=False), workers=2
    )
    with pytest.raises(OptionError, match=r"ray is not installed.*pip install"):
        run_replay(tmp_path / "run", cfg)
    assert not (tmp_path / "run").exists()  # nothing written
    from typer.testing import CliRunner

    from memento_lens.cli import app

    r = CliRunner().invoke(app, ["replay", "--toy", "2", "--workers", "2", "--out", str(tmp_path / "cli")])
    assert r.exit_code == 2 and "pip install" in r.output and not (tmp_path / "cli").exists()


def test_model_split_over_two_devices_gives_the_same_run(tmp_path):
    """Layer 1 offloaded to "disk" (accelerate streams its weights in for each forward), the rest on CPU: the
    physical eviction and the K/V capture see the same cache, and the run is the same file for file."""
    traces = _traces(4)
    kw = dict(
        model="random:llama-tiny",
        masking=BlockMaskingConfig(mask_delimiters=False),
        captures=default_captures(evicted_block=True),
        unit_size=2,
    )
    one, _ = run_replay(tmp_path / "one", ReplayConfig(traces, **kw))
    dmap = {
        "model.embed_tokens": "cpu",
        "model.rotary_emb": "cpu",
        "model.layers.0": "cpu",
        "model.layers.1": "disk",
        "model.norm": "cpu",
        "lm_head": "cpu",
    }
    split = load_model("random:llama-tiny", device_map=dmap)
    assert split.model.model.layers[1].self_attn.q_proj.weight.device.type == "meta"  # really not resident
    assert split.model.model.layers[0].self_attn.q_proj.weight.device.type == "cpu"
    two, acct = run_replay(tmp_path / "two", ReplayConfig(traces, device_map=dmap, **kw), loaded=split)
    files = [json.loads((r.path / "manifest.json").read_text())["files"] for r in (one, two)]
    assert files[0] == files[1] and any(f.startswith("kv/shard-") for f in files[0])
    assert two.manifest.info["production"][0]["device_map"] == dmap and acct.units == 2
