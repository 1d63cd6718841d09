"""Sphinx configuration: the PyData theme, numpydoc, autosummary, a gallery built by running examples/, and
Markdown pages (MyST) for the findings, the definitions, the guarantees and the changelog."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MPLBACKEND", "Agg")

import gradstats  # noqa: E402

project = "gradstats"
author = "the gradstats developers"
copyright = "2026, the gradstats developers"
release = version = gradstats.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "myst_parser",
]

autosummary_generate = True
autodoc_typehints = "none"            # signatures carry them; numpydoc renders the docstrings
autodoc_default_options = {"members": False}
numpydoc_show_class_members = False
numpydoc_validation_checks: set[str] = set()
default_role = "code"                 # `x` in a docstring is code, as in numpy's and scipy's

sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",     # every plot_*.py is run
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
}

html_theme = "pydata_sphinx_theme"
html_title = "gradstats"
html_theme_options = {"show_toc_level": 2, "navigation_with_keys": False}
html_static_path: list[str] = []
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
myst_heading_anchors = 3             # #section links, as GitHub makes them
exclude_patterns = ["_build"]
templates_path: list[str] = []
