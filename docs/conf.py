"""Sphinx configuration of the btu_twisted docs: ``bash scripts/docs.sh`` builds them."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # btu_twisted, for the generated references
sys.path.insert(0, os.path.join(HERE, "_ext"))

project = "btu_twisted"
author = "btu_twisted developers"
copyright = "btu_twisted developers"

extensions = ["btu_reference"]  # writes _generated/config-reference.rst and cli-reference.rst

root_doc = "index"
exclude_patterns = ["_build", "_generated"]  # the generated pages are included, not pages
html_theme = "alabaster"  # ships with Sphinx: nothing to download
html_static_path: list[str] = []
highlight_language = "none"
