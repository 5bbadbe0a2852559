"""memento-lens: interpretability for erased-block KV traces.

The user-facing top-level folders (``runtime/``, ``probes/``, ``analyses/``, ``app/``) are installed as
``memento_lens.runtime`` etc. (see ``[tool.setuptools.package-dir]`` in pyproject.toml), so no
generic top-level names land in site-packages. Importing this package has no side effects.
"""

__version__ = "0.1.0"
