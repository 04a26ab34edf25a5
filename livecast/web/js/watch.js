// Watch: plays a WHIP source's stylized output over WHEP (POST /v1/whep/{id}, application/sdp).
import { $, authHeaders, clearBanner, renderHeader, setBanner, showHealth, testHook } from "./common.js";
import { gatheringComplete } from "./rtc.js";

renderHeader("watch.html");
const ui = { stream: $("#stream"), remote: $("#remote"), watch: $("#watch"), stop: $("#stop"), banner: $("#banner") };
const state = testHook("watch", { framesRendered: 0, viewer: null, streams: [], errors: [] });
let pc = null;
let renderLoop = 0;
$("#whip-url").textContent = new URL("/v1/whip", location.href).toString();

async function streams() {
  const response = await fetch("/v1/streams", { headers: authHeaders(), cache: "no-store" });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error?.message || `/v1/streams: HTTP ${response.status}`);
  return body.data;
}

async function refresh() {
  try {
    state.streams = await streams();
  } catch (error) {
    state.errors.push(String(error.message));
    setBanner(ui.banner, error.message, "error");
    return;
  }
  const wanted = new URLSearchParams(location.search).get("stream") || ui.stream.value;
  ui.stream.innerHTML = state.streams.length ? "" : '<option value="">No stream is live</option>';
  for (const source of state.streams) {
    const option = document.createElement("option");
    option.value = source.id;
    option.textContent = `${source.id} · "${source.settings.prompt}" · ${source.viewers} watching`;
    ui.stream.append(option);
  }
  if (state.streams.some((s) => s.id === wanted)) ui.stream.value = wanted;
  const current = state.streams.find((s) => s.id === ui.stream.value);
  $("#stat-viewers").textContent = current ? current.viewers : "–";
  $("#stat-fps").textContent = current ? current.stats.output_fps.toFixed(1) : "–";
  $("#stat-prompt").textContent = current ? current.settings.prompt || "(none)" : "–";
}

function countFrames() {
  const loop = ++renderLoop;
  const tick = () => {
    if (loop !== renderLoop) return;
    state.framesRendered += 1;
    $("#stat-rendered").textContent = state.framesRendered;
    ui.remote.requestVideoFrameCallback(tick);
  };
  ui.remote.requestVideoFrameCallback(tick);
}

async function watch() {
  const id = ui.stream.value;
  if (!id) return setBanner(ui.banner, "No stream is live: publish one over WHIP first.");
  stop();
  clearBanner(ui.banner);
  pc = new RTCPeerConnection({ iceServers: [] });
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.ontrack = (event) => {
    if ("jitterBufferTarget" in event.receiver) event.receiver.jitterBufferTarget = 0;
    ui.remote.srcObject = event.streams[0] || new MediaStream([event.track]);
    countFrames();
  };
  pc.onconnectionstatechange = () => { $("#status").textContent = `Connection: ${pc?.connectionState}`; };
  await pc.setLocalDescription(await pc.createOffer());
  await gatheringComplete(pc);
  const response = await fetch(`/v1/whep/${encodeURIComponent(id)}`, {
    method: "POST", headers: authHeaders({ "Content-Type": "application/sdp" }), body: pc.localDescription.sdp,
  });
  if (response.status !== 201) {
    const body = await response.json().catch(() => ({}));
    const message = body.error?.message || `WHEP: HTTP ${response.status}`;
    state.errors.push(message);
    setBanner(ui.banner, message, "error");
    stop();
    return;
  }
  state.viewer = response.headers.get("Location");
  await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
  ui.watch.disabled = true;
  ui.stop.disabled = false;
  await refresh();
}

function stop() {
  renderLoop += 1;
  if (state.viewer) {
    fetch(state.viewer, { method: "DELETE", headers: authHeaders() }).catch(() => {});
    state.viewer = null;
  }
  if (pc) pc.close();
  pc = null;
  ui.watch.disabled = false;
  ui.stop.disabled = true;
}

ui.watch.addEventListener("click", () => watch().catch((error) => {
  state.errors.push(String(error.message));
  setBanner(ui.banner, error.message, "error");
}));
ui.stop.addEventListener("click", stop);
$("#refresh").addEventListener("click", refresh);
window.addEventListener("pagehide", stop);

const status = await showHealth("diffusion", ui.banner);
if (status.diffusion) {
  await refresh();
  setInterval(refresh, 2000);
  if (new URLSearchParams(location.search).get("stream") && ui.stream.value) await watch();
}
