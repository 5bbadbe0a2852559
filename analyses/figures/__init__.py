"""The paper figures, one module each, and :func:`render_figures` to write them.

Each figure writes ``<name>.csv`` (exactly the plotted numbers), ``<name>.html`` (interactive plotly,
self-contained so it opens offline), ``<name>.md`` (tables) and ``<name>.png`` (static, through kaleido
and a local chromium; one browser for the whole batch). Figures whose inputs are absent are skipped with
the reason in the :class:`FigureReport`; PNG export is skipped, with the reason, when chromium is
missing. Rendering is idempotent: the same inputs give byte-identical CSV, Markdown and HTML.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from memento_lens.runtime.config import ConfigError, MementoTokenIds
from memento_lens.runtime.errors import OutputError
from memento_lens.runtime.rundir import schema
from memento_lens.runtime.rundir.reader import RunReader
from memento_lens.runtime.rundir.store import MANIFEST, RunStore, atomic_write_bytes
from memento_lens.runtime.trace import Trace

from ..kv import KVSpec, resolve_spec
from .base import Figure, FigureInputs, MissingInputs
from .compression_cdf import CompressionCDF
from .kv_sawtooth import KVSawtooth
from .probe_conditions import ProbeConditions
from .restart_ablation import RestartAblation
from .toy_leakage import ToyLeakage

REGISTRY: dict[str, Figure] = {
    f.name: f for f in (KVSawtooth(), CompressionCDF(), ProbeConditions(), ToyLeakage(), RestartAblation())
}
PNG_SIZE = dict(width=960, height=540, scale=2)


@dataclass
class FigureOutput:
    name: str
    files: list[str]
    rows: int


@dataclass
class FigureReport:
    """What :func:`render_figures` did.

    Attributes:
        out_dir: where files went.
        rendered: figures written, with their files.
        skipped: ``{name: reason}`` for figures whose inputs are absent (or that failed to plot).
        png_skipped: why PNGs were not written (None when they were).
    """

    out_dir: str
    rendered: list[FigureOutput] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    png_skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": self.out_dir,
            "rendered": [vars(r) for r in self.rendered],
            "skipped": self.skipped,
            "png_skipped": self.png_skipped,
        }


def resolve_names(names: Iterable[str] | None) -> list[str]:
    names = list(names or ["all"])
    if "all" in names:
        return list(REGISTRY)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ConfigError(f"unknown figure(s) {', '.join(unknown)}; known: all, {', '.join(REGISTRY)}")
    return list(dict.fromkeys(names))


def chromium_path() -> str | None:
    """The browser kaleido will drive: $BROWSER_PATH, or chromium / google-chrome on PATH."""
    env = os.environ.get("BROWSER_PATH")
    if env and Path(env).exists():
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        hit = shutil.which(name)
        if hit:
            return hit
    return None


@contextlib.contextmanager
def png_exporter(enabled: bool = True) -> Iterator[tuple[Any, str | None]]:
    """Yield ``(to_png(fig) -> bytes | None, reason_if_disabled)``; one kaleido browser for the batch."""
    if not enabled:
        yield (lambda fig: None), "PNG export disabled (--no-png)"
        return
    browser = chromium_path()
    if browser is None:
        yield (
            (lambda fig: None),
            (
                "chromium not found: PNG export skipped (install it with `make browser` or "
                "`apt-get install chromium`); HTML, CSV and Markdown were written"
            ),
        )
        return
    try:
        import kaleido
    except ImportError:
        yield (lambda fig: None), "kaleido not installed (pip install 'memento-lens[app]'): PNG export skipped"
        return
    os.environ.setdefault("BROWSER_PATH", browser)
    started = False
    try:
        kaleido.start_sync_server()
        started = True
    except Exception:  # already running (another batch in this process) is fine
        pass

    def to_png(fig) -> bytes:
        import warnings

        with warnings.catch_warnings():  # plotly warns that kaleido options are ignored with a server
            warnings.simplefilter("ignore", UserWarning)
            return fig.to_image(format="png", **PNG_SIZE)

    try:
        yield to_png, None
    finally:
        if started:
            with contextlib.suppress(Exception):
                kaleido.stop_sync_server()


class _FigureFiles:
    """Where figure files go, and the rule that keeps the user's files: a file is replaced only when
    memento-lens wrote it and it is unchanged since (or with ``overwrite``).

    Into a run directory's ``figures/``: through the run's store (recorded in its manifest; a store the caller
    already holds for that run is reused, so its in-memory manifest stays the one that is saved). Into any
    other folder: plain atomic writes, each recorded (sha256) in that folder's ``schema.FIGURES_RECORD``.
    """

    def __init__(self, out_dir: Path, stores: Sequence[RunStore] = (), overwrite: bool = False):
        self.out_dir, self.overwrite, self.store = out_dir, overwrite, None
        if out_dir.name == schema.FIGURES_DIR.rstrip("/") and (out_dir.parent / MANIFEST).exists():
            same = [s for s in stores if Path(s.path).resolve() == out_dir.parent.resolve()]
            self.store = same[0] if same else RunStore.open(out_dir.parent, verify=False)
        self._record_path = out_dir / schema.FIGURES_RECORD
        self._record: dict[str, str] = {}
        if self.store is None and self._record_path.is_file():
            try:
                self._record = dict(json.loads(self._record_path.read_text()))
            except (ValueError, TypeError, UnicodeDecodeError):
                self._record = {}  # a damaged record: every existing file counts as the user's

    def _ours(self, name: str, full: Path) -> bool:
        if self.store is not None:
            entry = self.store.manifest.files.get(f"{schema.FIGURES_DIR}{name}")
            return entry is not None and _sha256(full) == entry["sha256"]
        return self._record.get(name) == _sha256(full)

    def check(self, names: Iterable[str]) -> None:
        """Refuse (OutputError naming the files) to replace any existing file memento-lens did not write."""
        if self.overwrite:
            return
        theirs = [n for n in names if (self.out_dir / n).exists() and not self._ours(n, self.out_dir / n)]
        if theirs:
            raise OutputError(
                f"{self.out_dir}: {', '.join(theirs)} "
                f"{'was' if len(theirs) == 1 else 'were'} not written by memento-lens (or changed since); "
                "refusing to replace them: pass --overwrite to replace them, or choose another --out folder"
            )

    def write(self, name: str, data: bytes) -> str:
        if self.store is not None:
            self.store.add_file(f"{schema.FIGURES_DIR}{name}", lambda tmp: Path(tmp).write_bytes(data))
        else:
            atomic_write_bytes(self.out_dir / name, data)
            self._record[name] = hashlib.sha256(data).hexdigest()
            atomic_write_bytes(self._record_path, (json.dumps(self._record, indent=1, sort_keys=True) + "\n").encode())
        return str(self.out_dir / name)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def render_figures(
    names: Iterable[str] | None = None,
    *,
    runs: Sequence[str | os.PathLike | RunStore | RunReader] = (),
    traces: Sequence[str | os.PathLike | Trace] = (),
    out_dir: str | os.PathLike,
    tokenizer: Any = "approx",
    spec: str | KVSpec | None = None,
    trace_id: str | None = None,
    png: bool = True,
    token_ids: MementoTokenIds | None = None,
    overwrite: bool = False,
) -> FigureReport:
    """Render figures (``None``/``["all"]`` = every one) from run directories and/or trace files.

    Args:
        runs: run directories (paths, opened stores or readers; read through :class:`RunReader`).
        traces: trace files (ingested with ``tokenizer``; malformed rows skipped) or Trace objects
            (their vocabulary's memento ids in ``token_ids``; default: ``tokenizer``'s).
        out_dir: where ``<name>.{csv,html,md,png}`` go; a run's ``figures/`` is recorded in its manifest.
        spec: KV bytes per token (preset name, HF config path or KVSpec). Default: qwen3-8b for trace files;
            a run's occupancy keeps its own ``bytes`` (the model that produced it) unless ``spec`` is given.
        trace_id: the trace kv-sawtooth shows (default: the first).
        png: also write PNGs (needs chromium).
        overwrite: replace files in ``out_dir`` that memento-lens did not write (or that changed since it wrote
            them); without it such a file is refused (OutputError naming it) before anything is written.
    """
    from ..ingest import ingest_files
    from ..tokenization import load_tokenizer

    wanted = resolve_names(names)
    readers = [r if isinstance(r, RunReader) else RunReader(r) for r in runs]
    tok = load_tokenizer(tokenizer)
    objs = [t for t in traces if isinstance(t, Trace)]
    paths = [t for t in traces if not isinstance(t, Trace)]
    ids = token_ids or tok.ids
    if paths:
        if objs and ids != tok.ids:
            raise ConfigError(
                "trace files (tokenized with --tokenizer) and Trace objects with other token ids "
                "cannot be mixed in one call"
            )
        objs += ingest_files(paths, tok, arrays=True).traces
    inputs = FigureInputs(
        runs=readers,
        traces=objs,
        token_ids=ids,
        spec=resolve_spec(spec) if spec is not None else None,
        trace_id=trace_id,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files_out = _FigureFiles(out, [r.store for r in readers], overwrite)
    write = files_out.write
    report = FigureReport(out_dir=str(out))
    prepared = []
    for name in wanted:
        fig = REGISTRY[name]
        try:
            df = fig.data(inputs)
        except MissingInputs as exc:
            report.skipped[name] = str(exc)
            continue
        prepared.append((fig, df, fig.plot(df)))
    with png_exporter(png and bool(prepared)) as (to_png, reason):
        report.png_skipped = reason if prepared else None
        exts = schema.FIGURE_FORMATS if reason is None else tuple(e for e in schema.FIGURE_FORMATS if e != "png")
        files_out.check(f"{fig.name}.{ext}" for fig, _, _ in prepared for ext in exts)
        for fig, df, pfig in prepared:
            files = [
                write(f"{fig.name}.csv", df.to_csv(index=False, lineterminator="\n").encode()),
                write(f"{fig.name}.md", fig.markdown(df).encode()),
                write(
                    f"{fig.name}.html",
                    pfig.to_html(include_plotlyjs=True, full_html=True, div_id=f"memento-lens-{fig.name}").encode(),
                ),
            ]
            if reason is None:
                try:
                    files.append(write(f"{fig.name}.png", to_png(pfig)))
                except Exception as exc:  # a browser failure must not lose the other outputs
                    report.png_skipped = f"PNG export failed ({type(exc).__name__}: {exc})"
                    reason = report.png_skipped
            report.rendered.append(FigureOutput(fig.name, files, len(df)))
    return report


__all__ = [
    "REGISTRY",
    "Figure",
    "FigureInputs",
    "FigureOutput",
    "FigureReport",
    "MissingInputs",
    "render_figures",
    "resolve_names",
    "chromium_path",
]
