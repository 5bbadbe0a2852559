"""The one error hierarchy of memento-lens.

Every error a user can cause (a bad file, option, config, model, run directory or output path) is a
:class:`MementoLensError` subclass whose message names the culprit: the file, trace, line, token index
or option at fault. The CLI catches :class:`MementoLensError` only and prints its message on one line;
anything else is a bug and keeps its traceback. The Python API raises the same classes.

Each kind also subclasses the builtin a Python caller would expect (``ValueError`` for bad values,
``OSError`` for unwritable outputs), so ``except ValueError`` in user code keeps working.
"""

from __future__ import annotations


class MementoLensError(Exception):
    """Base of every error a user can cause; the message names what is at fault."""


class OptionError(MementoLensError, ValueError):
    """A command-line option or API argument is out of range or inconsistent; names the option."""


class ConfigError(MementoLensError, ValueError):
    """A configuration value is missing or out of range; the message names the option or field."""


class InputFileError(MementoLensError, ValueError):
    """An input file (traces, prompts, JSON, JSONL) is unreadable or malformed; names file, line, field."""


class ModelError(MementoLensError, ValueError):
    """A model spec cannot be resolved or loaded, or does not fit the request; names the path or spec."""


class RunDirError(MementoLensError, RuntimeError):
    """A run directory is missing, foreign, incomplete, corrupt or of another schema; names the file."""


class OutputError(MementoLensError, OSError):
    """An output cannot be written (read-only, disk full, an existing file in the way); names the path."""
