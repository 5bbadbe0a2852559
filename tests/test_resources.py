"""Resource guards: a job that cannot fit is refused before any work, with the estimate and the limit."""

from __future__ import annotations

import pytest
from memento_lens.runtime.model import load_model
from memento_lens.runtime.resources import (
    ResourceError,
    ResourceEstimate,
    check_resources,
    generation_estimate,
)
from typer.testing import CliRunner

pytestmark = pytest.mark.unit


def test_check_resources_refuses_with_estimate_and_limit():
    est = ResourceEstimate("job", memory_bytes=10 << 30, disk_bytes=1 << 20, counted="10 GB counted")
    with pytest.raises(ResourceError, match=r"job: needs about 10\.0 GB of memory \(10 GB counted\); 8\.0 GB"):
        check_resources(est, memory_limit=8 << 30, disk_limit=1 << 40)
    with pytest.raises(ResourceError, match=r"needs about 1\.0 MB of disk under out.*free"):
        check_resources(est, "out", memory_limit=1 << 40, disk_limit=1 << 20)  # 80% headroom: 1 MB > 0.8 MB
    assert check_resources(est, "out", memory_limit=1 << 40, disk_limit=1 << 40) is est


def test_generation_estimate_grows_with_traces_tokens_and_capture():
    toy = load_model("random:toy")
    one = generation_estimate(toy.model, n_traces=10, prompt_tokens=1, max_new_tokens=99, batch_size=4)
    ten = generation_estimate(toy.model, n_traces=100, prompt_tokens=1, max_new_tokens=99, batch_size=4)
    cap = generation_estimate(toy.model, n_traces=10, prompt_tokens=1, max_new_tokens=99, batch_size=4, captures=[1])
    assert ten.disk_bytes == 10 * one.disk_bytes  # linear in traces
    assert cap.disk_bytes > one.disk_bytes  # K/V captures are counted
    assert ten.memory_bytes > one.memory_bytes  # the manifest's prompts
    kv = 2 * toy.model.config.num_hidden_layers * toy.model.config.num_key_value_heads * toy.model.config.head_dim * 4
    assert cap.disk_bytes >= 10 * 100 * kv  # every token's float32 K/V at most


def test_generate_with_an_impossible_n_is_refused_before_anything_is_written(tmp_path):
    from memento_lens.cli import app

    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["generate", "--model", "random:toy", "--n", "1000000000000", "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert "1,000,000,000,000 traces" in res.stderr and "needs about" in res.stderr and "--n" in res.stderr
    assert not out.exists()
