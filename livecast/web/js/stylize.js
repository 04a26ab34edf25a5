// Stylize: webcam → WebRTC → stylized video, with live settings and stats over the control channel.
import { $, clearBanner, debounce, renderHeader, setBanner, showHealth, testHook } from "./common.js";
import { connect } from "./rtc.js";

renderHeader("stylize.html");
const banner = $("#banner");
const ui = {
  prompt: $("#prompt"), strength: $("#strength"), seed: $("#seed"), similarity: $("#similarity"),
  start: $("#start"), stop: $("#stop"), local: $("#local"), remote: $("#remote"), status: $("#status"),
};
// Read by the browser tests; handy in the console too.
const state = testHook("stylize", { framesRendered: 0, stats: null, settings: null, sessionId: null, errors: [] });
let session = null;
let camera = null;
let renderLoop = 0;  // a restart begins a new counting loop; the old one stops at its next tick

const settings = () => ({
  prompt: ui.prompt.value, strength: Number(ui.strength.value), seed: Number(ui.seed.value) || 0,
  similarity_filter: ui.similarity.checked, num_inference_steps: 4,
});

function onMessage(message) {
  if (message.type === "stats") {
    state.stats = message;
    $("#stat-fps").textContent = message.output_fps.toFixed(1);
    $("#stat-in-fps").textContent = message.input_fps.toFixed(1);
    $("#stat-latency").textContent = `${Math.round(message.latency_ms.p50)} / ${Math.round(message.latency_ms.p95)} ms`;
    $("#stat-dropped").textContent = message.dropped;
  } else if (message.type === "settings" || message.type === "hello") {
    state.settings = message.settings;
    clearBanner(banner);
  } else if (message.type === "error") {
    state.errors.push(message);
    setBanner(banner, `Setting rejected: ${message.message}`, "error");
  }
}

function countRendered() {
  const loop = ++renderLoop;
  const tick = () => {
    if (loop !== renderLoop || !session) return;
    state.framesRendered += 1;
    $("#stat-rendered").textContent = state.framesRendered;
    ui.remote.requestVideoFrameCallback(tick);
  };
  ui.remote.requestVideoFrameCallback(tick);
}

async function start() {
  ui.start.disabled = true;
  try {
    ui.status.textContent = "Opening the camera…";
    camera = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
    ui.local.srcObject = camera;
    ui.status.textContent = "Connecting…";
    session = await connect(camera, settings(), {
      onMessage,
      onState: (s) => {
        ui.status.textContent = `Connection: ${s}`;
        if (s === "failed" || s === "closed") stop();
      },
    });
    state.sessionId = session.sessionId;
    ui.remote.srcObject = await session.output;
    countRendered();
    ui.stop.disabled = false;
  } catch (error) {
    setBanner(banner, `Could not start: ${error.message}`, "error");
    ui.status.textContent = "Idle.";
    stop();
  }
}

function stop() {
  if (session) session.close();
  session = null;
  if (camera) camera.getTracks().forEach((t) => t.stop());
  camera = null;
  ui.start.disabled = false;
  ui.stop.disabled = true;
}

const send = (update) => session && session.send(update);
ui.prompt.addEventListener("input", debounce(() => send({ prompt: ui.prompt.value }), 250));
ui.strength.addEventListener("input", () => {
  $("#strength-value").textContent = Number(ui.strength.value).toFixed(2);
  send({ strength: Number(ui.strength.value) });
});
ui.seed.addEventListener("change", () => send({ seed: Number(ui.seed.value) || 0 }));
ui.similarity.addEventListener("change", () => send({ similarity_filter: ui.similarity.checked }));
ui.start.addEventListener("click", start);
ui.stop.addEventListener("click", stop);
window.addEventListener("pagehide", stop);

const status = await showHealth("diffusion", banner);
if (!status.diffusion) ui.start.disabled = true;
