"""Write README.md from nbs/index.ipynb (nbdev_readme needs Quarto, which is not available).

The notebook's stored outputs are used as they are (nothing is executed); nbdev's
directives are honoured as on the docs site: `#| hide` cells are dropped, `#|` lines are
stripped, `#| echo: false` / `#| output: false` drop the input / the outputs. Images
in outputs go to README_files/.

Usage: python tools/make_readme.py            write README.md (and README_files/)
       python tools/make_readme.py --execute  run nbs/index.ipynb first (its tables come from the code), then write
       python tools/make_readme.py --check    exit 1 if they differ from what would be written
"""
import re
import sys
from pathlib import Path

import nbformat
from nbconvert import MarkdownExporter
from traitlets.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from docs_prep import ROOT, apply_directives, test_flags  # noqa: E402

SOURCE = ROOT / "nbs" / "index.ipynb"
README = ROOT / "README.md"
FILES = "README_files"
HEADER = ("<!-- Generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook, "
          "then run `python tools/make_readme.py`. -->\n\n")
STYLE = re.compile(r"<style[^>]*>.*?</style>\s*", re.S)  # pandas' table CSS shows as text on GitHub


def render():
    "README text and {relative path: bytes} of its extracted images."
    nb = apply_directives(nbformat.read(SOURCE, as_version=4), test_flags())
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            html = out.get("data", {}).get("text/html")
            if html:
                out["data"]["text/html"] = STYLE.sub("", html if isinstance(html, str) else "".join(html))
    c = Config()
    c.TagRemovePreprocessor.enabled = True
    c.TagRemovePreprocessor.remove_cell_tags = {"remove-cell"}
    c.TagRemovePreprocessor.remove_input_tags = {"remove-input"}
    c.TagRemovePreprocessor.remove_all_outputs_tags = {"remove-output"}
    body, resources = MarkdownExporter(config=c).from_notebook_node(
        nb, resources={"unique_key": "README", "output_files_dir": FILES})
    body = re.sub(r"^[ \t]+$", "", body, flags=re.M)  # blank lines nbconvert indents
    text = HEADER + re.sub(r"\n{3,}", "\n\n", body).strip() + "\n"
    return text, resources.get("outputs", {})


def execute():
    "Run nbs/index.ipynb in place with this interpreter's kernel, then clean it as nbdev_clean does."
    import subprocess
    from nbclient import NotebookClient
    nb = nbformat.read(SOURCE, as_version=4)
    resources = {"metadata": {"path": str(SOURCE.parent)}}
    NotebookClient(nb, timeout=600, kernel_name="python3", resources=resources).execute()
    nbformat.write(nb, SOURCE)
    subprocess.run([str(Path(sys.executable).parent / "nbdev_clean"), "--fname", str(SOURCE)], check=True)


def current_files():
    folder = ROOT / FILES
    return {f"{FILES}/{p.name}": p.read_bytes() for p in folder.iterdir()} if folder.is_dir() else {}


def main(check=False):
    if not SOURCE.exists():
        sys.exit("make_readme: nbs/index.ipynb is missing; README.md is generated from it.")
    text, files = render()
    if check:
        old = README.read_text(encoding="utf-8") if README.exists() else None
        if old != text or current_files() != files:
            sys.exit("README.md is out of sync with nbs/index.ipynb.\n"
                     "Fix: python tools/make_readme.py, then commit README.md"
                     + (f" and {FILES}/" if files or current_files() else "") + ".")
        print("README.md is in sync with nbs/index.ipynb.")
        return
    README.write_text(text, encoding="utf-8")
    stale = set(current_files()) - set(files)
    for name in stale:
        (ROOT / name).unlink()
    for name, data in files.items():
        (ROOT / name).parent.mkdir(exist_ok=True)
        (ROOT / name).write_bytes(data)
    if (ROOT / FILES).is_dir() and not files:
        (ROOT / FILES).rmdir()
    print(f"Wrote README.md ({len(files)} image(s)) from nbs/index.ipynb.")


if __name__ == "__main__":
    args = sys.argv[1:]
    if args not in ([], ["--check"], ["--execute"]):
        sys.exit(__doc__)
    if args == ["--execute"]:
        execute()
    main(check=args == ["--check"])
