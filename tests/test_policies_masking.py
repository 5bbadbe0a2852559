"""The masking a command runs with (runtime.config: masking_for, world_config, KEEP_ALL) and ``--keep -1``."""

from __future__ import annotations

import pytest
from memento_lens.runtime.config import (
    KEEP_ALL,
    BlockMaskingConfig,
    ConfigError,
    delimiter_conflict,
    masking_for,
    world_config,
)
from memento_lens.runtime.policies import Memento, Restart, Vanilla, policy_for

pytestmark = pytest.mark.unit

TOY_LIKE = BlockMaskingConfig(mask_delimiters=False)  # a model that records its training masking


def test_world_config():
    base = BlockMaskingConfig(mask_delimiters=True, keep_last_n_blocks=2, max_block_tokens=5)
    assert world_config(base, "normal") is base
    restart = world_config(base, "restart")
    assert restart == BlockMaskingConfig(
        mask_delimiters=True, keep_last_n_blocks=2, max_block_tokens=5, restart_mode=True
    )
    assert policy_for(restart) == Restart(keep_last_n=2)
    with pytest.raises(ConfigError, match="world must be one of normal, restart; got 'foreign'"):
        world_config(base, "foreign")


def test_keep_all_is_vanilla_and_refused_with_an_evicting_mode():
    assert KEEP_ALL == -1
    cfg = masking_for(None, KEEP_ALL, None)
    assert cfg.mode == "vanilla" and policy_for(cfg) == Vanilla()
    assert masking_for("vanilla", KEEP_ALL, None).mode == "vanilla"
    for mode in ("memento", "restart"):
        with pytest.raises(ConfigError, match=rf"--keep -1 .*KEEP_ALL.* with --mode {mode} would run vanilla"):
            masking_for(mode, KEEP_ALL, True)
        with pytest.raises(ConfigError, match="--keep -1"):  # the library path says the same
            BlockMaskingConfig.from_mode(mode, keep_last_n_blocks=KEEP_ALL)


def test_delimiter_default_policy():
    # the model's training decides when the user does not
    assert masking_for("memento", 1, None, TOY_LIKE).mask_delimiters is False
    assert masking_for("memento", 1, None, BlockMaskingConfig(mask_delimiters=True)).mask_delimiters is True
    # the user's choice wins (and the contradiction is a warning, not an error)
    chosen = masking_for("memento", 0, True, TOY_LIKE, model_name="toy")
    assert chosen.mask_delimiters is True
    assert delimiter_conflict(chosen, TOY_LIKE, "toy") == (
        "--mask-delimiters contradicts model 'toy', trained with --keep-delimiters; its outputs will not match its training"
    )
    assert delimiter_conflict(masking_for("memento", 0, False, TOY_LIKE), TOY_LIKE) is None
    assert delimiter_conflict(masking_for("vanilla", 0, True, TOY_LIKE), TOY_LIKE) is None  # nothing evicted
    # no record, no choice: vanilla does not care, an evicting mode must be told
    assert masking_for("vanilla", 0, None).mask_delimiters is False
    with pytest.raises(ConfigError, match="model 'm' does not record its delimiter masking: pass --keep-delimiters"):
        masking_for("memento", 0, None, model_name="m")
    # a command's own documented default
    assert masking_for("memento", 0, None, default_mask_delimiters=False).mask_delimiters is False
    cfg = masking_for("restart", 2, None, TOY_LIKE, max_block_tokens=7, require_assistant_section=False)
    assert (cfg.restart_mode, cfg.keep_last_n_blocks, cfg.max_block_tokens, cfg.require_assistant_section) == (
        True,
        2,
        7,
        False,
    )
    assert policy_for(masking_for("memento", 3, True)) == Memento(keep_last_n=3, mask_delimiters=True)
    with pytest.raises(ConfigError, match="--mode must be one of vanilla, memento, restart; got 'evict'"):
        masking_for("evict", 0, True)


def test_keep_below_keep_all_names_the_option():
    with pytest.raises(ConfigError, match=r"keep_last_n_blocks \(--keep\) must be an integer >= -1"):
        masking_for("memento", -2, True)
