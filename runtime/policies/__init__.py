"""Eviction policies: one small frozen dataclass per file, the hook the tracker calls (``base.py``).

| file | policy | reacts to | evicts |
| --- | --- | --- | --- |
| ``vanilla.py`` | :class:`Vanilla` | nothing | nothing |
| ``memento.py`` | :class:`Memento` ``(keep_last_n, mask_delimiters)`` | ``<|summary_end|>`` | the oldest completed block while more than N are queued (FIFO) |
| ``restart.py`` | :class:`Restart` ``(keep_last_n)`` | ``<|summary_end|>`` | the same, delimiters included, rewinding to the memento's ``<|summary_start|>`` |
| ``deferred_flush.py`` | :class:`DeferredFlush` ``(mask_delimiters, restart)`` | ``<|block_start|>`` | the completed block, once the next block starts |

:func:`policy_for` maps a reference-engine :class:`~memento_lens.runtime.config.BlockMaskingConfig` to its
policy (the one place the config's eviction flags are read). A new policy is one file here (subclass
:class:`EvictionPolicy`, override ``reacts_to`` and ``on_token``), passed as ``policy=`` to
``BlockTracker``, ``compute_schedule`` or ``runtime.schedule.fast_schedule``.
"""

from __future__ import annotations

from ..config import BlockMaskingConfig
from .base import EvictionPolicy, TrackerView, over_keep
from .deferred_flush import DeferredFlush
from .memento import Memento
from .restart import Restart
from .vanilla import Vanilla


def policy_for(config: BlockMaskingConfig) -> EvictionPolicy:
    """The policy a reference-engine config describes (its eviction flags read here and nowhere else)."""
    keep = config.keep_last_n_blocks
    if keep < 0:
        return Vanilla()
    if config.keep_last_block_for_answer and keep == 0:  # defers even without compact_on_summary_end
        return DeferredFlush(mask_delimiters=config.mask_delimiters, restart=config.restart_mode)
    if not config.compact_on_summary_end:
        return Vanilla()
    if config.restart_mode:
        return Restart(keep_last_n=keep)
    return Memento(keep_last_n=keep, mask_delimiters=config.mask_delimiters)


__all__ = [
    "EvictionPolicy",
    "TrackerView",
    "over_keep",
    "policy_for",
    "Vanilla",
    "Memento",
    "Restart",
    "DeferredFlush",
]
