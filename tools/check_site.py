"""Open every page of the built docs site in headless Chromium and check what a reader would see.

For each HTML page (served over HTTP on 127.0.0.1, as GitHub Pages serves it): every image is loaded and has a size
(lazy images are made eager first), every internal link leads to a page of the site and, when it names an anchor, to
an element with that id. The model card page must show at least two figures of real size. External links are not
followed (no network). Chromium is driven through its DevTools protocol (websocket-client).

Usage: python tools/check_site.py [SITE]     (default docs/_build/html; exits 1 listing every problem)
"""
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--window-size=1280,900"]
# Runs in each page once it has loaded: make lazy images load, wait for all of them, then report.
INSPECT = """(async () => {
  const imgs = [...document.images];
  imgs.forEach(i => { i.loading = 'eager'; });
  await Promise.all(imgs.map(i => i.complete ? 0
    : new Promise(r => { i.onload = i.onerror = r; setTimeout(r, 10000); })));
  return {
    images: imgs.map(i => ({src: i.currentSrc || i.src, width: i.naturalWidth, height: i.naturalHeight})),
    links: [...document.querySelectorAll('a[href]')].map(a => a.href),
    ids: [...document.querySelectorAll('[id]')].map(e => e.id),
    text: document.body ? document.body.innerText.length : 0,
  };
})()"""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class DevTools:
    "A headless Chromium and one page target, driven over the DevTools protocol."
    def __init__(self, browser: str):
        import websocket
        self.profile = tempfile.mkdtemp(prefix="check-site-chromium-")
        self.proc = subprocess.Popen([browser, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}",
                                      "--remote-debugging-port=0", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file, deadline = Path(self.profile) / "DevToolsActivePort", time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("Chromium did not start its DevTools endpoint")
            time.sleep(0.05)
        port = port_file.read_text().split()[0]
        import urllib.request
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    pages = [t for t in json.load(r) if t["type"] == "page"]
                if pages:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError("Chromium has no page to drive")
            time.sleep(0.1)
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.next_id = 0
        self.call("Page.enable")

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if msg.get("method") == "Page.loadEventFired":
                self.loaded = True

    def open(self, url: str) -> dict:
        "Navigate to `url`, wait for its load event, and return what INSPECT finds."
        self.loaded = False
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + 60
        while not self.loaded:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not finish loading within 60 s")
            msg = json.loads(self.ws.recv())
            self.loaded = msg.get("method") == "Page.loadEventFired"
        res = self.call("Runtime.evaluate", expression=INSPECT, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{url}: {res['exceptionDetails']}")
        return res["result"]["value"]

    def close(self):
        try:
            self.ws.close()
        except Exception:
            pass
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


def serve(site: Path):
    "An HTTP server for `site` on a free loopback port, in a thread; returns (server, base URL)."
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def page_of(url: str, base: str, site: Path) -> Path | None:
    "The file an internal URL names (a folder means its index.html), or None for an external URL."
    if not url.startswith(base):
        return None
    rel = unquote(urlparse(url).path)[len(urlparse(base).path):]
    path = site / rel
    return path / "index.html" if rel == "" or path.is_dir() else path


def check(site: Path, browser: str) -> tuple:
    "(problems, pages checked, images checked) for the site in `site`."
    pages = sorted(p for p in site.rglob("*.html") if "_static" not in p.parts and "_sources" not in p.parts)
    server, base = serve(site)
    tools = DevTools(browser)
    problems, found, images = [], {}, 0
    try:
        for page in pages:
            rel = page.relative_to(site).as_posix()
            found[page] = got = tools.open(base + rel)
            if got["text"] == 0:
                problems.append(f"{rel}: the page shows no text")
            for img in got["images"]:
                images += 1
                if not (img["width"] and img["height"]):
                    problems.append(f"{rel}: image not shown: {img['src'][:120]}")
        for page, got in found.items():
            rel = page.relative_to(site).as_posix()
            for link in got["links"]:
                url, anchor = urldefrag(link)
                target = page_of(url, base, site)
                if target is None:
                    continue
                if not target.exists():
                    problems.append(f"{rel}: broken link to {url[len(base):]}")
                elif anchor and target in found and unquote(anchor) not in found[target]["ids"]:
                    problems.append(f"{rel}: link to {url[len(base):]}#{anchor}: no such anchor")
        card = [g for p, g in found.items() if p.name == "model_card.html"]
        for g in card:
            figures = [i for i in g["images"] if i["src"].startswith("data:image/png") and i["width"] >= 300]
            if len(figures) < 2:
                problems.append(f"model card page: {len(figures)} figure(s) of real size, expected at least 2")
    finally:
        tools.close()
        server.shutdown()
    return problems, len(pages), images


def main(site: Path) -> int:
    browser = chromium()
    if not browser:
        print("check_site: no Chromium found (apt-get install chromium; `bash .ci/run` installs it): not checked")
        return 0 if os.environ.get("CI") != "true" else 1
    if not (site / "index.html").exists():
        print(f"check_site: {site}/index.html is missing: build the site first (bash tools/docs.sh)")
        return 1
    t0 = time.monotonic()
    problems, pages, images = check(site, browser)
    for p in problems:
        print(f"  {p}")
    verdict = f"{len(problems)} problem(s)" if problems else "no problem"
    print(f"check_site: {pages} pages, {images} images opened in Chromium in {time.monotonic() - t0:.0f} s: {verdict}")
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) > 2:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) == 2 else ROOT / "docs" / "_build" / "html"))
