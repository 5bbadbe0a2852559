"""Compatibility names: captured K/V types live in :mod:`.rundir.kv`, the readers in :mod:`.rundir.reader`."""

from .rundir import schema
from .rundir.kv import VARIANTS, AttnItem, CaptureSink, KVItem, KVKey
from .rundir.reader import KVReader

KV_INDEX = schema.KV_INDEX.path
ATTN_INDEX = schema.ATTN_INDEX.path

__all__ = ["KVKey", "KVItem", "AttnItem", "CaptureSink", "KVReader", "VARIANTS", "KV_INDEX", "ATTN_INDEX"]
