"""memento_lens.runtime: schedule, masks, generation, replay and capture.

``add_memento_tokens`` and ``load_model`` are importable from here (lazily, so importing the package stays
free of torch/transformers side effects); the MissingMementoTokens message points at the former.
"""

_LAZY = {"add_memento_tokens": "model", "load_model": "model", "from_objects": "model"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
