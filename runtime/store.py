"""Compatibility name: the run-directory store lives in :mod:`memento_lens.runtime.rundir.store`."""

from .rundir.store import *  # noqa: F401,F403
from .rundir.store import __all__  # noqa: F401
