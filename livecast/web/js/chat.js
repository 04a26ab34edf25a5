// Chat: /v1/ws/generate token streaming, one reply at a time, cancel with Stop. In conversation
// mode the history is kept server-side instead (see conversation.js) and survives a reload.
import { $, renderHeader, setBanner, clearBanner, showHealth, testHook, wsUrl } from "./common.js";
import { forgetConversation, loadConversation, sendTurn } from "./conversation.js";

renderHeader("chat.html");
const banner = $("#banner");
const ui = { log: $("#log"), input: $("#input"), send: $("#send"), stop: $("#stop"), speed: $("#speed") };
const history = [];
// Read by the browser tests: the reply in flight and the last finished one.
const state = testHook("chat", { replies: [], active: null, restored: 0 });
const mode = $("#mode");
mode.value = localStorage.getItem("livecast_chat_mode") || "socket";
let socket = null;
let nextId = 1;

function bubble(role, text = "") {
  const element = document.createElement("div");
  element.className = `msg ${role}`;
  element.textContent = text;
  ui.log.append(element);
  ui.log.scrollTop = ui.log.scrollHeight;
  return element;
}

function openSocket() {
  return new Promise((resolve, reject) => {
    if (socket && socket.readyState === WebSocket.OPEN) return resolve(socket);
    socket = new WebSocket(wsUrl("/v1/ws/generate"));
    socket.onopen = () => resolve(socket);
    socket.onerror = () => reject(new Error("cannot reach /v1/ws/generate"));
    socket.onclose = () => { if (state.active) finish({ finish_reason: "disconnected" }); socket = null; };
    socket.onmessage = (event) => onMessage(JSON.parse(event.data));
  });
}

function onMessage(message) {
  const reply = state.active;
  if (!reply || String(message.id) !== reply.id) {
    if (message.type === "error") setBanner(banner, message.message, "error");
    return;
  }
  if (message.type === "delta") {
    grow(reply, message.text, message.token_ids.length);
  } else if (message.type === "done") {
    finish(message);
  } else if (message.type === "error") {
    setBanner(banner, message.message, "error");
    finish({ finish_reason: "error" });
  }
}

function grow(reply, text, tokens) {
  reply.firstAt ??= performance.now();
  reply.text += text;
  reply.tokens += tokens;
  reply.element.textContent = reply.text;
  const seconds = (performance.now() - reply.firstAt) / 1000;
  if (seconds > 0) ui.speed.textContent = `${(reply.tokens / seconds).toFixed(1)} tokens/s`;
  ui.log.scrollTop = ui.log.scrollHeight;
}

function finish(done) {
  const reply = state.active;
  state.active = null;
  const seconds = reply.firstAt ? (performance.now() - reply.firstAt) / 1000 : 0;
  const tokens = done.usage?.completion_tokens ?? reply.tokens;
  const rate = seconds > 0 ? tokens / seconds : 0;
  reply.finishReason = done.finish_reason;
  reply.tokensPerSecond = rate;
  state.replies.push(reply);
  const meta = document.createElement("span");
  meta.className = "meta";
  meta.textContent = `${tokens} tokens · ${rate.toFixed(1)} tokens/s · ${done.finish_reason}`;
  reply.element.append(meta);
  reply.element.dataset.finish = done.finish_reason;
  if (reply.text) history.push({ role: "assistant", content: reply.text });
  ui.send.disabled = false;
  ui.stop.disabled = true;
}

async function send() {
  const text = ui.input.value.trim();
  if (!text || state.active) return;
  clearBanner(banner);
  ui.input.value = "";
  history.push({ role: "user", content: text });
  bubble("user", text);
  const id = `reply-${nextId++}`;
  state.active = { id, text: "", tokens: 0, firstAt: null, element: bubble("assistant") };
  ui.send.disabled = true;
  ui.stop.disabled = false;
  if (mode.value === "conversation") return sendToConversation(text, state.active);
  try {
    const ws = await openSocket();
    ws.send(JSON.stringify({
      type: "generate", id, messages: history,
      temperature: Number($("#temperature").value), max_tokens: Number($("#max-tokens").value),
    }));
  } catch (error) {
    setBanner(banner, error.message, "error");
    finish({ finish_reason: "error" });
  }
}

async function sendToConversation(text, reply) {
  reply.abort = new AbortController();
  const options = { temperature: Number($("#temperature").value), maxTokens: Number($("#max-tokens").value) };
  try {
    const response = await sendTurn(text, options, (delta) => grow(reply, delta, 1), reply.abort.signal);
    reply.responseId = response?.id;
    const reason = { completed: "stop", incomplete: "length" }[response?.status] ?? response?.status ?? "error";
    finish({ finish_reason: reason, usage: { completion_tokens: response?.usage?.output_tokens } });
  } catch (error) {
    if (error.name === "AbortError") return finish({ finish_reason: "cancelled" });
    setBanner(banner, error.message, "error");
    finish({ finish_reason: "error" });
  }
}

async function restoreConversation() {
  history.length = 0;
  ui.log.textContent = "";
  if (mode.value !== "conversation") return;
  const messages = await loadConversation();
  for (const message of messages) bubble(message.role, message.text);
  state.restored = messages.length;
}

$("#composer").addEventListener("submit", (event) => { event.preventDefault(); send(); });
ui.input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); send(); }
});
ui.stop.addEventListener("click", () => {
  if (state.active?.abort) state.active.abort.abort();
  else if (state.active && socket) socket.send(JSON.stringify({ type: "cancel", id: state.active.id }));
});
$("#clear").addEventListener("click", () => {
  history.length = 0; ui.log.textContent = ""; ui.speed.textContent = "";
  if (mode.value === "conversation") forgetConversation();
});
mode.addEventListener("change", () => { localStorage.setItem("livecast_chat_mode", mode.value); restoreConversation(); });
await restoreConversation();

const status = await showHealth("llm", banner);
if (!status.llm) { ui.send.disabled = true; ui.input.disabled = true; }
