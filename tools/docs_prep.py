"""Prepare the Sphinx source folder `docs/nbs/` from the notebooks in `nbs/`.

nbdev's own renderer (Quarto) is not available, so this script applies nbdev's cell
directives itself and hands myst-nb notebooks that it can execute and render as they are:

- `#| hide` / `#| include: false`: the cell still runs (later cells may need its
  imports) but is removed from the page (myst-nb tag `remove-cell`);
- `#| eval: false` and test flags from settings.ini (`#| slow`): not executed, stored
  outputs shown (tag `skip-execution`);
- `#| echo: false` / `#| output: false`: tags `remove-input` / `remove-output`;
- every leading `#|` directive line (`#| export`, ...) is stripped from the shown code.

It also writes the navigation pages (module notebooks in their numbered order,
walkthroughs, the API reference with one page per generated module). `nbs/jobs/` is
copied unprocessed, only so that notebooks can reach it by relative path; conf.py
excludes it from the site. `make_readme.py` uses the same directive reading.

Usage: python tools/docs_prep.py   (from anywhere; paths are relative to the repo)
"""
import ast
import configparser
import re
import shutil
import sys
from pathlib import Path

import nbformat
from nbdev.process import extract_directives, first_code_ln

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / "nbs"
OUT = ROOT / "docs" / "nbs"
SKIP = re.compile(r"^[_.]")  # nbdev skips files and folders starting with _ or .
DIRECTIVE_LINE = re.compile(r"^\s*#\s*\|")
HIDE_LINE = re.compile(r"#\|\s*hide_line\s*$")
# Other files are copied so notebooks can read them by relative path; these would become pages.
NOT_DATA = {".ipynb", ".md", ".rst"}


def settings():
    cfg = configparser.ConfigParser(delimiters=["="])
    cfg.read(ROOT / "settings.ini", encoding="utf-8")
    return cfg["DEFAULT"]


def test_flags():
    return set(settings().get("tst_flags", "").split())


def cell_options(cell, flags):
    "nbdev's reading of a code cell's directives, as the options that matter for rendering."
    d = extract_directives(cell, remove=False)
    return {
        "hide": "hide" in d or d.get("include:") == ["false"],
        "no_eval": d.get("eval:") == ["false"] or bool(flags & d.keys()),
        "no_echo": d.get("echo:") == ["false"],
        "no_output": d.get("output:") == ["false"],
    }


def strip_directives(source):
    "Drop the leading `#|` lines (nbdev's and Quarto's) and `#| hide_line` lines; keep cell magics."
    lines = source.splitlines(True)
    start = first_code_ln(lines)
    start = len(lines) if start is None else start
    head = [ln for ln in lines[:start] if not DIRECTIVE_LINE.match(ln)]
    body = [ln for ln in lines[start:] if not HIDE_LINE.search(ln)]
    return "".join(head + body).strip("\n")


def add_tags(cell, *tags):
    existing = cell.metadata.setdefault("tags", [])
    existing.extend(t for t in tags if t not in existing)


def apply_directives(nb, flags):
    "Tag and strip the cells of `nb` (in place) for myst-nb; returns `nb`."
    cells = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            opts = cell_options(cell, flags)
            cell.source = strip_directives(cell.source)
            if not cell.source.strip() and not cell.get("outputs"):
                continue  # e.g. the `#| default_exp` cell
            if opts["hide"]:
                add_tags(cell, "remove-cell")
            if opts["no_eval"]:
                add_tags(cell, "skip-execution")
            if opts["no_echo"]:
                add_tags(cell, "remove-input")
            if opts["no_output"]:
                add_tags(cell, "remove-output")
        cells.append(cell)
    nb.cells = cells
    # Run with the kernel of the interpreter that builds the docs, whatever the
    # notebook was last saved with (conf.py makes `python3` resolve to this venv).
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}  # nbdev_clean drops it; lexers need it
    return nb


def notebooks():
    "Notebooks nbdev would process, minus nbs/jobs/ (papermill runs those, not the site)."
    for path in sorted(NBS.rglob("*.ipynb")):
        rel = path.relative_to(NBS)
        if any(SKIP.match(part) for part in rel.parts) or rel.parts[0] == "jobs":
            continue
        yield rel


def copy_data_files():
    for path in NBS.rglob("*"):
        rel = path.relative_to(NBS)
        if path.is_file() and not any(SKIP.match(p) for p in rel.parts) and (
                rel.parts[0] == "jobs" or path.suffix not in NOT_DATA):
            (OUT / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, OUT / rel)


def title_of(rel):
    "The notebook's first markdown H1, for the API pages' back links."
    nb = nbformat.read(NBS / rel, as_version=4)
    for cell in nb.cells:
        m = re.search(r"^#\s+(.+)$", cell.source, re.M) if cell.cell_type == "markdown" else None
        if m:
            return m.group(1).strip()
    return rel.stem


def toctree(entries, caption=None, hidden=False):
    opts = (f":caption: {caption}\n" if caption else "") + (":hidden:\n" if hidden else "")
    return "```{toctree}\n:maxdepth: 1\n" + opts + "\n" + "\n".join(entries) + "\n```\n"


GUIDES = ["getting_started", "cli", "settings", "errors", "deploy", "model_card"]


def guide_order(page):
    "Guides in reading order (GUIDES), any other after them by name."
    name = page.split("/")[-1]
    return (GUIDES.index(name) if name in GUIDES else len(GUIDES), name)


def generated_modules():
    """(module name, its notebook, its syntax tree) for every module nbdev_export wrote, in
    notebook order; the notebook comes from the file's `File to edit:` header."""
    lib = settings()["lib_path"]
    found = []
    for path in sorted((ROOT / lib).rglob("*.py")):
        rel = path.relative_to(ROOT)
        parts = rel.with_suffix("").parts
        package = path.name == "__init__.py" and len(parts) > 2  # a subpackage's own module (mlprod.api)
        if any(p.startswith("_") for p in parts) and not package:
            continue  # private modules, _modidx.py, the package's __init__.py
        text = path.read_text(encoding="utf-8")
        m = re.search(r"File to edit: \.\./(?:\.\./)*nbs/(\S+\.ipynb)", text)
        if m:
            found.append((".".join(parts[:-1] if package else parts), Path(m.group(1)), ast.parse(text)))
    return sorted(found, key=lambda f: (str(f[1]), f[0]))


def summary_table(mod, tree):
    "A Markdown table of the module's `__all__`: linked name, first line of its docstring."
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    names = next((ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                  and any(getattr(t, "id", "") == "__all__" for t in n.targets)), [])
    rows = []
    for name in names:
        doc = ast.get_docstring(defs[name]) if name in defs else None
        first = (doc or "").strip().split("\n")[0].replace("|", "\\|")
        rows.append(f"| {{py:obj}}`~{mod}.{name}` | {first} |")
    return "| name | summary |\n|---|---|\n" + "\n".join(rows) + "\n" if rows else ""


def write_api_pages():
    (OUT / "api").mkdir(parents=True, exist_ok=True)
    entries = []
    for mod, nb, tree in generated_modules():
        page = [f"# `{mod}`\n", f"Generated from the notebook [{title_of(nb)}](../{nb.as_posix()}).",
                ast.get_docstring(tree) or "", summary_table(mod, tree),
                f"```{{eval-rst}}\n.. automodule:: {mod}\n   :members:\n   :show-inheritance:\n```\n"]
        (OUT / "api" / f"{mod}.md").write_text("\n\n".join(p for p in page if p), encoding="utf-8")
        entries.append(mod)
    intro = ("# API reference\n\nEvery public name of the package, module by module, "
             "as `nbdev_export` generated it from the notebooks.\n\n")
    (OUT / "api" / "index.md").write_text(intro + toctree(entries), encoding="utf-8")


def main():
    if not (NBS / "index.ipynb").exists():
        sys.exit("docs_prep: nbs/index.ipynb is missing: it is the site's landing page.")
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    copy_data_files()
    flags = test_flags()
    rels = list(notebooks())
    for rel in rels:
        nb = apply_directives(nbformat.read(NBS / rel, as_version=4), flags)
        (OUT / rel).parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, OUT / rel)

    doc = lambda rel: rel.with_suffix("").as_posix()
    modules = [doc(r) for r in rels if len(r.parts) == 1 and r.name[0].isdigit()]
    guides = sorted((doc(r) for r in rels if r.parts[0] == "guides"), key=guide_order)
    walkthroughs = [doc(r) for r in rels if doc(r) not in ("index", *modules, *guides)]
    sections = []
    for name, title, intro, pages in (
            ("guides", "Guides", "What a user reads first: the demo, the commands, the settings, the errors.", guides),
            ("walkthroughs", "Walkthroughs", "The whole path, end to end, on real data.", walkthroughs),
            ("modules", "Modules", "One notebook per module of the package, in the order the data flows.", modules)):
        if pages:
            (OUT / f"{name}.md").write_text(f"# {title}\n\n{intro}\n\n" + toctree(pages), encoding="utf-8")
            sections.append(name)
    write_api_pages()
    sections.append("api/index")

    # The landing page carries the site's navigation (the navbar comes from its toctree). Its links are written
    # for README.md at the repository's root (`nbs/guides/cli.ipynb`); on the site it sits in nbs/ itself.
    index = nbformat.read(OUT / "index.ipynb", as_version=4)
    for cell in index.cells:
        if cell.cell_type == "markdown":
            cell.source = cell.source.replace("](nbs/", "](")
    index.cells.append(nbformat.v4.new_markdown_cell(toctree(sections, hidden=True)))
    nbformat.write(index, OUT / "index.ipynb")
    print(f"docs_prep: {len(rels)} notebooks, {len(sections)} sections -> {OUT.relative_to(ROOT)}/")


if __name__ == "__main__":
    main()
