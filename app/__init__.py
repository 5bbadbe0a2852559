"""The Streamlit exploration app (the only package that imports streamlit, and only in ``state`` and
``views/``).

Modules: ``main`` (entry script, page navigation), ``views/`` (the six pages), ``state`` (named runs,
pickers, cached reads keyed on run path + manifest fingerprint + inputs), ``data`` (the one data-access
interface over run directories), ``compute`` (pure math: evicted-at-step, attention mass by role,
residue), ``charts`` (plotly figures and HTML), ``fixtures`` (synthetic runs per the contract, for tests
and the benchmark), ``screenshots`` (docs/screenshots via headless chromium).
"""
