"""Sphinx configuration of the mlprod site.

The sources are docs/nbs/, written by tools/docs_prep.py from nbs/ (run tools/docs.sh).
Project facts come from settings.ini, so they are declared once. Everything runs offline:
no intersphinx, no remote assets at build time.
"""
import configparser
import os
import re
import sys
from pathlib import Path

from docutils.utils import new_document
from myst_parser.parsers.sphinx_ import MystParser
from sphinx.util.docutils import SphinxDirective

ROOT = Path(__file__).resolve().parent.parent
cfg = configparser.ConfigParser(delimiters=["="])
cfg.read(ROOT / "settings.ini", encoding="utf-8")
cfg = cfg["DEFAULT"]

# A `python3` kernel spec left in a user or system folder may point at another
# interpreter; put this interpreter's own spec first so notebooks run here.
os.environ["JUPYTER_PATH"] = os.pathsep.join(
    p for p in (str(Path(sys.prefix) / "share" / "jupyter"), os.environ.get("JUPYTER_PATH")) if p)

project = cfg["title"]
author = cfg["author"]
copyright = cfg["copyright"]
release = version = cfg["version"]

extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.viewcode"]
# A method added to a class from another module (fastcore's @patch) reports the class's module as its own; following
# it would send the source pages' [docs] links to anchors that do not exist (tools/check_site.py finds them).
viewcode_follow_imported_members = False
root_doc = "index"
exclude_patterns = ["jobs/**", "**/.ipynb_checkpoints"]

# Notebooks: always executed (cells tagged `skip-execution` by docs_prep keep their
# stored outputs). A failing cell is a warning carrying the cell and its traceback, which
# `-W` in tools/docs.sh turns into a failed build, for every failing notebook at once.
# (nb_execution_raise_on_error = True fails too, but a parallel build then hides the cause.)
nb_execution_mode = "force"
nb_execution_timeout = 600  # per cell
nb_execution_raise_on_error = False
nb_execution_show_tb = True
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3  # so `[see](#a-section)` works as in Jupyter

# API reference: nbdev modules define __all__, which autodoc follows. Their docstrings
# and docments are Markdown (nbdev renders them so), not reStructuredText: every
# docstring goes through MyST (below); the module docstring is shown by docs_prep's page.
autodoc_member_order = "bysource"
autodoc_typehints = "description"
myst_enable_extensions.append("fieldlist")  # `:param x:` fields in Markdown docstrings

NAME_IN_BACKTICKS = re.compile(r"(?<![`\w])`([A-Za-z_][\w.]*)`(?!`)")


def docments_fields(obj):
    """nbdev's parameter comments ("docments") as `:param:` fields."""
    try:
        from fastcore.docments import docments
        docs = docments(obj, full=True)
    except Exception:  # builtins, C extensions, objects without source
        return []
    fields = [f":param {p}: {d['docment']}" for p, d in docs.items() if p != "return" and d.get("docment")]
    if docs.get("return", {}).get("docment"):
        fields.append(f":returns: {docs['return']['docment']}")
    return fields


def markdown_docstring(app, what, name, obj, options, lines):
    "Hand the docstring to the `nbdev-markdown` directive; names in backticks become links."
    if what == "module":
        lines[:] = []
        return
    text = NAME_IN_BACKTICKS.sub(r"{py:obj}`\1`", "\n".join(lines)).strip()
    fields = [f for f in docments_fields(obj) if f.partition(": ")[0] + ":" not in text]
    body = "\n\n".join(part for part in (text, "\n".join(fields)) if part)
    lines[:] = [".. nbdev-markdown::", ""] + ["   " + ln for ln in body.splitlines()] if body else []


class NbdevMarkdown(SphinxDirective):
    "Its content is Markdown, parsed by MyST in place (used for docstrings)."
    has_content = True

    def run(self):
        doc = new_document(self.env.docname, self.state.document.settings)
        MystParser().parse("\n".join(self.content), doc)
        return list(doc.children)


def setup(app):
    app.add_directive("nbdev-markdown", NbdevMarkdown)
    app.connect("autodoc-process-docstring", markdown_docstring)


html_theme = "pydata_sphinx_theme"
html_title = project
html_show_sourcelink = False
html_copy_source = False
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    "icon_links": [{"name": "GitHub", "url": cfg["git_url"], "icon": "fa-brands fa-github"}],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_context = {"default_mode": "light"}
