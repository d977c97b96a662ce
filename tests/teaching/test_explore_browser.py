"""`lstm-engine explore` in a real browser: headless Chromium (Debian's) driven by Playwright.

A learner's session: read a text, step five characters with the arrow keys (the gate values the page
shows are checked against explain's), pick a unit, run a pattern search and an influence view, sample.
LSTM_ENGINE_EXPLORER_SCREENSHOTS=DIR writes a screenshot of each view into DIR (docs/ uses them);
CI leaves it unset.
"""
import os

import numpy as np
import pytest

from explore_reference import KINDS, TEXT, explained, influence_fd, pattern_search, serving
from helpers import snapshot
from lstm_engine.teaching.explore import compute, page, server

CHROMIUM = os.environ.get("LSTM_ENGINE_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
SHOTS = os.environ.get("LSTM_ENGINE_EXPLORER_SCREENSHOTS")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="Playwright's Python package is not installed (pip install playwright)")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no chromium at {CHROMIUM} (Debian: apt-get install chromium; or set LSTM_ENGINE_CHROMIUM)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def served(explore_ckpt):
    with serving(explore_ckpt) as srv:
        yield srv


@pytest.fixture
def page_of(browser):
    pages = []

    def open_page(url):
        pg = browser.new_page(viewport={"width": 1360, "height": 1000})
        pg.set_default_timeout(30000)
        pages.append(pg)
        pg.goto(url)
        pg.wait_for_function("document.body.dataset.ready === '1'")
        return pg
    yield open_page
    for pg in pages:
        pg.close()


def shot(pg, name, *selectors):
    """Screenshot of the region holding these elements, as docs/explorer-NAME.png, when asked for."""
    if not SHOTS:
        return
    pg.evaluate("window.scrollTo(0, 0)")                  # boxes are measured from the top of the page
    boxes = [pg.locator(s).bounding_box() for s in selectors]
    x0, y0 = min(b["x"] for b in boxes), min(b["y"] for b in boxes)
    x1, y1 = max(b["x"] + b["width"] for b in boxes), max(b["y"] + b["height"] for b in boxes)
    pg.screenshot(path=os.path.join(SHOTS, f"explorer-{name}.png"), full_page=True,
                  clip={"x": x0 - 4, "y": y0 - 4, "width": x1 - x0 + 8, "height": y1 - y0 + 8})


def cell_values(pg, layer, kind):
    return [float(v) for v in pg.eval_on_selector_all(
        f".cell[data-layer='{layer}'][data-kind='{kind}']", "els => els.map(e => e.dataset.value)")]


def read(pg, text):
    n = pg.evaluate("Number(document.body.dataset.read || 0)")
    pg.fill("#text", text)
    pg.click("#read")
    pg.wait_for_function(f"Number(document.body.dataset.read || 0) > {n} || !document.getElementById('message').hidden")


def test_a_learner_steps_picks_a_unit_searches_traces_influence_and_samples(served, explore_ckpt, page_of):
    ref = [explained(explore_ckpt, TEXT, l) for l in range(2)]
    pg = page_of(served.url)
    read(pg, TEXT)
    assert pg.locator("#message").is_hidden()
    assert pg.locator("#textview .ch").count() == len(TEXT)

    # step five characters with the arrow key; the numbers on the page are explain's
    pg.locator("#next").focus()
    for t in range(1, 6):
        pg.keyboard.press("ArrowRight")
        pg.wait_for_function(f"document.body.dataset.t === '{t}'")
        for l in range(2):
            for k in KINDS:
                np.testing.assert_allclose(cell_values(pg, l, k), ref[l][k][t], rtol=0, atol=1e-12,
                                           err_msg=f"{k} of layer {l} at {t}")
        assert pg.locator("#textview .ch.cursor").get_attribute("data-t") == str(t)
    pg.keyboard.press("ArrowLeft")
    pg.wait_for_function("document.body.dataset.t === '4'")
    pg.click("#next")
    pg.wait_for_function("document.body.dataset.t === '5'")
    V = len(served.app.explorer.vocab)
    assert pg.locator("#topbars .bar").count() == min(10, V)
    pg.locator(".cell[data-layer='1'][data-kind='c'][data-unit='3']").click()
    eq = pg.locator("#equations").text_content()
    assert eq.rstrip().endswith(f"= {ref[1]['h'][5][3]:.4f}")                       # h_t of that unit
    assert f"{ref[1]['f'][5][3]:.4f}·{ref[1]['c'][4][3]:.4f}" in eq                # f_t·c_{t-1} with its numbers
    shot(pg, "step", "#text-panel", "#step-panel")

    # pick the unit that best tracks quotes and colour the text by it
    pg.select_option("#feature", "quotes")
    pg.click("#rank")
    first = pg.locator("#ranking li").first
    layer, unit = int(first.get_attribute("data-layer")), int(first.get_attribute("data-unit"))
    want = served.app.explorer.rank(TEXT, "h", "quotes")["units"][0]
    assert (layer, unit) == (want["layer"], want["unit"])
    first.click()
    pg.wait_for_function(f"document.body.dataset.coloured === '{layer}/{unit}/h'")
    shown = [float(v) for v in pg.eval_on_selector_all("#textview .ch", "els => els.map(e => e.dataset.value)")]
    np.testing.assert_allclose(shown, ref[layer]["h"][:, unit], atol=1e-12)
    shot(pg, "unit", "#text-panel", "#unit-panel")

    # pattern search: a span inside quotes, a threshold that keeps three units on through it
    start, end = 3, 7
    acts = ref[0]["h"]
    thr = float(np.sort(acts[start:end].min(axis=0))[-3]) - 1e-9
    pg.fill("#layer", "0")
    a = pg.locator(f"#textview .ch[data-t='{start}']").bounding_box()      # select the span with the mouse
    b = pg.locator(f"#textview .ch[data-t='{end - 1}']").bounding_box()
    pg.mouse.move(a["x"] + 1, a["y"] + a["height"] / 2)
    pg.mouse.down()
    pg.mouse.move(b["x"] + b["width"] * 0.7, b["y"] + b["height"] / 2, steps=5)
    pg.mouse.up()
    assert (pg.input_value("#span-start"), pg.input_value("#span-end")) == (str(start), str(end))
    pg.fill("#threshold", repr(thr))
    pg.click("#search")
    pg.wait_for_function("document.body.dataset.searched === '1'")
    units, runs = pattern_search(acts, start, end, thr)
    assert pg.locator("#search-results .units").get_attribute("data-units") == str(units).replace(" ", "")
    got = pg.eval_on_selector_all("#search-results .match", "els => els.map(e => [+e.dataset.start, +e.dataset.end])")
    assert sorted(map(tuple, got)) == sorted(runs)
    hits = pg.eval_on_selector_all("#textview .ch.hit", "els => els.map(e => +e.dataset.t)")
    assert hits == sorted(p for a, b in runs for p in range(a, b))
    shot(pg, "search", "#text-panel", "#search-panel")

    # influence of every earlier character on the loss at the cursor (t = 5)
    pg.locator("#textview .ch[data-t='5']").click()
    pg.wait_for_function("document.body.dataset.t === '5'")
    pg.click("#influence")
    pg.wait_for_function("document.body.dataset.influence === '5'")
    norms = [float(v) for v in pg.eval_on_selector_all(
        "#textview .ch[data-influence]", "els => els.map(e => e.dataset.influence)")]
    np.testing.assert_allclose(norms, influence_fd(explore_ckpt, TEXT, 5), rtol=1e-6, atol=1e-8)
    shot(pg, "influence", "#text-panel", "#influence-panel")

    # a sample, streamed, then read back
    for sel, v in (("#prime", "ab"), ("#length", "60"), ("#temperature", "0.8"), ("#top-k", "5"), ("#top-p", "0.95"),
                   ("#seed", "7")):
        pg.fill(sel, v)
    pg.click("#generate")
    pg.wait_for_function("document.body.dataset.sample === 'done'")
    want = served.app.explorer.sampler("ab", 60, 0.8, 5, 0.95, 7)()
    assert pg.locator("#sample").text_content() == "ab" + want
    assert pg.locator("#message").is_hidden()
    shot(pg, "sample", "#generate-panel")
    if SHOTS:
        pg.screenshot(path=os.path.join(SHOTS, "explorer-page.png"), full_page=True)


def test_bad_input_shows_one_message_and_the_page_keeps_working(served, explore_ckpt, page_of, tmp_path):
    before = snapshot(os.path.dirname(explore_ckpt))
    pg = page_of(served.url)
    read(pg, TEXT)
    for text, needle in ((TEXT + "\u20ac", "not in the model's vocabulary"),
                         ("a" * (compute.MAX_CHARS + 5), "shorten it"),
                         ("a" * (server.MAX_BODY + 10), "send a shorter text")):
        read(pg, text)
        msg = pg.locator("[role=alert]:visible")
        assert msg.count() == 1 and needle in msg.text_content(), msg.all_text_contents()
        assert "\n" not in msg.text_content()
    pg.fill("#layer", "7")
    pg.click("#colour")
    pg.wait_for_function("document.getElementById('message').textContent.includes('layer must be in 0..1')")
    model = pg.locator("#model").text_content()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"PK\x03\x04" + b"\x00" * 60)
    for path, needle in ((bad, "not a usable lstm-engine checkpoint"),
                         (tmp_path / "none.safetensors", "does not exist")):
        pg.fill("#ckpt", str(path))
        pg.click("#load")
        pg.wait_for_function(f"document.getElementById('message').textContent.includes({needle!r})")
        assert pg.locator("[role=alert]:visible").count() == 1 and pg.locator("#model").text_content() == model
    pg.locator("#textview .ch[data-t='2']").click()                  # the old text is still there and steps
    pg.wait_for_function("document.body.dataset.t === '2'")
    assert pg.locator("#message").is_hidden()
    pg.fill("#ckpt", explore_ckpt)                                   # a good checkpoint loads and rereads the text
    pg.click("#load")
    pg.wait_for_function(f"document.body.dataset.loaded === {explore_ckpt!r} && document.body.dataset.t === '0'")
    assert pg.locator("#message").is_hidden()
    assert snapshot(os.path.dirname(explore_ckpt)) == before


def test_the_saved_page_works_offline(explore_ckpt, browser, tmp_path):
    out = tmp_path / "saved.html"
    page.write_page(explore_ckpt, str(out), TEXT)
    ref = explained(explore_ckpt, TEXT, 0)
    pg = browser.new_page()
    asked = []
    pg.on("request", lambda r: asked.append(r.url))
    pg.goto(out.as_uri())
    pg.wait_for_function("document.body.dataset.ready === '1'")
    pg.locator("#next").focus()
    for t in (1, 2):
        pg.keyboard.press("ArrowRight")
        pg.wait_for_function(f"document.body.dataset.t === '{t}'")
        np.testing.assert_allclose(cell_values(pg, 0, "i"), ref["i"][t], rtol=1e-5, atol=1e-9)
    pg.click("#influence")
    pg.wait_for_function("document.body.dataset.influence === '2'")
    assert pg.locator("#generate").is_disabled()
    assert asked == [out.as_uri()]                                   # nothing fetched: no server, no CDN
    pg.close()
