"""The documentation a user reads: the site's checker (headless Chromium) catches what it must, the guides are on the
site, the reference tables cover the code, and nothing points at a file a clone does not have."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import check_site  # noqa: E402
import docs_prep  # noqa: E402

NO_CHROMIUM = "Chromium is not installed: apt-get install chromium (`bash .ci/run` installs it)"
# Documents of the project's makers that a clone does not contain.
OUTSIDE = re.compile(r"\b(INTERFACES|DESIGN|TOOLCHAIN|STYLE|HELPERS)\.md\b")


def site(folder: Path, pages: dict) -> Path:
    for name, body in pages.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(f"<!doctype html><html><body>{body}</body></html>")
    return folder


PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")


@pytest.mark.skipif(not check_site.chromium(), reason=NO_CHROMIUM)
def test_site_check_passes_a_sound_site_and_names_each_fault(tmp_path):
    good = site(tmp_path / "good", {
        "index.html": f'<h1 id="top">Home</h1><a href="guides/a.html#part">a</a><img src="data:image/png;base64,{PNG}">'
                      '<a href="https://example.invalid/">outside (not followed)</a>',
        "guides/a.html": '<p id="part">A</p><a href="../index.html#top">home</a>'})
    problems, pages, images = check_site.check(good, check_site.chromium())
    assert (problems, pages, images) == ([], 2, 1)
    bad = site(tmp_path / "bad", {
        "index.html": '<p>x</p><a href="missing.html">gone</a><a href="b.html#nowhere">b</a><img src="nothing.png">',
        "b.html": "<p>b</p>",
        "model_card.html": "<p>a card without figures</p>"})
    problems, _, _ = check_site.check(bad, check_site.chromium())
    assert any("broken link to missing.html" in p for p in problems), problems
    assert any("b.html#nowhere: no such anchor" in p for p in problems), problems
    assert any("image not shown" in p and "nothing.png" in p for p in problems), problems
    assert any("model card page: 0 figure(s)" in p for p in problems), problems


def test_docs_site_is_built_and_checked_by_the_test_command():
    docs = (ROOT / "tools" / "docs.sh").read_text()
    assert "tools/check_site.py" in docs and "sphinx" in docs
    assert "bash tools/docs.sh" in (ROOT / "tools" / "test.sh").read_text()


def test_guides_come_first_on_the_site_in_reading_order():
    guides = sorted(p.stem for p in (ROOT / "nbs" / "guides").glob("*.ipynb"))
    assert {"getting_started", "cli", "settings", "errors", "model_card"} <= set(guides)
    ordered = sorted((f"guides/{g}" for g in guides), key=docs_prep.guide_order)
    assert ordered[0] == "guides/getting_started"
    index = (ROOT / "nbs" / "index.ipynb").read_text()
    for g in ("getting_started", "cli", "settings", "errors", "model_card"):
        assert f"nbs/guides/{g}.ipynb" in index  # README links to each (the site rewrites the links)


def test_no_file_refers_to_documents_outside_the_repository():
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    hits = []
    for f in files:
        path = ROOT / f
        if path.suffix in (".py", ".ipynb", ".md", ".sh", ".yml", ".yaml", ".ini", ".txt") and path.is_file() \
                and f != "tests/test_docs.py":
            hits += [f"{f}: {m.group(0)}" for m in OUTSIDE.finditer(path.read_text(errors="replace"))]
    assert not hits, "refer to the in-repo docs instead (the guides in nbs/guides/):\n" + "\n".join(hits)


def test_reference_tables_cover_the_code():
    from mlprod.reference import command_codes, commands, settings, variables_in_code
    from mlprod.spec import FIELD_ERROR_CODES
    from mlprod.reference import field_codes
    assert [c for c, _ in field_codes()] == list(FIELD_ERROR_CODES)
    rows = settings()
    documented = {s.name for s in rows} | {f"{s.name}_FILE" for s in rows if s.secret}
    assert variables_in_code() <= documented, variables_in_code() - documented
    assert all(s.meaning for s in rows), [s.name for s in rows if not s.meaning]
    assert all(c.help for c in commands()), [c.name for c in commands() if not c.help]
    codes = {e.code: e.exit_status for e in command_codes()}
    assert codes["usage_error"] == 2 and codes["bad_data"] == 3 and codes["bundle_refused"] == 4
