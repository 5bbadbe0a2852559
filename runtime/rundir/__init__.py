"""The run directory: the one owner of its format (docs/ARCHITECTURE.md, "Run directory").

``schema`` holds every table's name, path, columns and dtypes and the schema version. Everything that writes
or reads a run imports them from here.
"""

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
]
