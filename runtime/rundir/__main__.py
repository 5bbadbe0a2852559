"""``python -m memento_lens.runtime.rundir``: print every run table (name, path, columns, dtypes)."""

from .schema import describe

print(describe())
