"""Sphinx configuration of cudeform's documentation.

Build it with ``sphinx-build -W -b html docs <folder>`` after
``pip install -e '.[docs]'``. The API reference is generated from the docstrings
(autosummary, Google style through napoleon); the pages are Markdown (MyST).
Chainer, which needs a constraint file to install (see the Chainer page), is mocked
when it is missing, so the site builds from the ``docs`` extra alone.
"""

from __future__ import annotations

import importlib.util

import cudeform

project = "cudeform"
author = "cudeform contributors"
copyright = "2026, cudeform contributors"
release = cudeform.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
templates_path = ["_templates"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autosummary_generate = True
autodoc_typehints = "description"
autodoc_member_order = "bysource"
autodoc_mock_imports = [name for name in ("chainer",)
                        if importlib.util.find_spec(name) is None]
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = f"cudeform {release}"
