"""Sphinx configuration (MyST Markdown pages)."""

project = "zerorag_guard"
author = "zerorag_guard developers"
copyright = "2026, zerorag_guard developers"
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
html_theme = "furo"
myst_heading_anchors = 3
autodoc_member_order = "bysource"
autodoc_typehints = "description"
nitpicky = False
