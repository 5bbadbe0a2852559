"""Progress reporting: one bar over a whole job (with ETA), shared by generate, replay, ingest and probe sweeps.

Library functions take ``progress``: False/None (silent), True (their own bar), or a :class:`JobBar` made by a
caller that runs several of them as one job (``generate_to_run`` over its batches, ``replay_to_run`` over its
parts), which they advance without closing. Staged work (probe sweeps, ablations) reports through the one
callback type :data:`ProgressFn` = ``(stage, done, total)``; :class:`StageBars` renders it with an ETA. One
library (tqdm) draws every bar.

Bars go to stderr and never to stdout, so ``--json`` output stays clean.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Union

ProgressFn = Callable[[str, int, int], None]  # (stage, done, total): the callback staged work reports through


class NullBar:
    """A bar that shows nothing (``progress=False``)."""

    n = 0
    total = 0

    def update(self, n: int = 1) -> None:
        pass

    def set_description(self, text: str) -> None:
        pass

    def set_total(self, total: int | None) -> None:
        pass

    def close(self) -> None:
        pass


class JobBar:
    """One tqdm bar over a whole job on stderr: done/total, rate and ETA.

    Args:
        total: units of work in the job (tokens, rows, steps).
        desc: what runs (``generate``, ``replay``, ``ingest``).
        unit: the unit's name, shown in the rate (``tok/s``, ``row/s``).
    """

    def __init__(self, total: int | None, desc: str, unit: str = "it", enabled: bool = True, position: int = 0):
        import shutil

        from tqdm.auto import tqdm

        cols = shutil.get_terminal_size((100, 20)).columns or 100  # a pty reporting 0 columns would hide the bar
        self._bar = tqdm(
            total=total,
            desc=desc,
            unit=unit,
            disable=not enabled,
            file=sys.stderr,
            ncols=cols,
            position=position,
            mininterval=0.5,
            dynamic_ncols=False,
        )

    @property
    def n(self) -> int:
        return int(self._bar.n)

    @property
    def total(self) -> int | None:
        return self._bar.total

    def update(self, n: int = 1) -> None:
        if n:
            self._bar.update(n)

    def set_description(self, text: str) -> None:
        self._bar.set_description_str(text, refresh=False)

    def set_total(self, total: int | None) -> None:
        """Change the job's size (a stage learns its real size late); the ETA follows."""
        self._bar.total = total
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> "JobBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Borrowed:
    """A caller's bar lent to a sub-step: advanced, never closed by the borrower."""

    def __init__(self, bar: Any):
        self._bar = bar

    def update(self, n: int = 1) -> None:
        self._bar.update(n)

    def set_description(self, text: str) -> None:
        self._bar.set_description(text)

    def set_total(self, total: int | None) -> None:
        if hasattr(self._bar, "set_total"):
            self._bar.set_total(total)

    @property
    def n(self) -> int:
        return int(getattr(self._bar, "n", 0))

    @property
    def total(self) -> int | None:
        return getattr(self._bar, "total", None)

    def close(self) -> None:
        pass


Progress = Union[bool, None, JobBar, NullBar]


def bar_for(progress: Any, total: int, desc: str, unit: str = "it") -> Any:
    """The bar a library function reports to: silent, its own (``True``), or the caller's job bar."""
    if progress is None or progress is False:
        return NullBar()
    if progress is True:
        return JobBar(total, desc, unit)
    return _Borrowed(progress)


class StageBars:
    """Renders :data:`ProgressFn` calls: one bar per stage with done/total, rate, elapsed and ETA (stderr).

    The same library (tqdm) and layout as :class:`JobBar`, so every command's progress reads alike.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._bars: dict[str, Any] = {}

    def __enter__(self) -> "StageBars":
        return self

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        bar = self._bars.get(stage)
        if bar is None:
            bar = self._bars[stage] = JobBar(total, stage, "it", position=len(self._bars))
        if bar.total != total:
            bar.set_total(total)
        bar.update(done - bar.n)

    def __exit__(self, *exc: Any) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


__all__ = ["ProgressFn", "JobBar", "NullBar", "StageBars", "bar_for", "Progress"]
