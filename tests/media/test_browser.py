"""The web pages in headless Chromium (Playwright): Stylize over WebRTC with the fake camera, Imagine
over /v1/ws/frames, Chat over /v1/ws/generate with a tiny random Llama, and pages with a side off."""
from __future__ import annotations

import contextlib
import io
import os
import time

import numpy as np
import PIL.Image
import pytest

from livecast.streamdiff.demo import demo_weights_shipped
from tests.media.app import build_app
from tests.media.conftest import CHROMIUM_ARGS, running
from tests.streamdiff.test_demo_trained import MIN_GAP_OVER_UNRELATED

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Both videos drawn at one small size; returns the mean absolute difference over RGB (0-255).
COMPARE_VIDEOS = """() => {
  const size = [64, 48];
  const pixels = (video) => {
    const canvas = document.createElement("canvas");
    [canvas.width, canvas.height] = size;
    const context = canvas.getContext("2d");
    context.drawImage(video, 0, 0, ...size);
    return context.getImageData(0, 0, ...size).data;
  };
  const a = pixels(document.querySelector("#local")), b = pixels(document.querySelector("#remote"));
  let sum = 0, count = 0;
  for (let i = 0; i < a.length; i += 4) {
    for (let c = 0; c < 3; c++) { sum += Math.abs(a[i + c] - b[i + c]); count += 1; }
  }
  return sum / count;
}"""


# Both videos drawn at one size: the RGBA bytes of each, for scoring in Python.
GRAB_VIDEOS = """([width, height]) => {
  const grab = (video) => {
    const canvas = document.createElement("canvas");
    [canvas.width, canvas.height] = [width, height];
    const context = canvas.getContext("2d");
    context.drawImage(video, 0, 0, width, height);
    return Array.from(context.getImageData(0, 0, width, height).data);
  };
  return [grab(document.querySelector("#local")), grab(document.querySelector("#remote"))];
}"""


@pytest.fixture(scope="module")
def llm_server(tiny_llama_path):
    """LLM only: the diffusion side is off."""
    with running(build_app(llm_path=tiny_llama_path)) as server:
        yield server


def test_stylize_renders_stylized_video_and_takes_prompt_changes(media_server, page):
    service = media_server.diffusion
    page.goto(f"{media_server.url}/stylize.html")
    page.wait_for_function("document.querySelector('#pill-diffusion').textContent.includes('demo')")
    started = time.monotonic()
    page.click("#start")
    page.wait_for_function("window.livecastTest.stylize.framesRendered >= 30", timeout=20_000)
    assert time.monotonic() - started < 20
    assert page.evaluate(COMPARE_VIDEOS) > 12  # the stylized picture is not the camera's

    session_id = page.evaluate("window.livecastTest.stylize.sessionId")
    stream_id = service.video.sessions[session_id].stream_id
    page.fill("#prompt", "a prompt typed in the page")
    page.wait_for_function("window.livecastTest.stylize.settings.prompt === 'a prompt typed in the page'", timeout=10_000)
    rendered = page.evaluate("window.livecastTest.stylize.framesRendered")
    page.wait_for_function(f"window.livecastTest.stylize.framesRendered >= {rendered + 5}", timeout=10_000)
    assert service.batcher._streams[stream_id].state.params.prompt == "a prompt typed in the page"
    page.locator("#strength").fill("1")
    page.wait_for_function("window.livecastTest.stylize.settings.strength === 1", timeout=10_000)

    # stats from the control channel reach the page
    page.wait_for_function("window.livecastTest.stylize.stats && window.livecastTest.stylize.stats.frames_out > 0", timeout=10_000)
    assert float(page.text_content("#stat-fps")) > 0
    assert "ms" in page.text_content("#stat-latency")
    page.click("#stop")
    media_server.wait_for(lambda: not service.video.sessions and not service.video.peers, 15, "hang-up")
    assert stream_id not in service.batcher.stream_ids()


def write_y4m(path, frames: list[np.ndarray], fps: int = 10) -> None:
    """Frames (H, W, 3 uint8) as a YUV4MPEG2 file, the format Chromium's fake camera plays from a
    file (--use-file-for-fake-video-capture): BT.601 full-range Y, U, V planes, 4:2:0."""
    height, width = frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for rgb in frames:
            r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
            y = 0.299 * r + 0.587 * g + 0.114 * b
            u = 128 + (b - y) * 0.564
            v = 128 + (r - y) * 0.713
            sub = lambda c: c.reshape(height // 2, 2, width // 2, 2).mean((1, 3))  # noqa: E731
            f.write(b"FRAME\n")
            for plane in (y, sub(u), sub(v)):
                f.write(np.clip(np.rint(plane), 0, 255).astype(np.uint8).tobytes())


@pytest.mark.skipif(not demo_weights_shipped(), reason="no trained demo weights (livecast train demo)")
def test_stylize_output_follows_the_camera(media_server, browser, chromium_path, tmp_path):
    """The trained demo through the whole Stylize page: Chromium's fake camera plays a held-out
    camera-like scene (a person at a desk, seeded, never trained on) and the stylized video keeps
    its structure. Scored like the model's own tests (edge-map correlation, tests/streamdiff/
    test_demo_trained.py) between the camera frame and the stylized frame drawn at the same
    moment, against the camera frame upside down: a picture unrelated to the camera's layout
    scores as well on both. With LIVECAST_SCREENSHOTS=DIR it saves both videos there (the
    README's pictures)."""
    from livecast.streamdiff.training import metrics, scenes

    camera = tmp_path / "camera.y4m"
    write_y4m(camera, [scenes.to_uint8(scenes.person_frame(256))[:, 32:224]] * 20)  # 3:4, as webcams are
    # a second Chromium, with the file as its camera, from the suite's Playwright
    with contextlib.closing(browser.browser_type.launch(
            executable_path=chromium_path, headless=True,
            args=[*CHROMIUM_ARGS, f"--use-file-for-fake-video-capture={camera}"])) as own:
        page = own.new_page()
        page.goto(f"{media_server.url}/stylize.html")
        page.wait_for_function("document.querySelector('#pill-diffusion').textContent.includes('trained')")
        page.click("#start")
        page.wait_for_function("window.livecastTest.stylize.framesRendered >= 10", timeout=30_000)
        size = (96, 128)
        scores = []
        for _ in range(3):
            rendered = page.evaluate("window.livecastTest.stylize.framesRendered")
            page.wait_for_function(f"window.livecastTest.stylize.framesRendered > {rendered}", timeout=10_000)
            local, remote = (np.asarray(v, np.uint8).reshape(size[1], size[0], 4)[..., :3]
                             for v in page.evaluate(GRAB_VIDEOS, list(size)))
            scores.append((metrics.edge_correlation(local, remote),
                           metrics.edge_correlation(local[::-1], remote)))
        if out := os.environ.get("LIVECAST_SCREENSHOTS"):
            page.locator("#local").screenshot(path=f"{out}/stylize-camera.png")
            page.locator("#remote").screenshot(path=f"{out}/stylize-oil-painting.png")
        follows, unrelated = np.median(scores, axis=0)
        # the margin the model's own structure tests ask over an unrelated frame; the page
        # runs the test server's 128 px (8 px latent cells), so finer edges are not expected
        assert follows > 0.4 and follows > unrelated + MIN_GAP_OVER_UNRELATED, scores
        page.click("#stop")


def test_imagine_follows_the_prompt_and_saves_a_frame(media_server, page):
    page.goto(f"{media_server.url}/imagine.html")
    page.wait_for_function("window.livecastTest.imagine.frames >= 3", timeout=20_000)
    stddev = page.evaluate("""() => {
      const canvas = document.querySelector('#view');
      const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
      let sum = 0, sq = 0, n = 0;
      for (let i = 0; i < data.length; i += 4) { sum += data[i]; sq += data[i] * data[i]; n += 1; }
      return Math.sqrt(sq / n - (sum / n) ** 2);
    }""")
    assert stddev > 5  # a picture, not a blank canvas
    if out := os.environ.get("LIVECAST_SCREENSHOTS"):  # the page's own prompt (the README's picture)
        page.locator("#view").screenshot(path=f"{out}/imagine-watercolor.png")
    page.fill("#prompt", "stormy sea")
    page.wait_for_function("window.livecastTest.imagine.settings && window.livecastTest.imagine.settings.prompt === 'stormy sea'",
                           timeout=10_000)
    frames = page.evaluate("window.livecastTest.imagine.frames")
    page.wait_for_function(f"window.livecastTest.imagine.frames >= {frames + 2}", timeout=10_000)
    with page.expect_download() as download_info:
        page.click("#save")
    download = download_info.value
    assert download.suggested_filename.endswith(".png")
    saved = PIL.Image.open(io.BytesIO(open(download.path(), "rb").read()))
    assert saved.format == "PNG" and saved.size == (128, 128)


def test_chat_streams_and_cancel_stops(llm_server, page):
    page.goto(f"{llm_server.url}/chat.html")
    page.wait_for_function("document.querySelector('#pill-llm').textContent.includes('tiny')")
    page.fill("#max-tokens", "6")
    page.fill("#input", "Say hi")
    page.press("#input", "Enter")
    page.wait_for_function("window.livecastTest.chat.replies.length === 1", timeout=30_000)
    first = page.evaluate("window.livecastTest.chat.replies[0]")
    assert first["finishReason"] == "length" and first["tokens"] == 6 and first["text"]
    assert "tokens/s" in page.text_content("#speed")

    page.fill("#max-tokens", "900")  # the tiny model holds 1024 positions
    page.fill("#input", "Now write a very long story")
    page.click("#send")
    page.wait_for_function("window.livecastTest.chat.active && window.livecastTest.chat.active.tokens >= 3", timeout=30_000)
    page.click("#stop")
    page.wait_for_function("window.livecastTest.chat.replies.length === 2", timeout=30_000)
    second = page.evaluate("window.livecastTest.chat.replies[1]")
    assert second["finishReason"] == "abort" and 3 <= second["tokens"] < 900
    assert page.get_attribute(".msg.assistant >> nth=1", "data-finish") == "abort"
    assert page.is_enabled("#send") and not page.is_enabled("#stop")


def test_pages_say_which_side_is_off(media_server, llm_server, page):
    page.goto(f"{llm_server.url}/stylize.html")
    page.wait_for_selector("#banner.show")
    assert "diffusion pipeline is off" in page.text_content("#banner")
    assert not page.is_enabled("#start")
    page.goto(f"{llm_server.url}/imagine.html")
    page.wait_for_selector("#banner.show")
    assert "diffusion pipeline is off" in page.text_content("#banner")
    page.goto(f"{media_server.url}/chat.html")
    page.wait_for_selector("#banner.show")
    assert "LLM is off" in page.text_content("#banner") and not page.is_enabled("#send")
    page.goto(f"{media_server.url}/")
    page.wait_for_function("document.querySelector('#card-chat').textContent.includes('off')")
    assert page.text_content("#card-stylize") == "ready"


class _Loop:
    """An asyncio loop on its own thread, for aiortc peers beside the sync Playwright API."""

    def __init__(self) -> None:
        import asyncio
        import threading

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 60.0):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_watch_plays_a_whip_stream_over_whep(media_server, page):
    from tests.media.rtc_client import Publisher

    service = media_server.diffusion
    loop = _Loop()

    async def make() -> Publisher:  # aiortc binds its peer to the loop it is made on
        return Publisher(media_server.url)
    publisher = loop.run(make())
    try:
        response = loop.run(publisher.publish("?prompt=ink%20wash"))
        assert response.status_code == 201, response.text
        page.goto(f"{media_server.url}/watch.html?stream={publisher.stream_id}")
        page.wait_for_function("window.livecastTest.watch.framesRendered >= 10", timeout=30_000)
        assert page.evaluate("window.livecastTest.watch.errors") == []
        source = service.broadcasts.get(publisher.stream_id, "default")
        assert len(source.viewers) == 1 and next(iter(source.viewers.values())).frames_sent >= 10
        # the picture is a picture: not a blank frame
        stddev = page.evaluate("""() => {
          const video = document.querySelector('#remote'), canvas = document.createElement('canvas');
          [canvas.width, canvas.height] = [64, 48];
          const context = canvas.getContext('2d');
          context.drawImage(video, 0, 0, 64, 48);
          const data = context.getImageData(0, 0, 64, 48).data;
          let sum = 0, sq = 0, n = 0;
          for (let i = 0; i < data.length; i += 4) { sum += data[i]; sq += data[i] * data[i]; n += 1; }
          return Math.sqrt(sq / n - (sum / n) ** 2);
        }""")
        assert stddev > 2
        page.click("#stop")
        media_server.wait_for(lambda: not source.viewers, 15, "the viewer to leave")
    finally:
        loop.run(publisher.close())
        with media_server.http() as http:
            if publisher.location:
                http.delete(publisher.location)
        loop.close()
    media_server.wait_for(lambda: not service.broadcasts.sources and not service.broadcasts.peers, 15, "hang-up")
