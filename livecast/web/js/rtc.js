// WebRTC to /v1/webrtc/offer: non-trickle signaling (the offer goes once ICE gathering is done),
// a `control` data channel for settings and stats, and the stylized track back.
import { postJSON } from "./common.js";

export function gatheringComplete(pc, timeoutMs = 5000) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { pc.removeEventListener("icegatheringstatechange", check); resolve(); };
    const check = () => { if (pc.iceGatheringState === "complete") done(); };
    pc.addEventListener("icegatheringstatechange", check);
    setTimeout(done, timeoutMs);  // host candidates come at once; never wait on a dead STUN server
  });
}

// Returns {pc, output (a Promise of the stylized MediaStream), send(update), close(), sessionId}.
export async function connect(stream, settings, { onMessage = () => {}, onState = () => {} } = {}) {
  const pc = new RTCPeerConnection({ iceServers: [] });
  const channel = pc.createDataChannel("control");
  channel.onmessage = (event) => onMessage(JSON.parse(event.data));
  pc.onconnectionstatechange = () => onState(pc.connectionState);
  const output = new Promise((resolve) => {
    pc.ontrack = (event) => {
      // Live video: show each frame as soon as it is decoded rather than smoothing arrival jitter.
      if ("jitterBufferTarget" in event.receiver) event.receiver.jitterBufferTarget = 0;
      if ("playoutDelayHint" in event.receiver) event.receiver.playoutDelayHint = 0;
      resolve(event.streams[0] || new MediaStream([event.track]));
    };
  });
  for (const track of stream.getVideoTracks()) pc.addTrack(track, stream);
  await pc.setLocalDescription(await pc.createOffer());
  await gatheringComplete(pc);
  let answer;
  try {
    answer = await postJSON("/v1/webrtc/offer", { ...settings, sdp: pc.localDescription.sdp, type: "offer" });
  } catch (error) {
    pc.close();
    throw error;
  }
  await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
  return {
    pc, output, channel, sessionId: answer.session_id,
    send(update) { if (channel.readyState === "open") channel.send(JSON.stringify(update)); },
    close() { channel.close(); pc.close(); },
  };
}
