"""The run-directory tables: each table's file, columns, dtypes and the schema version, defined once.

Every producer builds its frames through :meth:`Table.frame` / :meth:`Table.empty` and every reader checks
them with :meth:`Table.check`; no other module spells out a run table's columns. To add a column to a table,
add one ``Column(...)`` line to its definition below (``required=False`` so runs written before it still
read: readers fill it with nulls).

Dtypes: ``str`` (Python strings, object), ``int64``, ``Int64`` (nullable integer), ``float64``, ``bool``,
``list[int]`` (a list of integers per row).

Every other file of a run (JSON summaries, the feature cache, figures, K/V and attention shards) is declared below
as an :class:`Artifact` (its path template, format and writer) or a path helper; the chance level of the passcode
label is :data:`PASSCODE_CHANCE`. Nothing else spells out a run's file names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from ..errors import RunDirError

# Bump when a table changes incompatibly (a column renamed, removed or retyped); add an entry to
# ``store.MIGRATIONS`` or let older runs be refused. Adding an optional column does not need a bump.
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Column:
    """One column: its name, dtype, and whether a reader refuses a table without it."""

    name: str
    dtype: str
    doc: str = ""
    required: bool = True


@dataclass(frozen=True)
class Table:
    """One table of the run contract.

    Attributes:
        name: short name (``tokens``).
        path: the merged table's path inside the run (``tokens.parquet``).
        columns: in order.
        part: its file name inside an unfinished run's ``parts/NNNNN/`` (None: never written in parts).
        extra_columns: whether producers may add columns of their own (e.g. ``domain`` of ingested traces).
    """

    name: str
    path: str
    columns: tuple[Column, ...]
    part: str | None = None
    extra_columns: bool = False
    doc: str = ""
    _by_name: dict[str, Column] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_name.update({c.name: c for c in self.columns})

    @property
    def names(self) -> list[str]:
        """Column names, in order."""
        return [c.name for c in self.columns]

    @property
    def required(self) -> list[str]:
        return [c.name for c in self.columns if c.required]

    @property
    def part_path(self) -> str | None:
        return None if self.part is None else f"{self.part}.parquet"

    def empty(self) -> pd.DataFrame:
        """A zero-row frame with this table's columns and dtypes."""
        return pd.DataFrame({c.name: pd.Series(dtype=_pandas_dtype(c.dtype)) for c in self.columns})

    def frame(self, rows: pd.DataFrame | Iterable[Mapping[str, Any]] | None = None) -> pd.DataFrame:
        """Rows (dicts or a frame) as this table: columns in order with their dtypes.

        Raises ValueError naming the table and column when a column is missing (a producer's bug) or a value
        does not fit its dtype; extra columns are kept only where the table allows them.
        """
        df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows or []))
        if df.empty and not len(df.columns):
            return self.empty()
        missing = [c for c in self.required if c not in df.columns]
        if missing:
            raise ValueError(f"table {self.name}: rows lack column(s) {', '.join(missing)}")
        extra = [c for c in df.columns if c not in self._by_name]
        if extra and not self.extra_columns:
            raise ValueError(
                f"table {self.name}: unknown column(s) {', '.join(map(str, extra))} "
                "(add them to its definition in runtime/rundir/schema.py)"
            )
        out = df.copy()
        absent = {c.name for c in self.columns if c.name not in df.columns}
        for name in absent:  # optional columns a producer does not fill: nulls
            out[name] = pd.Series([None] * len(out), dtype=_nullable(self._by_name[name].dtype), index=out.index)
        out = out[self.names + extra]
        for c in self.columns:
            if c.name in absent:
                continue
            try:
                out[c.name] = _cast(out[c.name], c.dtype if c.required else _optional(out[c.name], c.dtype))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"table {self.name}: column {c.name} is not {c.dtype} ({exc})") from None
        return out.reset_index(drop=True)

    def check(self, df: pd.DataFrame, where: Any, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """A table read from ``where``: refuse it (RunDirError naming the file) when a required column is
        missing; fill optional columns added since it was written with nulls. ``columns``: only these were read.
        """
        wanted = self.names if columns is None else [c for c in columns if c in self._by_name]
        missing = [c for c in wanted if c not in df.columns and self._by_name[c].required]
        if missing:
            raise RunDirError(
                f"{where}: missing column(s) {', '.join(missing)} of table {self.name} "
                "(not written by this memento-lens version?)"
            )
        for c in wanted:
            if c not in df.columns:
                df[c] = pd.Series([None] * len(df), dtype=_nullable(self._by_name[c].dtype), index=df.index)
        return df


def _pandas_dtype(dtype: str) -> Any:
    return {
        "str": object,
        "int64": "int64",
        "Int64": "Int64",
        "float64": "float64",
        "bool": "bool",
        "boolean": "boolean",
        "list[int]": object,
    }[dtype]


def _optional(s: pd.Series, dtype: str) -> str:
    """An optional column holding nulls keeps them (nullable integer / boolean)."""
    if s.isna().any():
        return {"int64": "Int64", "bool": "boolean"}.get(dtype, dtype)
    return dtype


def _nullable(dtype: str) -> Any:
    return {
        "str": object,
        "int64": "Int64",
        "Int64": "Int64",
        "float64": "float64",
        "bool": "boolean",
        "list[int]": object,
    }[dtype]


def _cast(s: pd.Series, dtype: str) -> pd.Series:
    if dtype == "str":
        if pd.api.types.is_string_dtype(s) and pd.api.types.infer_dtype(s, skipna=True) in ("string", "empty"):
            return s  # already strings (the common case; a C-speed check)
        return s.map(lambda v: v if v is None or isinstance(v, str) or v is pd.NA else str(v)).astype(object)
    if dtype == "list[int]":
        return s.map(lambda v: v if v is None else [int(x) for x in v]).astype(object)
    if dtype == "int64" and s.isna().any():
        raise ValueError("holds nulls")
    return s.astype(_pandas_dtype(dtype))


S, I, NI, F = "str", "int64", "Int64", "float64"

TRACES = Table(
    "traces",
    "traces.parquet",
    (
        Column("trace", S, "trace id, unique within the run"),
        Column("n_tokens", I),
        Column("prompt_len", I),
        Column("n_blocks", I),
        Column("mode", S, "vanilla / memento / restart"),
        Column("source", S, "generate, replay, the ingested file, ..."),
    ),
    part="traces",
    extra_columns=True,
    doc="one row per trace; in parts, written last (a part's commit marker)",
)
TOKENS = Table(
    "tokens",
    "tokens.parquet",
    (
        Column("trace", S),
        Column("pos", I),
        Column("token_id", I),
        Column("token", S, "display string"),
        Column("role", S, "Role value"),
        Column("block", I, "0-based block, -1 none"),
    ),
    part="tokens",
)
EVENTS = Table(
    "events",
    "events.parquet",
    (
        Column("trace", S),
        Column("kind", S),
        Column("position", I),
        Column("start", I),
        Column("end", I),
        Column("block", I, "-1 none"),
        Column("rewind_to", NI, "restart events: the memento's <|summary_start|>", required=False),
        Column("message", S, required=False),
    ),
    part="events",
)
OCCUPANCY = Table(
    "occupancy",
    "occupancy.parquet",
    (
        Column("trace", S),
        Column("mode", S, "vanilla / memento / restart"),
        Column("step", I, "pos of the token just processed"),
        Column("tokens", I, "KV entries held"),
        Column("bytes", I),
    ),
    part="occupancy",
)
KV_INDEX = Table(
    "kv_index",
    "kv/index.parquet",
    (
        Column("trace", S),
        Column("variant", S, "normal / restart / evicted_block"),
        Column("layer", I),
        Column("block", I),
        Column("start", I, "positions [start, end) the tensors cover"),
        Column("end", I),
        Column("shard", S, "run-relative safetensors path"),
        Column("key", S, "tensor name of K [1, kv_heads, end-start, d_head]"),
        Column("value", S, "tensor name of V"),
    ),
    part="kv_index",
)
ATTN_INDEX = Table(
    "attn_index",
    "attention/index.parquet",
    (
        Column("trace", S),
        Column("variant", S),
        Column("layer", I),
        Column("query_pos", I),
        Column("shard", S, "run-relative safetensors path"),
        Column(
            "tensor",
            S,
            "tensor name of weights [1, heads, n_keys]: float16 over the keys visible to the query (in position "
            "order; runtime.capture.expand_attention), or over every position (float32 in older runs)",
        ),
    ),
    part="attn_index",
)
# Sentinels of the result tables, one meaning each (issue 20). ``layer``: ALL_LAYERS marks rows whose features
# concatenate every probed layer; it is never a layer index (``--layers`` reads -1 as the last layer and accepts
# -n_layers..n_layers-1 only). ``head``: ALL_HEADS = every KV head at once (head indices are >= 0). ``distance``:
# CAUSAL_DISTANCE = the causal control's memento (before the block; masked distances start at 1).
ALL_LAYERS = -999
ALL_HEADS = -1
CAUSAL_DISTANCE = -1
# ``ablations`` ``layer``: NO_LAYER marks rows about no single patched layer: the restart ablation (every layer's
# memento K/V recomputed) and the patch experiment's unpatched base worlds. Its ``head``: ALL_HEADS as above.
NO_LAYER = -1
SENTINELS = {"layer": {ALL_LAYERS: "all"}, "head": {ALL_HEADS: "all"}, "distance": {CAUSAL_DISTANCE: "ctrl"}}


def _reference_columns(world: str, what: str) -> tuple[Column, ...]:
    """The six optional columns of one reference world: its accuracy, and the implicit excess against it, each
    with its CI (the names ``probes.passcode`` writes: ``<world>_accuracy``, ``excess_<world>``, ``*_ci_low/high``)."""
    return (
        Column(f"{world}_accuracy", F, f"reference world: {what}", required=False),
        Column(f"{world}_ci_low", F, required=False),
        Column(f"{world}_ci_high", F, required=False),
        Column(f"excess_{world}", F, f"accuracy - {world}_accuracy (paired, hierarchical bootstrap)", required=False),
        Column(f"excess_{world}_ci_low", F, required=False),
        Column(f"excess_{world}_ci_high", F, required=False),
    )


PROBE_RESULTS = Table(
    "probe_results",
    "probe_results.parquet",
    (
        Column("model", S),
        Column("checkpoint", S),
        Column("condition", S, "direct / masked / causal_control"),
        Column("distance", I, "CAUSAL_DISTANCE (-1): the causal control's memento"),
        Column("layer", I, "ALL_LAYERS (-999): every probed layer concatenated"),
        Column("head", I, "ALL_HEADS (-1): every KV head"),
        Column("probe", S, "mlp / linear"),
        Column("seed", I),
        Column("n_train", I),
        Column("n_val", I),
        Column("accuracy", F),
        Column("ci_low", F),
        Column("ci_high", F),
        Column("control_accuracy", F),
        Column("selectivity", F),
        Column("task_accuracy", F),
        # channel decomposition (issue 10): same split and validation samples in every world
        Column("task", S, "toy / trace", required=False),
        Column("role", S, "measurement / pipeline_check (causal control)", required=False),
        Column("n_seeds", NI, "probe seeds averaged", required=False),
        Column("restart_accuracy", F, "memento recomputed without its block (explicit channel)", required=False),
        Column("restart_ci_low", F, required=False),
        Column("restart_ci_high", F, required=False),
        Column("text_accuracy", F, "probe on the memento text token identities", required=False),
        Column("text_ci_low", F, required=False),
        Column("text_ci_high", F, required=False),
        Column("text_ceiling", F, "exact Bayes ceiling of the text channel (NaN: not computable)", required=False),
        Column("implicit_excess", F, "accuracy - restart_accuracy", required=False),
        Column("excess_ci_low", F, "paired bootstrap over validation samples and seeds", required=False),
        Column("excess_ci_high", F, required=False),
        Column("excess_seed_sd", F, required=False),
        Column("epochs", NI, "most epochs any of the row's probes ran", required=False),
        Column("max_epochs", NI, "the epoch cap", required=False),
        Column("hit_cap", "bool", "a probe of the row stopped at the cap (not at its plateau)", required=False),
        # issue 18: how each fit stopped, power over data seeds, the corrected causal-control check, references
        Column("best_epoch", NI, "latest best epoch among the row's fits (ridge: 1)", required=False),
        Column("stopped_by", S, "plateau / patience / cap: the worst over the row's fits", required=False),
        Column("still_improving", "bool", "some fit's stop curve still rising when it stopped", required=False),
        Column("n_data_seeds", NI, "independent data replicates pooled (own samples and split each)", required=False),
        Column("data_seed_sd", F, "sd over data seeds of the implicit excess", required=False),
        Column("check", S, "causal control: pass / fail against chance (Bonferroni over check rows)", required=False),
        Column("check_alpha", F, "per-row level of the check (0.05 / number of check rows)", required=False),
        Column("check_bound", F, "one-sided lower bound at check_alpha compared with chance", required=False),
        *_reference_columns("same_sum", "target block replaced by another with the same memento text (toy: digit sum)"),
        *_reference_columns("foreign", "another passcode in the target block, everything else the same"),
        *_reference_columns(
            "delimiter_hidden", "normal world with the target block's kept delimiters hidden after its memento"
        ),
    ),
)
PROBE_CURVES = Table(
    "probe_curves",
    "probe_curves.parquet",
    (
        Column("model", S),
        Column("checkpoint", S),
        Column("condition", S),
        Column("distance", I),
        Column("layer", I, "ALL_LAYERS (-999): every probed layer concatenated"),
        Column("head", I, "ALL_HEADS (-1): every KV head"),
        Column("probe", S),
        Column("world", S, "normal / restart / text / control"),
        Column("seed", I),
        Column("epoch", I),
        Column("train_loss", F),
        Column("stop_accuracy", F, "accuracy on the early-stopping slice"),
        Column("data_seed", NI, "which data replicate (issue 18)", required=False),
        Column("best_epoch", NI, "this fit's best epoch", required=False),
        Column("stopped_by", S, "plateau / patience / cap", required=False),
        Column("still_improving", "bool", "the stop curve still rising at the stop", required=False),
    ),
)
ABLATIONS = Table(
    "ablations",
    "ablations.parquet",
    (
        Column("experiment", S, "restart / patch"),
        Column("model", S),
        Column("checkpoint", S),
        Column("variant", S),
        Column("layer", I, "NO_LAYER (-1): restart rows and unpatched bases"),
        Column("head", I, "ALL_HEADS (-1): every KV head"),
        Column("direction", S),
        Column("metric", S),
        Column("value", F),
        Column("ci_low", F),
        Column("ci_high", F),
        Column("n", I),
    ),
)

ABLATION_BLOCKS = Table(
    "ablation_blocks",
    "ablation_blocks.parquet",
    (
        Column("experiment", S, "restart"),
        Column("model", S),
        Column("segment", I, "the block whose memento is scored (1-based segment of the layout)"),
        Column("variant", S, "normal / restart"),
        Column("metric", S, "accuracy / nll / kl"),
        Column("value", F),
        Column("ci_low", F),
        Column("ci_high", F),
        Column("n", I),
    ),
    doc="per-segment detail of the restart ablation",
)
# The passcode feature cache (``probe passcode --cache-features``): one index per world under a feature set's
# prefix (:func:`features_prefix`), naming the safetensors file and tensor of each (memento block, layer).
FEATURE_INDEX = Table(
    "feature_index",
    "features/<checkpoint>/<world>/index.parquet",
    (
        Column("memento_block", I, "0-based block whose memento supplies the features"),
        Column("layer", I),
        Column("file", S, "run-relative safetensors path (features/<checkpoint>/<world>/layer-XX.safetensors)"),
        Column("tensor", S, "tensor name: [n, kv_heads, n_positions, 2 * d_head] (K and V concatenated)"),
        Column("positions", "list[int]", "the memento positions the features were taken at"),
    ),
    doc="one per feature set and world; found by features_index_path(prefix, world)",
)

TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        TRACES,
        TOKENS,
        EVENTS,
        OCCUPANCY,
        KV_INDEX,
        ATTN_INDEX,
        PROBE_RESULTS,
        PROBE_CURVES,
        ABLATIONS,
        ABLATION_BLOCKS,
        FEATURE_INDEX,
    )
}
# The per-trace tables every trace-producing run (generate, replay, ingest) writes.
TRACE_TABLES: tuple[Table, ...] = (TRACES, TOKENS, EVENTS, OCCUPANCY)
# Tables a capture writes in parts/NNNNN/ and merges on finish (traces last: the commit marker).
PART_TABLES: tuple[Table, ...] = (TOKENS, EVENTS, OCCUPANCY, KV_INDEX, ATTN_INDEX, TRACES)
BY_PATH: dict[str, Table] = {t.path: t for t in TABLES.values() if "<" not in t.path}

FIGURES_DIR = "figures/"
FIGURE_FORMATS = ("csv", "md", "html", "png")  # figures/<name>.<format>
# In a folder that is not a run (``figures -o DIR``): the sha256 of every figure file memento-lens wrote there,
# so a later render replaces only those (a user's own file of the same name is refused).
FIGURES_RECORD = ".memento-lens-figures.json"
PARTS_DIR = "parts/"


def part_dir(part: int) -> str:
    """``parts/NNNNN``: where part ``part`` of an unfinished run keeps its tables."""
    return f"{PARTS_DIR}{int(part):05d}"


PASSCODE_CHANCE = 0.1  # the passcode label is one of 10 digits per position (the paper's chance line, toy and real)


@dataclass(frozen=True)
class Artifact:
    """A run file that is not one of the tables: its run-relative path (a ``str.format`` template), format,
    the command that writes it, and what it holds."""

    name: str
    path: str
    format: str
    writer: str
    doc: str = ""

    def at(self, **fields: Any) -> str:
        """The path with its template fields filled (``KV_SHARD.at(part=3)`` -> ``kv/shard-00003.safetensors``)."""
        return self.path.format(**fields)

    def pattern(self) -> "re.Pattern[str]":
        """A regex matching every path of this artifact (template fields as wildcards)."""
        out, pos = "", 0
        for m in re.finditer(r"\{[^}]*\}", self.path):
            out += re.escape(self.path[pos : m.start()]) + ("\\d+" if ":0" in m.group() else "[^/]+")
            pos = m.end()
        return re.compile("^" + out + re.escape(self.path[pos:]) + "$")


PASSCODE_SUMMARY = Artifact(
    "passcode_summary",
    "passcode_summary.json",
    "json",
    "probe passcode",
    "summary (chance, per condition and probe: accuracy, restart, text, implicit excess by layer and distance), "
    "skipped requests, info per model",
)
RESTART_SUMMARY = Artifact(
    "restart_summary", "restart_summary.json", "json", "ablate restart", "rows (ablations.parquet) and info"
)
PATCH_SUMMARY = Artifact(
    "patch_summary", "patch_summary.json", "json", "ablate patch", "rows (ablations.parquet), info and method"
)
INGEST_REPORT = Artifact(
    "ingest_report", "ingest_report.json", "json", "ingest", "what was read, kept and skipped, and why"
)
TRACES_META = Artifact("traces_meta", "traces_meta.json", "json", "ingest", "per-trace metadata of the source files")
KV_SHARD = Artifact(
    "kv_shard", "kv/shard-{part:05d}.safetensors", "safetensors", "capture", "K/V tensors named by kv/index.parquet"
)
ATTN_SHARD = Artifact(
    "attn_shard",
    "attention/shard-{part:05d}.safetensors",
    "safetensors",
    "capture",
    "attention weights named by attention/index.parquet",
)
FIGURE = Artifact(
    "figure",
    "figures/{name}.{format}",
    "csv / md / html / png",
    "figures",
    "a paper figure: the plotted numbers (csv), tables (md), interactive (html), static (png)",
)
FEATURE_TEXT = Artifact(
    "feature_text", "{prefix}/text.json", "json", "probe passcode --cache-features", "task and text ceilings"
)
FEATURE_TEXT_TOKENS = Artifact(
    "feature_text_tokens",
    "{prefix}/text.safetensors",
    "safetensors",
    "probe passcode --cache-features",
    "memento<block>: [n, n_text] int64 token ids of the memento text",
)
FEATURE_LABELS = Artifact(
    "feature_labels", "{prefix}/{world}/labels.safetensors", "safetensors", "probe passcode --cache-features"
)
FEATURE_LAYER = Artifact(
    "feature_layer",
    "{prefix}/{world}/layer-{layer:02d}.safetensors",
    "safetensors",
    "probe passcode --cache-features",
    "memento<block>: the features of one layer (FEATURE_INDEX names them)",
)
FEATURES_DIR = "features"
FEATURE_WORLDS = ("normal", "restart")
ARTIFACTS: dict[str, Artifact] = {
    a.name: a
    for a in (
        PASSCODE_SUMMARY,
        RESTART_SUMMARY,
        PATCH_SUMMARY,
        INGEST_REPORT,
        TRACES_META,
        KV_SHARD,
        ATTN_SHARD,
        FIGURE,
        FEATURE_TEXT,
        FEATURE_TEXT_TOKENS,
        FEATURE_LABELS,
        FEATURE_LAYER,
    )
}


def features_prefix(checkpoint: str = "") -> str:
    """Where one model's cached passcode features live: ``features/<checkpoint>`` (``features`` without one)."""
    return f"{FEATURES_DIR}/{checkpoint}" if checkpoint else FEATURES_DIR


def features_index_path(prefix: str, world: str) -> str:
    """``<prefix>/<world>/index.parquet``: the :data:`FEATURE_INDEX` of one world of a feature set."""
    return f"{prefix}/{world}/index.parquet"


def feature_replicate_prefix(prefix: str, data_seed: int) -> str:
    """``<prefix>/data-<d>``: one data replicate of a feature set (its own samples and split)."""
    return f"{prefix}/data-{int(data_seed)}"


def feature_sets(files: Iterable[str], under: str = FEATURES_DIR) -> list[str]:
    """Every feature-set prefix under ``under`` among a run's recorded files (``features``,
    ``features/<checkpoint>``, ``features/<checkpoint>/data-<d>``, ...): the folders holding a
    :data:`FEATURE_TEXT`, sorted (data replicates by their number)."""
    suffix = "/" + FEATURE_TEXT.at(prefix="").lstrip("/")
    found = {f[: -len(suffix)] for f in files if f.endswith(suffix) and (f + "/").startswith(under.rstrip("/") + "/")}

    def key(p: str):
        m = re.search(r"/data-(\d+)$", p)
        return (p[: m.start()] if m else p, int(m.group(1)) if m else -1)

    return sorted(found, key=key)


def feature_checkpoints(files: Iterable[str]) -> list[str]:
    """The checkpoints with cached features (``features/<checkpoint>/...``; ``""`` for ``features`` itself)."""
    out = set()
    for p in feature_sets(files):
        rest = p[len(FEATURES_DIR) :].strip("/").split("/")
        out.add("" if not rest[0] or rest[0].startswith("data-") else rest[0])
    return sorted(out)


def figure_path(name: str, fmt: str) -> str:
    """``figures/<name>.<fmt>`` (fmt one of :data:`FIGURE_FORMATS`)."""
    return FIGURE.at(name=name, format=fmt)


def is_shard(rel: str) -> bool:
    """Whether ``rel`` is a K/V shard (``kv/shard-NNNNN.safetensors``)."""
    return bool(KV_SHARD.pattern().match(rel))


_FEATURE_INDEX_RE = re.compile(r"^features(/[^/]+)*/[^/]+/index\.parquet$")


def table_at(rel: str) -> Table | None:
    """The table a run-relative path holds: a top-level table, a part of one, or a feature index; else None."""
    t = BY_PATH.get(rel)
    if t is not None:
        return t
    m = re.match(r"^parts/\d{5}/([a-z_]+)\.parquet$", rel)
    if m:
        return next((t for t in PART_TABLES if t.part == m.group(1)), None)
    return FEATURE_INDEX if _FEATURE_INDEX_RE.match(rel) else None


def table(name_or_path: str) -> Table:
    """The table with this name (``tokens``) or path (``tokens.parquet``)."""
    t = TABLES.get(name_or_path) or BY_PATH.get(name_or_path)
    if t is None:
        raise KeyError(f"no run table {name_or_path!r}; tables: {', '.join(TABLES)}")
    return t


__all__ = [
    "SCHEMA_VERSION",
    "Column",
    "Table",
    "TABLES",
    "TRACE_TABLES",
    "PART_TABLES",
    "BY_PATH",
    "TRACES",
    "TOKENS",
    "EVENTS",
    "OCCUPANCY",
    "KV_INDEX",
    "ATTN_INDEX",
    "PROBE_RESULTS",
    "PROBE_CURVES",
    "ABLATIONS",
    "ABLATION_BLOCKS",
    "FEATURE_INDEX",
    "FIGURES_DIR",
    "FIGURE_FORMATS",
    "FIGURES_RECORD",
    "PARTS_DIR",
    "part_dir",
    "PASSCODE_CHANCE",
    "ALL_LAYERS",
    "ALL_HEADS",
    "CAUSAL_DISTANCE",
    "NO_LAYER",
    "SENTINELS",
    "Artifact",
    "ARTIFACTS",
    "PASSCODE_SUMMARY",
    "RESTART_SUMMARY",
    "PATCH_SUMMARY",
    "INGEST_REPORT",
    "TRACES_META",
    "KV_SHARD",
    "ATTN_SHARD",
    "FIGURE",
    "FEATURE_TEXT",
    "FEATURE_TEXT_TOKENS",
    "FEATURE_LABELS",
    "FEATURE_LAYER",
    "FEATURES_DIR",
    "FEATURE_WORLDS",
    "features_prefix",
    "features_index_path",
    "feature_sets",
    "feature_checkpoints",
    "feature_replicate_prefix",
    "figure_path",
    "is_shard",
    "table_at",
    "table",
]


def describe() -> str:
    """Every run table as Markdown (``python -m memento_lens.runtime.rundir``)."""
    lines = [f"# Run tables (schema version {SCHEMA_VERSION})"]
    for t in TABLES.values():
        lines += [
            "",
            f"## `{t.path}` ({t.name})" + (f": {t.doc}" if t.doc else ""),
            "",
            "| column | dtype | |",
            "| --- | --- | --- |",
        ]
        lines += [f"| `{c.name}` | {c.dtype}{'' if c.required else ', optional'} | {c.doc} |" for c in t.columns]
    lines += ["", "# Other run files", "", "| path | format | written by | |", "| --- | --- | --- | --- |"]
    lines += [f"| `{a.path}` | {a.format} | {a.writer} | {a.doc} |" for a in ARTIFACTS.values()]
    lines += [f"\nPasscode chance level: {PASSCODE_CHANCE}"]
    return "\n".join(lines)
