"""Servers for the media tests: the app under a real uvicorn on 127.0.0.1 (a free port, in a thread),
the demo diffusion model at 128 px, and a headless Chromium driven by Playwright."""
from __future__ import annotations

import contextlib
import shutil
import time

import pytest

from tests.live_server import LiveServer
from tests.media.app import build_app

CHROMIUM_ARGS = ["--no-sandbox", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-features=WebRtcHideLocalIpsWithMdns", "--allow-loopback-in-peer-connection"]


class MediaServer(LiveServer):
    @property
    def diffusion(self):
        return self.app.state.media

    def wait_for(self, predicate, timeout: float = 20.0, message: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {message}")
            time.sleep(0.05)


@contextlib.contextmanager
def running(app):
    server = MediaServer(app).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def media_server():
    """Diffusion only (demo weights, 128 px), 2 video sessions at most."""
    with running(build_app(diffusion=dict(resolution=128, max_video_sessions=2, max_frame_clients=3))) as server:
        yield server


@pytest.fixture(scope="module")
def http(media_server):
    with media_server.http() as client:
        yield client


@pytest.fixture(scope="session")
def chromium_path():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Debian's chromium is not installed (make chromium)")
    return path


@pytest.fixture(scope="module")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser):
    """A fresh page; any uncaught script error on it fails the test."""
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, errors
