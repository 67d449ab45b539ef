"""The web page in a real browser: Playwright (sync API) drives Debian's chromium against a `manualrag serve`
subprocess on 127.0.0.1 over the shared index of data/manuals. Screenshots go to the test's tmp folder."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.serve.conftest import HOSTILE_NAME, NOTES, PUMP, SAMPLE

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="no /usr/bin/chromium (make setup installs it with apt)"
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serve(config: Path, index_dir: Path, log: Path) -> Iterator[str]:
    """`manualrag serve` as a user starts it, from another working directory; yields its URL."""
    port = _free_port()
    cmd = [sys.executable, "-m", "manualrag", "--config", str(config), "serve"]
    cmd += ["--index-dir", str(index_dir), "--port", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=log.parent,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"manualrag serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"manualrag serve did not answer within 120 s: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        assert f"open {url}/" in log.read_text()
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server(serve_index, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    with _serve(serve_index.config, serve_index.index_dir, log) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    """Screenshots of this module; MANUALRAG_SCREENSHOTS=DIR copies them there (for docs/web-ui.png)."""
    folder = tmp_path_factory.mktemp("screenshots")
    yield folder
    if os.environ.get("MANUALRAG_SCREENSHOTS"):
        out = Path(os.environ["MANUALRAG_SCREENSHOTS"])
        out.mkdir(parents=True, exist_ok=True)
        for f in folder.glob("*.png"):
            shutil.copy(f, out / f.name)


@pytest.fixture
def page(browser, server):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=server)
    pg = ctx.new_page()
    pg.set_default_timeout(60_000)  # a loaded 2-core CI machine
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(server + "/")
    yield pg
    ctx.close()
    assert not errors, errors


def _search(page, text: str) -> None:
    page.fill("#q", text)
    page.press("#q", "Enter")  # Enter searches
    page.wait_for_selector("#results .card")


def test_wiring_diagram_first_and_its_page_box(page, server, shots):
    _search(page, "electric wiring layout")
    first = page.locator("#results .card").first
    assert first.get_attribute("data-kind") == "image"
    assert "Figure 2: Electric wiring layout" in first.locator(".caption").inner_text()
    page.wait_for_function(
        "() => { const i = document.querySelector('#results .card img'); return i && i.complete && i.naturalWidth > 0 }"
    )
    page.screenshot(path=str(shots / "results.png"))

    hit_id = first.get_attribute("data-id")
    box = httpx.get(f"{server}/api/hits/{hit_id.replace(':', '%3A')}", timeout=60).json()
    first.locator(".where").click()  # open the page viewer
    page.wait_for_selector("#viewer:not([hidden])")
    page.wait_for_function(
        "() => { const i = document.getElementById('page-img'); return i.complete && i.naturalWidth > 0 }"
    )
    assert f"{PUMP} · page 4 of 8" in page.inner_text("#viewer-title")
    img = page.locator("#page-img").bounding_box()
    hb = page.locator("#hit-box")
    assert hb.is_visible()
    r = hb.bounding_box()
    x0, y0, x1, y1 = box["bbox"]
    sx, sy = img["width"] / box["page_width"], img["height"] / box["page_height"]
    tol = 4  # px: a 3-px border drawn inside the box, rounding
    assert abs((r["x"] - img["x"]) - x0 * sx) <= tol and abs((r["y"] - img["y"]) - y0 * sy) <= tol
    assert abs(r["width"] - (x1 - x0) * sx) <= tol and abs(r["height"] - (y1 - y0) * sy) <= tol
    page.screenshot(path=str(shots / "viewer.png"))

    page.click("#next-page")  # the box is on page 4 only
    page.wait_for_function("() => document.getElementById('viewer-title').textContent.includes('page 5')")
    assert not hb.is_visible()
    page.keyboard.press("ArrowLeft")
    page.wait_for_function("() => document.getElementById('viewer-title').textContent.includes('page 4')")
    assert hb.is_visible()
    page.keyboard.press("Escape")  # Esc closes the viewer
    page.wait_for_selector("#viewer", state="hidden")


def _overlap(a: dict, b: dict) -> float:
    """The area of two on-screen rectangles' intersection (Playwright bounding boxes)."""
    w = min(a["x"] + a["width"], b["x"] + b["width"]) - max(a["x"], b["x"])
    h = min(a["y"] + a["height"], b["y"] + b["height"]) - max(a["y"], b["y"])
    return max(w, 0.0) * max(h, 0.0)


def test_text_hit_box_keeps_to_the_passage_text(page, server):
    """The page viewer's box for the '3.1 Fuses' passage (page 4 of the pump manual) outlines that text, not
    the wiring diagram (Figure 2) drawn on the same page."""
    res = httpx.get(
        f"{server}/api/search", params={"q": "electric wiring layout", "k": 20}, timeout=60
    ).json()
    fig = next(h for h in res["hits"] if h["kind"] == "image" and "Figure 2" in (h["caption"] or ""))
    fig_box = httpx.get(server + fig["urls"]["box"], timeout=60).json()

    _search(page, "fuse")
    card = (
        page.locator('#results .card[data-kind="text"]')
        .filter(has_text="3.1 Fuses")
        .filter(has=page.locator(".where .page", has_text="p. 4"))
    )
    card.first.locator(".where").click()
    page.wait_for_selector("#viewer:not([hidden])")
    page.wait_for_function(
        "() => { const i = document.getElementById('page-img'); return i.complete && i.naturalWidth > 0 }"
    )
    img = page.locator("#page-img").bounding_box()
    sx, sy = img["width"] / fig_box["page_width"], img["height"] / fig_box["page_height"]
    x0, y0, x1, y1 = fig_box["bbox"]
    figure = {
        "x": img["x"] + x0 * sx,
        "y": img["y"] + y0 * sy,
        "width": (x1 - x0) * sx,
        "height": (y1 - y0) * sy,
    }
    boxes = [b.bounding_box() for b in page.locator(".hit-box").all() if b.is_visible()]
    assert boxes  # the passage is marked on its page
    covered = sum(_overlap(b, figure) for b in boxes) / (figure["width"] * figure["height"])
    assert covered < 0.25, f"the passage's box covers {covered:.0%} of the wiring diagram"


def test_text_card_marks_terms_and_links_figures(page):
    _search(page, "spare fuse kit")
    card = page.locator('#results .card[data-kind="text"]').first
    marks = [m.lower() for m in card.locator("mark").all_inner_texts()]
    assert marks and {"spare", "fuse", "kit"} & set(marks)
    assert card.locator(".heading").inner_text()  # heading path
    page.wait_for_function(
        "() => [...document.querySelectorAll('.card .mini img')].some(i => i.complete && i.naturalWidth > 0)"
    )


def test_copy_as_llm_context(page):
    _search(page, "electric wiring layout")
    page.click("#copy-context")
    page.wait_for_function("() => document.getElementById('context-text').value.includes('BEGIN SOURCE')")
    assert page.locator("#context-text").is_visible()
    note = page.inner_text("#context-note")
    if "copied" in note:  # the clipboard too, when the browser grants it
        assert "BEGIN SOURCE" in page.evaluate("navigator.clipboard.readText()")


def test_cleared_query_clears_results_and_context(page):
    """Enter on an emptied search box: the previous query's cards and its LLM context block go (they stayed,
    the context panel still showing the old block), the Copy button is off and the URL no longer holds the
    query (a reload would run it again)."""
    _search(page, "electric wiring layout")
    page.click("#copy-context")
    page.wait_for_function("() => document.getElementById('context-text').value.includes('BEGIN SOURCE')")
    assert page.locator("#context-panel").is_visible()

    page.fill("#q", "")
    page.press("#q", "Enter")
    page.wait_for_function("() => !document.querySelector('#results .card')")
    assert page.locator("#context-panel").is_hidden()
    assert page.input_value("#context-text") == ""
    assert page.locator("#copy-context").is_disabled()
    assert "Type what you are looking for" in page.inner_text("#status")
    assert "q=" not in page.evaluate("location.search")


def test_new_query_drops_the_previous_context_block(page):
    """A context block belongs to its query: searching for something else hides it."""
    _search(page, "electric wiring layout")
    page.click("#copy-context")
    page.wait_for_function("() => document.getElementById('context-text').value.includes('BEGIN SOURCE')")
    page.fill("#q", "spare fuse kit")
    page.press("#q", "Enter")
    page.wait_for_function(  # the new search has answered
        "() => location.search.includes('spare') && / hits? /.test(document.getElementById('status').textContent)"
    )
    assert page.locator("#context-panel").is_hidden()
    assert page.input_value("#context-text") == ""
    assert page.locator("#copy-context").is_enabled()


def test_hostile_manual_text_renders_as_text(page):
    _search(page, "hostile calibration pressure switch")
    page.wait_for_timeout(300)
    assert page.evaluate("[window.__pwned, window.__pwned_name]") == [None, None]
    files = page.locator("#results .card .where .file").all_inner_texts()
    assert HOSTILE_NAME in files  # the file name, shown as typed
    texts = " ".join(page.locator("#results .card").all_inner_texts())
    assert "<script>" in texts or "onerror=" in texts  # the markup is visible as text
    assert page.evaluate("document.querySelectorAll('script').length") == 1  # only app.js
    assert page.evaluate('document.querySelectorAll(\'img[src="x"], a[href^="javascript"], b\').length') == 0


def test_phone_screen(browser, server, shots):
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    pg = ctx.new_page()
    pg.set_default_timeout(60_000)
    try:
        pg.goto(server + "/?q=electric+wiring+layout")  # a shared link runs its search
        pg.wait_for_selector("#results .card")
        assert pg.evaluate("document.scrollingElement.scrollWidth") <= 391  # no sideways scrolling
        pg.screenshot(path=str(shots / "phone.png"))
        pg.locator("#results .card .where").first.tap()
        pg.wait_for_function("() => document.getElementById('page-img').naturalWidth > 0")
        assert pg.locator("#page-img").bounding_box()["width"] <= 390
        pg.screenshot(path=str(shots / "phone-viewer.png"))
    finally:
        ctx.close()


def test_api_docs_page_offline(page, server):
    """/docs renders /openapi.json without any CDN (FastAPI's Swagger UI would fetch its scripts)."""
    page.goto(server + "/docs")
    page.wait_for_selector(".op")
    routes = " ".join(page.locator(".op h2").all_inner_texts())
    for route in ("/api/search", "/api/pages/{doc_id}/{page}.png", "/api/hits/{hit_id}", "/api/context"):
        assert route in routes


@contextlib.contextmanager
def _results(browser, url: str):
    """A page of its own browser context at ``url``, once its result cards are shown."""
    ctx = browser.new_context()
    try:
        pg = ctx.new_page()
        pg.set_default_timeout(60_000)
        pg.goto(url)
        pg.wait_for_selector("#results .card")
        yield pg
    finally:
        ctx.close()


def _notes_index(tmp_path, minilm_dir, names: list[str]):
    """(config, index folder) of a library holding the sample release notes under each of ``names``,
    indexed with the text model and no CLIP model."""
    import yaml
    from click.testing import CliRunner

    from manualrag.cli import main

    lib = tmp_path / "lib"
    for name in names:
        (lib / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLE / NOTES, lib / name)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"model": None, "text_model": str(minilm_dir)}))
    idx = tmp_path / "index"
    res = CliRunner().invoke(main, ["--config", str(cfg), "index", str(lib), "--index-dir", str(idx), "-q"])
    assert res.exit_code == 0, res.output
    return cfg, idx


def test_no_image_button_on_an_index_without_clip_vectors(browser, page, tmp_path, minilm_dir):
    """Search by image needs the index's CLIP vectors: on an index built with --model none the page does not
    offer the Image… button (it led to an error after the upload); on the shared index it does."""
    assert page.locator("#upload").is_visible()
    cfg, idx = _notes_index(tmp_path, minilm_dir, [NOTES])
    with _serve(cfg, idx, tmp_path / "serve.log") as url, _results(browser, url + "/?q=fuse") as pg:
        pg.wait_for_selector("#upload", state="hidden")
        assert not pg.locator("#upload").is_visible()


def test_a_manual_held_twice_is_one_card_naming_the_copy(browser, tmp_path, minilm_dir):
    """The same notes in two folders of the library: each hit is one card, which names the other file."""
    cfg, idx = _notes_index(tmp_path, minilm_dir, [NOTES, f"copy/{NOTES}"])
    with _serve(cfg, idx, tmp_path / "serve.log") as url, _results(browser, url + "/?q=fuse") as pg:
        cards = pg.locator("#results .card")
        first = cards.first
        ids = [c.get_attribute("data-id").split(":", 1)[1] for c in cards.all()]
        assert len(ids) == len(set(ids)), ids  # no hit twice
        assert first.locator(".file").inner_text() == NOTES  # the copy at the library's top
        assert first.locator(".copies").inner_text() == f"also in (same file): copy/{NOTES}"
