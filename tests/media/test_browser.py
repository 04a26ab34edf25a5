"""The web pages in headless Chromium (Playwright): Stylize over WebRTC with the fake camera, Imagine
over /v1/ws/frames, Chat over /v1/ws/generate with a tiny random Llama, and pages with a side off."""
from __future__ import annotations

import io
import time

import PIL.Image
import pytest

from tests.media.app import build_app
from tests.media.conftest import running

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
