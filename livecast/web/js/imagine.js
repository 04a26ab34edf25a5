// Imagine: /v1/ws/frames in txt2img mode. Pull-based: ask for a frame, draw it, ask again, so the
// server never runs ahead of this page; prompt edits go out as config messages.
import { $, debounce, renderHeader, setBanner, clearBanner, showHealth, testHook, wsUrl } from "./common.js";

renderHeader("imagine.html");
const banner = $("#banner");
const ui = { prompt: $("#prompt"), seed: $("#seed"), save: $("#save"), view: $("#view") };
const context = ui.view.getContext("2d");
// Read by the browser tests.
const state = testHook("imagine", { frames: 0, lastMeta: null, settings: null });
let socket = null;
let pendingMeta = null;
let frameTimes = [];

function configure() {
  socket?.send(JSON.stringify({ type: "config", prompt: ui.prompt.value, seed: Number(ui.seed.value) || 0 }));
}

async function draw(blob) {
  const bitmap = await createImageBitmap(blob);
  if (ui.view.width !== bitmap.width || ui.view.height !== bitmap.height) {
    ui.view.width = bitmap.width;
    ui.view.height = bitmap.height;
  }
  context.drawImage(bitmap, 0, 0);
  bitmap.close();
  state.frames += 1;
  const now = performance.now();
  frameTimes = [...frameTimes.filter((t) => now - t < 2000), now];
  $("#stat-frames").textContent = state.frames;
  $("#stat-fps").textContent = (frameTimes.length / 2).toFixed(1);
  $("#stat-latency").textContent = `${Math.round(state.lastMeta.latency_ms)} ms`;
  ui.save.disabled = false;
  socket?.send(JSON.stringify({ type: "next" }));  // pull the next frame only once this one is shown
}

function open() {
  socket = new WebSocket(wsUrl("/v1/ws/frames"));
  socket.binaryType = "blob";
  socket.onopen = () => {
    socket.send(JSON.stringify({ type: "config", mode: "txt2img", format: "jpeg", quality: 90,
                                 prompt: ui.prompt.value, seed: Number(ui.seed.value) || 0 }));
    socket.send(JSON.stringify({ type: "next" }));
  };
  socket.onmessage = (event) => {
    if (typeof event.data !== "string") {
      if (pendingMeta) draw(new Blob([event.data], { type: pendingMeta.media_type }));
      return;
    }
    const message = JSON.parse(event.data);
    if (message.type === "frame") { pendingMeta = state.lastMeta = message; }
    else if (message.type === "config") { state.settings = message.settings; clearBanner(banner); }
    else if (message.type === "error") { setBanner(banner, message.message, "error"); }
  };
  socket.onclose = () => {
    socket = null;
    setBanner(banner, "Disconnected from /v1/ws/frames; reconnecting…", "error");
    setTimeout(open, 2000);
  };
}

ui.prompt.addEventListener("input", debounce(configure, 120));
ui.seed.addEventListener("change", configure);
ui.save.addEventListener("click", () => {
  ui.view.toBlob((blob) => {
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `livecast-${Date.now()}.png`;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  }, "image/png");
});

const status = await showHealth("diffusion", banner);
if (status.diffusion) open();
else { ui.prompt.disabled = true; ui.seed.disabled = true; }
