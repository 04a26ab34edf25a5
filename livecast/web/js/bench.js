// Glass-to-glass latency over WebRTC (driven by `livecast bench webrtc`, or by hand): a canvas
// stream whose frames carry ids goes to the server; the returned video's ids give each frame's
// time from being drawn here to being presented here.
import { $, renderHeader, setBanner } from "./common.js";
import { connect } from "./rtc.js";
import { drawId, readId, MAX_ID } from "./probe.js";

renderHeader("");
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function percentile(sorted, q) {
  if (!sorted.length) return null;
  const at = (sorted.length - 1) * q, lo = Math.floor(at), hi = Math.ceil(at);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (at - lo);
}

function drawScene(context, width, height, t) {
  // moving content, so the encoder works as it would on a camera
  const gradient = context.createLinearGradient(0, 0, width, height);
  gradient.addColorStop(0, `hsl(${(t / 20) % 360}, 70%, 45%)`);
  gradient.addColorStop(1, `hsl(${(t / 20 + 160) % 360}, 70%, 35%)`);
  context.fillStyle = gradient;
  context.fillRect(0, 0, width, height);
  context.fillStyle = "#f5f5f5";
  context.beginPath();
  context.arc(width / 2 + Math.cos(t / 400) * width / 3, height * 0.6 + Math.sin(t / 400) * height / 4, 24, 0, 2 * Math.PI);
  context.fill();
}

export async function runBench({ mode = "stylize", durationS = 10, warmupS = 3, fps = 30, settings = {} } = {}) {
  const canvas = $("#source");
  const context = canvas.getContext("2d");
  const sent = new Map();  // id -> {seq, t}
  let seq = 0;
  const draw = () => {
    const t = performance.now();
    drawScene(context, canvas.width, canvas.height, t);
    drawId(context, seq % MAX_ID, canvas.width);
    sent.set(seq % MAX_ID, { seq, t });
    seq += 1;
  };
  draw();
  const stream = canvas.captureStream(fps);
  const timer = setInterval(draw, 1000 / fps);
  let serverStats = null;
  const session = await connect(stream, mode === "passthrough" ? { passthrough: true } : settings, {
    onMessage: (m) => { if (m.type === "stats") serverStats = m; },
  });
  const video = $("#returned");
  video.srcObject = await session.output;

  const reader = document.createElement("canvas");
  const readerContext = reader.getContext("2d", { willReadFrequently: true });
  const latencies = new Map();  // seq -> ms
  let span = null;  // {first, last}: the seqs sent while measuring
  let presented = 0, undecoded = 0, running = true;
  const onFrame = (now, meta) => {
    if (!running) return;
    const block = Math.floor(meta.width / 16);
    reader.width = meta.width;
    reader.height = Math.max(block, 1);
    readerContext.drawImage(video, 0, 0, meta.width, meta.height);
    const id = readId(readerContext.getImageData(0, 0, reader.width, reader.height), meta.width);
    const origin = id === null ? null : sent.get(id);
    if (span && span.last === null) {
      presented += 1;
      if (origin === null) undecoded += 1;
    }
    if (origin && !latencies.has(origin.seq)) latencies.set(origin.seq, now - origin.t);
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);

  await sleep(warmupS * 1000);
  span = { first: seq, last: null };
  await sleep(durationS * 1000);
  span.last = seq;
  await sleep(1500);  // frames still in flight
  running = false;
  clearInterval(timer);
  session.close();
  stream.getTracks().forEach((t) => t.stop());

  const inWindow = [...latencies].filter(([s]) => s >= span.first && s < span.last).map(([, ms]) => ms);
  const sorted = inWindow.sort((a, b) => a - b);
  const numSent = span.last - span.first;
  return {
    mode, duration_s: durationS, frames_sent: numSent, frames_received: sorted.length,
    input_fps: numSent / durationS, output_fps: sorted.length / durationS,
    dropped_pct: numSent ? 100 * (1 - sorted.length / numSent) : null,
    latency_ms: { p50: percentile(sorted, 0.5), p95: percentile(sorted, 0.95), p99: percentile(sorted, 0.99),
                  mean: sorted.length ? sorted.reduce((a, b) => a + b, 0) / sorted.length : null },
    frames_presented: presented, frames_undecoded: undecoded,
    size: [video.videoWidth, video.videoHeight], server_stats: serverStats,
  };
}

globalThis.runBench = runBench;

$("#run").addEventListener("click", async () => {
  $("#run").disabled = true;
  try {
    const result = await runBench({ mode: $("#mode").value, durationS: Number($("#duration").value) });
    $("#result").textContent = JSON.stringify(result, null, 2);
  } catch (error) {
    setBanner($("#banner"), error.message, "error");
  } finally {
    $("#run").disabled = false;
  }
});
