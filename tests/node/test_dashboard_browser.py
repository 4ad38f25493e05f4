"""The dashboard in a real browser: Debian's headless Chromium driven by Selenium,
against nodes on loopback TCP.

The overview loads without console errors, takes the token from the link and hides it,
shows the node id, shows a hostile node name as text, and updates live when messages
arrive (and their trace when a receipt comes back); the chirp page follows a node by
id, shows its posts live, and posts a chirp that reaches a follower node; without a
token, or with a stale one, the pages ask for it.

Screenshots of both pages (light and dark) are written to ``build/screenshots/`` at the
top of the repository (the path is printed). The tests skip, saying what is missing,
where Chromium, chromedriver or selenium is not installed (``apt-get install chromium
chromium-driver``; selenium comes with the test extra).

Selenium is synchronous: every browser step runs in a worker thread
(``trio.to_thread.run_sync``) while the nodes run in the test's trio loop; the steps
wait on the DOM (``WebDriverWait``), never by sleeping.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import pytest
import trio

from node import Node, NodeConfig
from node._chirp import chirp_topic
from tests.helpers import NodeFactory, delivered, messages, peer
from tests.node.test_chirp import knows, timeline_of

if TYPE_CHECKING:
    from selenium.webdriver.chromium.webdriver import ChromiumDriver as WebDriver

ROOT = Path(__file__).resolve().parents[2]
#: Where the screenshots go, for a person to look at.
SCREENSHOTS = ROOT / "build" / "screenshots"
#: How long a browser step may wait for the page (s): generous for a loaded machine.
WAIT = 30.0
#: Without these, Chromium on a machine without a network stalls on its own services.
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
)
HOSTILE_NAME = "<b>bob</b>&amp;"
HOSTILE_POST = "<img src=x onerror=alert(1)> & <script>alert(2)</script> bold? <b>no</b>"

T = TypeVar("T")
P = ParamSpec("P")


def _missing() -> str | None:
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install -e '.[test]')"
    if _chromium() is None:
        return "Chromium is not installed (apt-get install chromium)"
    if shutil.which("chromedriver") is None:
        return "chromedriver is not installed (apt-get install chromium-driver)"
    return None


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    """One headless Chromium for the module's tests, with a fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _chromium() or ""
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots of the dashboard: {SCREENSHOTS}")
    return SCREENSHOTS


async def step(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a browser step in a worker thread (the nodes go on in the trio loop)."""
    return await trio.to_thread.run_sync(functools.partial(function, *args, **kwargs))


def link(node: Node, page: str = "") -> str:
    assert node.api_url is not None
    return f"{node.api_url.removesuffix('/api/v1')}/{page}#token={node.api_token}"


# -- browser steps (synchronous, in a worker thread) -------------------------------------


def wait_for(driver: WebDriver, what: str, condition: Callable[[WebDriver], Any]) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT, poll_frequency=0.05).until(condition)
    except TimeoutException:
        log = browser_log(driver)
        raise AssertionError(f"the page never showed {what}; its log: {log}") from None


def text_of(driver: WebDriver, selector: str) -> str:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, selector)
    return found[0].text if found else ""


def rate_of(driver: WebDriver, selector: str) -> float:
    """The number a tile shows (0 for none yet)."""
    try:
        return float(text_of(driver, selector).replace(",", ""))
    except ValueError:
        return 0.0


def has(selector: str, text: str = "") -> Callable[[WebDriver], bool]:
    def check(driver: WebDriver) -> bool:
        from selenium.webdriver.common.by import By

        return any(text in e.text for e in driver.find_elements(By.CSS_SELECTOR, selector))

    return check


def browser_log(driver: WebDriver) -> list[dict[str, Any]]:
    """What the page logged since the last call (selenium leaves get_log untyped)."""
    log: list[dict[str, Any]] = driver.get_log("browser")  # type: ignore[no-untyped-call]
    return log


def console_problems(driver: WebDriver) -> list[dict[str, Any]]:
    """What the page logged at level SEVERE (errors, refused resources, CSP violations)."""
    return [entry for entry in browser_log(driver) if entry["level"] == "SEVERE"]


def open_page(driver: WebDriver, url: str) -> None:
    browser_log(driver)  # start with an empty log
    driver.get(url)


def screenshot(driver: WebDriver, path: Path, *, dark: bool = False) -> None:
    """The whole page, in the light or dark scheme."""
    scheme = "dark" if dark else "light"
    driver.execute_cdp_cmd(
        "Emulation.setEmulatedMedia",
        {"features": [{"name": "prefers-color-scheme", "value": scheme}]},
    )
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, max(900, int(height) + 120))
    driver.save_screenshot(str(path))
    driver.set_window_size(1400, 1000)
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
    print(f"  {path}")


def type_into(driver: WebDriver, selector: str, text: str, submit: str) -> None:
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.CSS_SELECTOR, selector)
    box.clear()
    box.send_keys(text)
    driver.find_element(By.CSS_SELECTOR, submit).click()


# -- the nodes ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def named_node(tmp_path: Path, name: str) -> AsyncIterator[Node]:
    """A node on loopback TCP whose display name is ``name`` (any text: no file name)."""
    config = NodeConfig(listen="127.0.0.1:0", name=name)
    async with Node.open(tmp_path / "named", config=config) as node:
        yield node


# -- the tests ---------------------------------------------------------------------------


async def test_the_overview_is_live(
    tcp_nodes: NodeFactory, tmp_path: Path, browser: WebDriver, screenshots: Path
) -> None:
    alice = await tcp_nodes.open("alice")
    async with named_node(tmp_path, HOSTILE_NAME) as bob:
        await peer(alice, bob)
        await step(open_page, browser, link(alice))

        # The node id shows; the token left the address bar for the browser's storage.
        def shows_the_node(driver: WebDriver) -> None:
            wait_for(driver, "the node id", lambda d: text_of(d, "#node-id") == alice.node_id.text)
            assert "token" not in driver.current_url
            stored = driver.execute_script("return localStorage.getItem('ptth.token')")
            assert stored == alice.api_token
            wait_for(driver, "the stream live", has("#connection", "live"))

        await step(shows_the_node, browser)

        # A name from the network is text, never markup.
        def shows_the_name_as_text(driver: WebDriver) -> None:
            from selenium.webdriver.common.by import By

            wait_for(driver, "bob's name", has("#neighbours .name", HOSTILE_NAME))
            assert driver.find_elements(By.CSS_SELECTOR, "#neighbours b") == []

        await step(shows_the_name_as_text, browser)

        # A message arrives: the received frames show it.
        sent = await bob.send(alice.node_id, b"hello, dashboard")
        await step(
            wait_for,
            browser,
            "the message received",
            has(f"#received tr[data-id='{sent.id.hex()}']"),
        )
        # A message sent with a receipt: its trace turns to delivered.
        trace = await delivered(alice, bob, b"and back")
        await step(
            wait_for,
            browser,
            "the delivered trace",
            has(f"#sent tr[data-id='{trace.id.hex()}'] .badge", "delivered"),
        )
        # Many messages: the throughput tile and chart move (the sampler runs every 2 s).
        frames = [bob.new_frame(alice.node_id, f"burst {n}".encode()) for n in range(300)]
        await bob.send_sealed([(frame, frame.seal(bob.identity)) for frame in frames])
        with trio.fail_after(WAIT):
            await messages(alice, len(frames) + 1)
        await step(wait_for, browser, "the burst's rate", lambda d: rate_of(d, "#tile-in") >= 50)
        await step(wait_for, browser, "the whole burst", has("#tile-inbox", f"{len(frames) + 1:,}"))
        await step(screenshot, browser, screenshots / "overview.png")
        await step(screenshot, browser, screenshots / "overview-dark.png", dark=True)
        problems = await step(console_problems, browser)
        assert problems == []


async def test_chirp_posts_reach_a_follower_and_the_timeline_is_live(
    tcp_nodes: NodeFactory, browser: WebDriver, screenshots: Path
) -> None:
    alice, bob = await tcp_nodes.open("alice"), await tcp_nodes.open("bob")
    await peer(alice, bob)
    # Bob follows alice (through his node); alice follows bob from her chirp page.
    await bob.chirp.follow(alice.node_id)
    await knows(alice, chirp_topic(alice.node_id), bob)
    await step(open_page, browser, link(alice, "chirp"))
    await step(wait_for, browser, "alice's id", has("#me-id", alice.node_id.text))
    await step(type_into, browser, "#follow-id", bob.node_id.text, "#follow-button")
    await step(wait_for, browser, "bob followed", has("#following", bob.node_id.text[:10]))
    await knows(bob, chirp_topic(bob.node_id), alice)

    # Bob posts: the page's timeline shows it, live, as text.
    await bob.chirp.post("hello from bob's node")
    await bob.chirp.post(HOSTILE_POST)
    await step(wait_for, browser, "bob's post", has("#timeline .post-text", HOSTILE_POST))

    def markup_stays_text(driver: WebDriver) -> None:
        from selenium.webdriver.common.by import By

        for tag in ("img", "script", "b"):
            assert driver.find_elements(By.CSS_SELECTOR, f"#timeline {tag}") == []
        texts = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#timeline .post-text")]
        assert texts == [HOSTILE_POST, "hello from bob's node"]  # newest first

    await step(markup_stays_text, browser)

    # Alice posts from the page: it reaches bob's node.
    words = "posted from the browser ✓"
    await step(type_into, browser, "#post-text", words, "#post-button")
    await step(wait_for, browser, "the post taken", has("#post-status", "Posted"))
    posts = await timeline_of(bob, 1)
    assert [(post.author, post.text) for post in posts] == [(alice.node_id, words)]
    await step(wait_for, browser, "alice's own post", has("#mine .post-text", words))

    await step(screenshot, browser, screenshots / "chirp.png")
    await step(screenshot, browser, screenshots / "chirp-dark.png", dark=True)
    assert await step(console_problems, browser) == []


async def test_without_a_token_the_pages_ask_for_it(
    tcp_nodes: NodeFactory, browser: WebDriver, screenshots: Path
) -> None:
    alice = await tcp_nodes.open("alice")
    assert alice.api_url is not None
    root = alice.api_url.removesuffix("/api/v1")

    def asks_then_opens(driver: WebDriver) -> None:
        from selenium.webdriver.common.by import By

        open_page(driver, root + "/")
        driver.execute_script("localStorage.clear()")
        driver.get(root + "/")
        wait_for(driver, "the token form", lambda d: d.find_element(By.ID, "login").is_displayed())
        assert "ptth dashboard" in driver.find_element(By.ID, "login").text
        assert not driver.find_element(By.ID, "app").is_displayed()
        assert console_problems(driver) == []  # nothing was asked of the node without a token
        screenshot(driver, screenshots / "token-form.png")
        # The whole link pasted in works as well as the token.
        type_into(driver, "#login-token", link(alice), "#login-form button")
        wait_for(driver, "the node id", lambda d: text_of(d, "#node-id") == alice.node_id.text)

    await step(asks_then_opens, browser)

    def a_stale_token_asks_again(driver: WebDriver) -> None:
        from selenium.webdriver.common.by import By

        # A node makes a new token each time it starts: the old one gets 401.
        driver.execute_script("localStorage.setItem('ptth.token', 'from-an-earlier-run')")
        driver.get(root + "/chirp")
        wait_for(driver, "the token form", lambda d: d.find_element(By.ID, "login").is_displayed())
        wait_for(driver, "why", has("#login-problem", "did not take the token"))
        assert driver.execute_script("return localStorage.getItem('ptth.token')") is None

    await step(a_stale_token_asks_again, browser)
