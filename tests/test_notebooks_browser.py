"""Every notebook of the series in a real client: JupyterLab in headless Chromium, driven by Playwright.

The server serves temporary copies of the notebooks (the committed files are never touched); each
notebook's outputs are cleared, "Run All Cells" is clicked in the Run menu, and the test waits
until every code cell has run.  Then: no error output anywhere, the figures render as images, the
KV-cost explorer widget of notebook 06 renders and answers its context slider, and the chat view of
notebook 10 shows its special-token chips.  Every notebook leaves a full-page screenshot in
``artifacts/screenshots/`` (gitignored; CI keeps the folder as an artifact).

Needs Debian's ``chromium`` and ``pip install playwright`` (not ``playwright install``); skips with
the reason when either is missing.  A few minutes on 2 cores (every notebook runs once).
"""
from __future__ import annotations

import importlib.util
import json
import re
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("browser_check", ROOT / "scripts" / "browser_check.py")
bc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bc)

NB06 = ROOT / "notebooks" / "06_kv_cache_and_costs.ipynb"
NB10 = ROOT / "notebooks" / "10_agent_format.ipynb"
ALL = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
OTHERS = [nb for nb in ALL if nb not in (NB06, NB10)]

_why = bc.missing_requirements()
pytestmark = pytest.mark.skipif(_why is not None, reason=f"browser test needs Chromium and Playwright: {_why}")


@pytest.fixture(scope="module")
def lab():
    with bc.LabServer(ALL) as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = bc.launch_browser(p)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    yield pg
    pg.close()


def _run(page, lab, nb: Path) -> dict:
    bc.open_notebook(page, lab, nb.name)
    state = bc.run_all(page)
    assert not state["errors"], f"{nb.name}: error outputs: {state['errors']}"
    assert state["run"] == state["code"], f"{nb.name}: only {state['run']} of {state['code']} code cells ran"
    report = bc.page_report(page)
    assert not report["error_outputs"], f"{nb.name}: the page shows errors: {report['error_outputs']}"
    return report


def _caption(explorer) -> str:
    return explorer.locator(".v4lab-kv-table caption").inner_text()


def test_notebook_06_runs_and_the_explorer_answers(page, lab):
    report = _run(page, lab, NB06)
    bc.screenshot(page, "06_after_run_all.png")
    # 4 figures + the explorer's picture, all rendered as <img>
    imgs = page.locator(".jp-OutputArea-output img")
    assert report["images"] >= 5
    assert all(imgs.nth(i).evaluate("e => e.naturalWidth > 0") for i in range(imgs.count()))

    explorer = page.locator(".v4lab-kv-explorer")
    assert explorer.count() == 1, "the KV-cost explorer widget did not render"
    explorer.scroll_into_view_if_needed()
    assert "L = 1,048,576 tokens (1M)" in _caption(explorer)
    picture = explorer.locator("img")
    before_src = picture.get_attribute("src")
    bc.screenshot(explorer, "06_explorer_1M.png")

    # move the context slider down by keyboard (Home = the first option, 1K)
    handle = explorer.locator(".noUi-handle").first
    handle.click()
    handle.press("Home")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "1,048,576" in _caption(explorer):
        page.wait_for_timeout(250)
    caption = _caption(explorer)
    assert "L = 1,024 tokens (1K)" in caption, caption
    page.wait_for_function("([el, old]) => el.src !== old", arg=[picture.element_handle(), before_src],
                           timeout=30_000)
    assert re.search(r"\b1K\b", explorer.locator(".widget-readout").first.inner_text())
    bc.screenshot(explorer, "06_explorer_1K.png")


def test_notebook_10_runs_and_shows_the_token_view(page, lab):
    _run(page, lab, NB10)
    chat_view = page.locator(".v4lab-chat")
    assert chat_view.count() == 1
    chips = chat_view.locator(".v4lab-tok")
    assert chips.count() >= 30 and chips.first.inner_text().startswith("<｜begin▁of▁sentence｜>")
    chat_view.scroll_into_view_if_needed()
    bc.screenshot(chat_view, "10_chat_view.png")
    bc.screenshot(page, "10_after_run_all.png")


@pytest.mark.parametrize("nb", OTHERS, ids=[nb.stem for nb in OTHERS])
def test_notebook_runs_all_cells_in_jupyterlab(page, lab, nb):
    report = _run(page, lab, nb)
    bc.screenshot(page, f"{nb.stem}_after_run_all.png")
    imgs = page.locator(".jp-OutputArea-output img")
    assert all(imgs.nth(i).evaluate("e => e.naturalWidth > 0") for i in range(imgs.count())), \
        f"{nb.name}: a figure did not render"
    # every figure the committed run shows is drawn again in the browser
    committed = sum("image/png" in out.get("data", {})
                    for cell in json.loads(nb.read_text())["cells"] for out in cell.get("outputs", []))
    assert report["images"] >= committed, f"{nb.name}: {report['images']} figures shown, {committed} committed"
