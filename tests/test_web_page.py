"""The web page in a real headless Chromium (Debian's package, driven by Playwright) against a real Serve app that
has an access token.

Open the page: it asks for the token (a wrong one is refused), then signs in; type a query, see results with
thumbnails (fetched with the session cookie); click one and the player lands inside the segment and loops it;
filters narrow the results; a screenshot is saved as a test artifact (the folder is printed).
Without Chromium the tests skip with one line saying how to install it; CI sets DRN_REQUIRE_BROWSER=1, which
turns that skip into a failure.
"""

from __future__ import annotations

import os
import secrets
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
TOKEN = secrets.token_urlsafe(32)
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
    from moments.serve.auth import Access, ServiceToken
    from moments.serve.backend import ServiceSettings

    library = build_served_library(tmp_path_factory.mktemp("page"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = start_service(ServiceSettings(db=library.db, features=library.features), port=port,
                        access=Access(ServiceToken(TOKEN)), num_cpus=0)
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


def sign_in(tab, token: str) -> None:
    """Type the token into the sign-in page and press Sign in."""
    tab.fill("#token", token)
    tab.click("#login button[type=submit]")


@pytest.fixture
def context(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield context
    context.close()


@pytest.fixture
def page(context, page_url):
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    first = tab.goto(page_url[0])
    assert first.status == 401  # the page asks for the token first
    sign_in(tab, TOKEN)
    tab.wait_for_selector("#status.ready", timeout=60_000)
    yield tab
    assert errors == []  # no script error on the page


def test_the_page_asks_for_the_token_refuses_a_wrong_one_and_keeps_it_for_the_tab(context, page_url) -> None:
    tab = context.new_page()
    answer = tab.goto(page_url[0] + "?q=a+blue+circle")
    assert answer.status == 401 and tab.locator("#token").get_attribute("type") == "password"
    sign_in(tab, "not-the-token-" + "x" * 20)
    tab.wait_for_selector("#login-message:not([hidden])", timeout=20_000)
    assert "wrong token" in tab.locator("#login-message").inner_text()
    assert tab.evaluate("() => sessionStorage.getItem('drn-moments-token')") is None
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(ARTIFACTS / "web-sign-in.png"))

    sign_in(tab, TOKEN)
    tab.wait_for_selector("#status.ready", timeout=60_000)  # the page itself, signed in
    assert "?q=a+blue+circle" in tab.url
    tab.wait_for_function("() => Number(document.body.dataset.searches || 0) >= 1", timeout=30_000)
    assert tab.locator(".result").count() > 0  # the search in the address ran once signed in
    assert tab.evaluate("() => sessionStorage.getItem('drn-moments-token')") == TOKEN
    cookies = context.cookies()
    assert len(cookies) == 1 and cookies[0]["httpOnly"] and cookies[0]["sameSite"] == "Strict"
    assert TOKEN not in cookies[0]["value"] and tab.evaluate("() => document.cookie") == ""  # out of scripts' reach
    assert tab.evaluate("() => fetch('api/videos').then(r => r.status)") == 200  # the cookie alone
    assert tab.evaluate("() => fetch('api/videos', {credentials: 'omit'}).then(r => r.status)") == 401

    context.clear_cookies()  # the session is over (expired, or a new token): the tab signs in again by itself
    tab.reload()
    tab.wait_for_selector("#status.ready", timeout=60_000)
    assert len(context.cookies()) == 1

    tab.click("#sign-out")
    tab.wait_for_selector("#login", timeout=20_000)
    assert context.cookies() == [] and tab.evaluate("() => sessionStorage.getItem('drn-moments-token')") is None
    assert tab.goto(page_url[0]).status == 401


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
