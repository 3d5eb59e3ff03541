"""The exploration report end to end: messy data, the HTML file itself, the CLI, and a real browser.

The notebooks nbs/03_profile, 03a_plots, 03b_relations, 03c_suggest and 03d_explore test the pieces; these tests need files, subprocesses or Chromium.
"""
import base64
import html
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mlprod.explore import _Progress, explore_report, profile

IMG_RE = re.compile(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def messy_frame(n=400, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "trip_id": [f"T{i:05d}" for i in range(n)],
        "pickup_lat": rng.normal(40.73, 0.05, n), "pickup_lon": rng.normal(-73.95, 0.05, n),
        "distance_km": rng.gamma(2.0, 2.5, n), "kind": rng.choice(["cab", "car", "van"], n, p=[.6, .38, .02]),
        "when": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 90 * 24 * 60, n), unit="min"),
        "fare_usd": rng.gamma(3.0, 5.0, n)})


def report_text(tmp_path, df, target, name="r.html", **kw):
    path = explore_report(df, target, path=tmp_path / name, progress=False, **kw)
    return Path(path).read_text(encoding="utf-8")


def assert_self_contained(text):
    "One file: every image embedded and decodable, no script, no stylesheet link, nothing fetched from anywhere."
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//|file:|ftp:)""", text, re.I)
    assert "<script" not in text.lower() and "<link" not in text.lower() and "@import" not in text
    assert "http://" not in text and "https://" not in text
    imgs = IMG_RE.findall(text)
    assert len(imgs) == text.count("<img ")
    for b64 in imgs:
        im = Image.open(io.BytesIO(base64.b64decode(b64)))
        im.load()
        assert im.format == "PNG" and im.size[0] >= 300 and im.size[1] >= 100
    return len(imgs)


# Messy data: each case gets a report, with a clear note, and no plot fails.
def _mixed(n=60):
    return pd.DataFrame({"mixed": ([1, "a", 2.5, None, True, "7"] * n)[:n], "x": np.arange(n) % 7, "y": np.arange(n) % 3 * 1.5})

MESSY = {
    "all-missing column": (lambda: messy_frame().assign(nothing=np.nan), "fare_usd",
                           ["nothing", "all values are missing"]),
    "mixed types in one column": (_mixed, "y", ["mixed types in one column"]),
    "text with stray words": (lambda: messy_frame().assign(tip=lambda d: np.where(np.arange(len(d)) % 50 == 0, "n/a", d["distance_km"].round(1).astype(str))),
                              "fare_usd", ["numbers stored as text, with other values such as &#x27;n/a&#x27;"]),
    "dates": (lambda: messy_frame(), "fare_usd", ["dates from 2024-01-01"]),
    "dates stored as text": (lambda: messy_frame().assign(day=lambda d: d["when"].dt.strftime("%Y-%m-%d")), "fare_usd",
                             ["day", "dates from 2024-01-01"]),
    "rare target classes": (lambda: messy_frame(), "kind", ["Rare target class", "&#x27;van&#x27;"]),
    "a single row": (lambda: messy_frame().head(1), "fare_usd", ["Only 1 row"]),
    "an all-NaN numeric target": (lambda: messy_frame().assign(fare_usd=np.nan), "fare_usd",
                                  ["The target &#x27;fare_usd&#x27; has no values", "No suggestions: there is no spec to change."]),
    "a single class": (lambda: messy_frame().assign(kind="cab"), "kind", ["single class"]),
    "unhashable values": (lambda: pd.DataFrame({"tags": [["a"], ["b", "c"], []] * 20, "y": np.arange(60.0)}), "y",
                          ["No spec could be inferred"]),
}


@pytest.mark.parametrize("case", list(MESSY))
def test_messy_data_gets_a_report_with_a_note(tmp_path, case):
    make, target, expected = MESSY[case]
    text = report_text(tmp_path, make(), target)
    for snippet in expected: assert snippet in text, (case, snippet)
    assert "Could not draw" not in text, re.findall(r"Could not draw[^<]*", text)
    assert assert_self_contained(text) >= 2


def test_report_on_a_clean_frame_has_every_section(tmp_path):
    text = report_text(tmp_path, messy_frame(2_000), "fare_usd")
    for section in ("overview", "flags", "columns", "target", "missing", "correlation", "pairplot", "features",
                    "distributions", "location", "suggestions", "spec"):
        assert f'id="{section}"' in text, section
    assert assert_self_contained(text) == 7
    assert "No missing values" not in text # it is in the image, not the page
    assert "trip_id" in text and "id like" in text


def test_report_refuses_to_overwrite(tmp_path):
    p = tmp_path / "r.html"
    p.write_text("keep")
    with pytest.raises(Exception, match="--force"): explore_report(messy_frame(), "fare_usd", path=p, progress=False)
    assert p.read_text() == "keep"
    explore_report(messy_frame(), "fare_usd", path=p, progress=False, force=True)
    assert p.read_text().startswith("<!DOCTYPE html>")
    umask = os.umask(0); os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask # an ordinary file, not a private temporary one
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".explore-")] # no temporary file left behind


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere():
    class Tty(io.StringIO):
        def isatty(self): return True
    bar = Tty()
    p = _Progress(["profile", "plots"], True, bar); p.step("profile"); p.step("plots"); p.close()
    assert "\r" in bar.getvalue() and "explore: plots" in bar.getvalue() and "explore: done: 100%" in bar.getvalue()
    plain = io.StringIO()
    p = _Progress(["profile", "plots"], True, plain); p.step("profile"); p.step("plots"); p.close()
    assert plain.getvalue() == "explore [1/2] profile\nexplore [2/2] plots\n"
    quiet = Tty()
    p = _Progress(["a"], False, quiet); p.step("a"); p.close()
    assert quiet.getvalue() == ""


def test_profile_of_a_wide_frame_is_vectorized():
    "100k rows × 20 columns profile in a few seconds: no per-row Python."
    import time
    rng = np.random.default_rng(0)
    n = 100_000
    df = pd.DataFrame({f"x{i}": rng.normal(size=n) for i in range(15)} |
                      {f"c{i}": rng.choice(["a", "b", "c"], n) for i in range(4)} | {"y": rng.normal(size=n)})
    t = time.perf_counter()
    prof = profile(df, "y")
    assert time.perf_counter() - t < 20
    assert len(prof.table) == 20 and prof.table["missing_pct"].eq(0).all()


# The command line, in a subprocess as a user runs it.
def run_cli(*args, cwd=None):
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-m", "mlprod.cli", "explore", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


@pytest.fixture(scope="module")
def trips_csv(tmp_path_factory):
    p = tmp_path_factory.mktemp("data") / "trips.csv"
    messy_frame(1_500).to_csv(p, index=False)
    return p


def test_cli_writes_the_report_and_the_spec_named_after_the_data(tmp_path, trips_csv):
    out = tmp_path / "report.html"
    r = run_cli(trips_csv, "--target", "fare_usd", "-o", out, "--sample", "1000", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    text = out.read_text(encoding="utf-8")
    assert_self_contained(text)
    assert (tmp_path / "trips.spec.yaml").exists() and not (tmp_path / "report.spec.yaml").exists()
    lines = r.stderr.splitlines()
    assert lines[0] == "explore [1/10] profile" and lines[-1].startswith(f"explore: wrote {out} in ")
    assert "\r" not in r.stderr # not a terminal: plain lines, no bar
    assert r.stdout.splitlines()[0] == f"wrote {out}"
    again = run_cli(trips_csv, "--target", "fare_usd", "-o", out, cwd=tmp_path)
    assert again.returncode == 2 and again.stderr.splitlines()[-1].startswith("error: file_exists:")
    assert run_cli(trips_csv, "--target", "fare_usd", "-o", out, "--force", "--sample", "1000", cwd=tmp_path).returncode == 0
    # the program under the suggestions runs as shown, in the folder the command ran in, and changes the spec file
    program = html.unescape(re.search(r"<pre><code>(from mlprod.explore import Suggestion.*?)</code></pre>", text, re.S).group(1))
    before = (tmp_path / "trips.spec.yaml").read_text()
    ran = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert "suggestion(s) applied to trips.spec.yaml" in ran.stdout and (tmp_path / "trips.spec.yaml").read_text() != before


def test_cli_exit_statuses(tmp_path, trips_csv):
    r = run_cli(trips_csv, "--target", "nope", "-o", tmp_path / "r.html", cwd=tmp_path)
    assert r.returncode == 3 and r.stderr.splitlines()[-1].startswith("error: unknown_target:")
    (tmp_path / "empty.csv").write_text("")
    assert run_cli(tmp_path / "empty.csv", "--target", "y", "-o", tmp_path / "r.html", cwd=tmp_path).returncode == 3
    assert run_cli(trips_csv, "-o", tmp_path / "r.html", cwd=tmp_path).returncode == 2
    nan_target = tmp_path / "nan.csv"
    messy_frame(200).assign(fare_usd=np.nan).to_csv(nan_target, index=False)
    r = run_cli(nan_target, "--target", "fare_usd", "-o", tmp_path / "nan.html", cwd=tmp_path)
    assert r.returncode == 3 and "error: empty_target:" in r.stderr.splitlines()[-1]
    assert "has no values" in (tmp_path / "nan.html").read_text() and not (tmp_path / "nan.spec.yaml").exists()
    assert not (tmp_path / "r.html").exists()


# A real browser: every image decodes and shows, and the page is not blank.
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--hide-scrollbars"]
PROBE = """<script>window.addEventListener("load", () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().width > 0);
  document.body.setAttribute("data-images", ok.length + "/" + imgs.length);
});</script>"""


def chromium(*args, timeout=120):
    with tempfile.TemporaryDirectory() as profile_dir:
        return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", *args],
                              capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_every_image_loads_in_headless_chromium(tmp_path):
    text = report_text(tmp_path, messy_frame(2_000), "fare_usd")
    n = text.count("<img ")
    probe = tmp_path / "probe.html" # a copy with a probe script: the report itself has none
    probe.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    r = chromium("--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    found = re.search(r'data-images="(\d+)/(\d+)"', r.stdout)
    assert found, r.stderr[-2000:]
    assert found.groups() == (str(n), str(n))
    shot = tmp_path / "shot.png"
    chromium("--window-size=1280,4000", f"--screenshot={shot}", (tmp_path / "r.html").as_uri())
    im = Image.open(shot).convert("L")
    assert im.size == (1280, 4000)
    hist = im.histogram()
    assert max(hist) < 0.97 * sum(hist) # not a blank page


def test_importing_explore_is_cheap_and_chooses_no_backend():
    "matplotlib, seaborn and tqdm load with the first plot, never at import; no backend is forced."
    code = ("import json, sys, mlprod.explore, mlprod.profile, mlprod.plots, mlprod.relations, mlprod.suggest; "
            "print(json.dumps(sorted(m for m in ('matplotlib', 'matplotlib.pyplot', 'seaborn', 'tqdm', 'tensorflow') if m in sys.modules)))")
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
    for name in ("profile", "plots", "relations", "suggest", "explore"): # the inline backend must stay possible
        src = Path(__file__).resolve().parents[1] / "mlprod" / f"{name}.py"
        assert not re.search(r"""\.use\(\s*["']agg""", src.read_text(), re.I), name
