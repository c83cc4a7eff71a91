"""The web page in a real headless Chromium (Debian's package, driven by Playwright) against a real Serve app.

Open the page, type a query, see results with thumbnails; click one and the player lands inside the segment and
loops it; filters narrow the results; a screenshot is saved as a test artifact (the folder is printed).
Without Chromium the tests skip with one line saying how to install it; CI sets DRN_REQUIRE_BROWSER=1, which
turns that skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import pytest
from served_library import build_served_library

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("DRN_TEST_ARTIFACTS", REPO / "test-artifacts"))
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 "--autoplay-policy=no-user-gesture-required"]
INSTALL = "apt-get install -y chromium chromium-driver && pip install playwright (never `playwright install`)"
pytestmark = pytest.mark.slow


def chromium_path() -> str | None:
    for candidate in (os.environ.get("DRN_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def browser_or_skip() -> str:
    """The Chromium executable; a skip (or, under DRN_REQUIRE_BROWSER=1, a failure) when it cannot run."""
    executable = chromium_path()
    problem = None
    if executable is None:
        problem = f"no Chromium found: {INSTALL}"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = f"Playwright for Python is missing: {INSTALL}"
    if problem:
        if os.environ.get("DRN_REQUIRE_BROWSER") == "1":
            pytest.fail(problem)
        pytest.skip(problem)
    return executable


@pytest.fixture(scope="module")
def page_url(tmp_path_factory, ray_session):
    browser_or_skip()
    from ray import serve

    from moments.serve.app import start_service
    from moments.serve.backend import ServiceSettings

    library = build_served_library(tmp_path_factory.mktemp("page"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = start_service(ServiceSettings(db=library.db, features=library.features), port=port, num_cpus=0)
    try:
        yield url, library
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def browser(page_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=browser_or_skip(), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, page_url):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.goto(page_url[0])
    tab.wait_for_selector("#status.ready", timeout=60_000)
    yield tab
    context.close()
    assert errors == []  # no script error on the page


PLAYER_STATE = """() => {
  const v = document.getElementById('player');
  return {t: v.currentTime, ready: v.readyState, error: v.error && v.error.code, paused: v.paused,
          start: Number(v.dataset.start), end: Number(v.dataset.end), video: v.dataset.video};
}"""


def submit(page) -> None:
    """Press Search and wait until the page has shown the answer (results or a message)."""
    before = page.evaluate("() => Number(document.body.dataset.searches || 0)")
    page.click("button[type=submit]")
    page.wait_for_function(f"() => Number(document.body.dataset.searches || 0) > {before}", timeout=30_000)


def search(page, text: str) -> list[dict]:
    page.fill("#q", text)
    submit(page)
    return page.eval_on_selector_all(".result", """items => items.map(item => ({
        video: item.dataset.video, start: Number(item.dataset.start), end: Number(item.dataset.end),
        query: item.querySelector('.query').textContent, score: Number(item.querySelector('.score')
          .textContent.replace('score ', ''))}))""")


def wait_for(page, condition: str, timeout_s: float = 20.0) -> dict:
    """Poll the player until `condition` (a JS expression over the state `s`) holds; the last state."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = page.evaluate(PLAYER_STATE)
        if page.evaluate(f"s => Boolean({condition})", state) or time.monotonic() > deadline:
            return state
        time.sleep(0.1)


def test_search_click_and_the_player_lands_inside_the_moment(page, page_url, capsys) -> None:
    _, library = page_url
    results = search(page, "the red square moves")
    assert len(results) == 10 and all("square" in r["query"] or "red" in r["query"] for r in results[:1])
    thumbs = page.eval_on_selector_all(".result:first-child .thumbs img",
                                       "imgs => imgs.map(img => [img.complete, img.naturalWidth])")
    page.wait_for_function("""() => [...document.querySelectorAll('.result:first-child .thumbs img')]
                              .every(img => img.complete && img.naturalWidth > 0)""", timeout=30_000)
    assert len(thumbs) == 3

    page.locator(".result").nth(1).click()  # the second result: not simply the start of the video
    chosen = results[1]
    state = wait_for(page, "s.ready >= 2 && s.t >= s.start && !s.paused")
    assert state["error"] is None, f"the video did not play (MediaError {state['error']})"
    assert state["video"] == chosen["video"] and state["start"] == chosen["start"] and state["end"] == chosen["end"]
    assert chosen["start"] - 0.05 <= state["t"] <= chosen["end"] + 0.05, state
    assert page.locator(".result.playing").count() == 1

    bars = page.locator("#timelines .timeline")
    assert bars.count() == len({r["video"] for r in results})
    assert page.locator("#timelines .moment").count() == len(results)
    page.wait_for_selector("#video-timeline .moment", timeout=20_000)
    assert page.locator("#video-timeline .moment.playing").count() >= 1

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "web-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    with capsys.disabled():
        print(f"\nscreenshot of the search page: {shot}")


def test_the_player_loops_the_moment(page) -> None:
    search(page, "a blue circle")
    page.locator(".result").first.click()
    state = wait_for(page, "s.ready >= 2 && s.t >= s.start && !s.paused")
    assert state["error"] is None
    assert state["end"] - state["start"] > 1.0
    page.evaluate("() => { const v = document.getElementById('player'); v.currentTime = Number(v.dataset.end) - 0.2; }")
    # playing on from 0.2 s before the end, only the loop can bring the player back before end - 0.5
    looped = wait_for(page, "s.t >= s.start - 0.05 && s.t < s.end - 0.5", timeout_s=15.0)
    assert looped["start"] - 0.05 <= looped["t"] < looped["end"] - 0.5, looped


def test_filters_by_video_and_minimum_score(page, page_url) -> None:
    _, library = page_url
    video = sorted(library.durations)[2]
    page.select_option("#video", video)
    results = search(page, "a shape moves")
    assert results and {r["video"] for r in results} == {video}
    page.select_option("#video", "")
    page.fill("#min-score", "0.8")
    results = search(page, "a shape moves")
    assert results and min(r["score"] for r in results) >= 0.8
    assert {r["video"] for r in results} != {video}  # the video filter is off again
    assert "min_score=0.8" in page.url  # the search is in the address, to share or reload


def test_an_empty_search_and_service_errors_show_a_message(page) -> None:
    page.fill("#min-score", "")
    page.evaluate("() => { document.getElementById('q').removeAttribute('required'); }")
    page.fill("#q", "   ")
    page.click("button[type=submit]")
    assert page.locator("#message.error").inner_text().startswith("Type what you are looking for")
    page.evaluate("() => { document.getElementById('min-score').type = 'text'; }")
    page.fill("#min-score", "lots")
    assert search(page, "a door") == []
    message = page.locator("#message.error").inner_text()
    assert "min_score must be a number" in message  # the service's own words
