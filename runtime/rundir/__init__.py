"""The run directory: the one owner of its format (docs/ARCHITECTURE.md, "Run directory").

* :mod:`.schema`: every table's name, path, columns and dtypes, and the schema version.
* :mod:`.store`: :class:`RunStore`, the manifest, atomic checksummed files and the data-safety rules.
* :mod:`.writer`: the per-trace contract tables and :class:`RunWriter` (resumable parts).
* :mod:`.reader`: :class:`RunReader` (whole run, one trace, unfinished parts, K/V by :class:`KVKey`).
* :mod:`.kv`: :class:`KVKey` and the items captures collect.
* :mod:`.tables`: domain objects as run tables and back (occupancy).

Everything that writes or reads a run goes through these; nothing else spells out the layout.
"""

from .kv import VARIANTS, KVKey
from .reader import KVEntry, KVReader, RunReader, open_run
from .schema import (
    ABLATIONS,
    ATTN_INDEX,
    EVENTS,
    KV_INDEX,
    OCCUPANCY,
    PART_TABLES,
    PROBE_RESULTS,
    SCHEMA_VERSION,
    TABLES,
    TOKENS,
    TRACE_TABLES,
    TRACES,
    Column,
    Table,
    table,
)
from .store import MANIFEST, CorruptFile, RunError, RunStore, UnsafePath
from .tables import occupancies_from_table, occupancy_table
from .writer import RunWriter, trace_tables

__all__ = [
    "SCHEMA_VERSION",
    "Column",
    "Table",
    "TABLES",
    "TRACE_TABLES",
    "PART_TABLES",
    "TRACES",
    "TOKENS",
    "EVENTS",
    "OCCUPANCY",
    "KV_INDEX",
    "ATTN_INDEX",
    "PROBE_RESULTS",
    "ABLATIONS",
    "table",
    "MANIFEST",
    "RunStore",
    "RunError",
    "CorruptFile",
    "UnsafePath",
    "RunReader",
    "KVReader",
    "KVEntry",
    "KVKey",
    "VARIANTS",
    "open_run",
    "RunWriter",
    "trace_tables",
    "occupancy_table",
    "occupancies_from_table",
]
