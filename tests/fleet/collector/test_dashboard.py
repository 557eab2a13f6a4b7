"""The dashboard at GET / in Debian's headless Chromium (Playwright, no downloaded browsers).

Screenshots are kept in test-artifacts/ (gitignored) for people to look at.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from support.collector import running_app
from support.services import require

from appvitals.fleet.collector.app import create_app
from appvitals.fleet.sim.simulate import generate_lines
from appvitals.fleet.warehouse.duckdb import DuckDBWarehouse

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]
ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts"


@pytest.fixture(scope="module")
def collector():
    wh = DuckDBWarehouse(":memory:")
    start_ms = int((time.time() - 3 * 3600) * 1000)
    wh.insert(list(generate_lines(None, clients=120, minutes=180, seed=9, start_ms=start_ms)))
    with running_app(create_app(wh)) as url:
        yield url
    wh.close()


@pytest.fixture(scope="module")
def browser():
    require("chromium", os.path.exists(CHROMIUM), "install Debian's chromium (see .ci/run)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def _painted(page, selector: str) -> int:
    """Pixels of the chart canvas that are neither blank nor white."""
    return page.evaluate(
        """(sel) => { const c = document.querySelector(sel); if (!c) return 0;
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
            for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && !(d[i] > 240 && d[i + 1] > 240 && d[i + 2] > 240)) n++;
            return n; }""",
        selector,
    )


def test_dashboard_renders_drills_down_and_opens_a_session(collector, browser):
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors, outside = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

    def only_local(route):
        host = urlparse(route.request.url).hostname
        if host not in ("127.0.0.1", "localhost") and not route.request.url.startswith("data:"):
            outside.append(route.request.url)
            return route.abort()
        return route.continue_()

    page.route("**/*", only_local)
    page.goto(collector + "/?since=4h")
    page.wait_for_function("document.body.dataset.state === 'ready'", timeout=60_000)

    # headline, explanations, tree
    assert "%" in page.inner_text("[data-testid=high-share]")
    rows = page.locator("[data-testid=explanation]")
    assert rows.count() >= 3
    assert "7.0.0" in page.inner_text("#explanations")
    assert page.locator("[data-testid=tree-node]").count() >= 3
    # charts render with data: the timeline has points and paints lines, the heatmap has cells
    assert int(page.get_attribute("#timeline", "data-points")) > 5
    assert _painted(page, "#timeline canvas") > 500
    heat_rows = len(page.evaluate("REPORT.heatmap.rows"))
    heat_cols = len(page.evaluate("REPORT.heatmap.cols"))
    assert heat_rows >= 3 and page.locator("[data-testid=heat-cell]").count() == heat_rows * heat_cols
    assert "side" in page.inner_text("#compare-card") or page.locator("[data-testid=compare]").count() == 1
    assert page.locator("[data-testid=worst-session]").count() >= 5
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

    # click-to-drill-down: the second explanation
    second = page.evaluate("REPORT.explanations[1].attrs")
    rows.nth(1).click()
    sentence = page.inner_text("[data-testid=drill-sentence]")
    for value in second.values():
        assert value in sentence
    assert "selected" in rows.nth(1).get_attribute("class")
    # and a tree node
    page.locator("[data-testid=tree-node]").nth(1).click()
    assert page.locator("#tree .node.selected").count() == 1
    page.screenshot(path=str(ARTIFACTS / "dashboard-drilldown.png"), full_page=True)

    # open a session from the drill-down: CPU line with its events marked
    rows.first.click()
    page.locator("[data-testid=example-session]").first.click()
    page.wait_for_function(
        "document.body.dataset.state === 'ready' && !document.getElementById('session-view').hidden", timeout=60_000
    )
    assert int(page.get_attribute("#session-chart", "data-points")) > 10
    assert int(page.get_attribute("#session-chart", "data-events")) >= 1
    # event labels are placed in rows without overlapping; these events are far apart: all shown
    assert page.get_attribute("#session-chart .uplot", "data-hidden-labels") == "0"
    assert _painted(page, "#session-chart canvas") > 500
    assert page.locator("#session-events tbody tr").count() >= 1
    page.screenshot(path=str(ARTIFACTS / "session.png"), full_page=True)

    # back to the report
    page.click("text=back to the report")
    page.wait_for_function("!document.getElementById('report-view').hidden")
    assert page.locator("[data-testid=explanation]").count() >= 3
    assert errors == [] and outside == []
    page.close()


def test_dashboard_shows_a_clear_error_when_the_report_fails(collector, browser):
    page = browser.new_page()
    page.goto(collector + "/?since=whenever")
    page.wait_for_function("document.body.dataset.state === 'error'", timeout=30_000)
    assert "Could not load the report" in page.inner_text("#headline")
    page.close()


def test_dashboard_walks_a_drill_path_with_a_breadcrumb(collector, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(collector + "/?since=4h")
    page.wait_for_function("document.body.dataset.state === 'ready'", timeout=60_000)
    assert page.locator("#breadcrumb").is_hidden()
    whole = page.evaluate("[REPORT.sessions, REPORT.high_sessions]")

    def drill(attrs_js: str) -> None:
        page.evaluate(f"showDrill({attrs_js})")
        page.evaluate("document.body.dataset.state = 'stale'")
        page.click("[data-testid=drill-in]")
        page.wait_for_function("document.body.dataset.state === 'ready'", timeout=60_000)

    # step 1: a version; step 2: a stage inside it (any order works)
    drill("{attrs: {app_version: '7.0.0'}}")
    assert page.evaluate("REPORT.where") == {"app_version": "7.0.0"}
    assert "where/app_version%3D7.0.0" in page.url
    drill("{attrs: {stage: 'login'}}")
    assert page.evaluate("REPORT.where") == {"app_version": "7.0.0", "stage": "login"}
    crumbs = page.locator("[data-testid=crumb]")
    assert crumbs.count() == 3
    texts = [crumbs.nth(i).inner_text() for i in range(3)]
    assert texts[0].startswith("all sessions") and texts[1].startswith("app_version = 7.0.0")
    assert texts[2].startswith("stage = login") and "clients" in texts[2]
    assert f"of {whole[0]:,} high" in texts[0]
    # the headline and tree speak of the subset
    assert "with app_version = 7.0.0, stage = login" in page.inner_text("#headline")
    assert page.evaluate("REPORT.sessions") < whole[0]
    page.screenshot(path=str(ARTIFACTS / "dashboard-drill-path.png"), full_page=True)
    # back up one step through the breadcrumb
    page.evaluate("document.body.dataset.state = 'stale'")
    crumbs.nth(1).click()
    page.wait_for_function("document.body.dataset.state === 'ready'", timeout=60_000)
    assert page.evaluate("REPORT.where") == {"app_version": "7.0.0"}
    assert page.locator("[data-testid=crumb]").count() == 2
    # and to all sessions
    page.evaluate("document.body.dataset.state = 'stale'")
    page.locator("[data-testid=crumb]").first.click()
    page.wait_for_function("document.body.dataset.state === 'ready'", timeout=60_000)
    assert page.evaluate("[REPORT.sessions, REPORT.high_sessions]") == whole
    assert page.locator("#breadcrumb").is_hidden()
    assert errors == []
    page.close()
