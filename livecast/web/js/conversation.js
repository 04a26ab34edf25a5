// Conversation mode for the Chat page: the history lives on the server (Conversations API) and
// each turn is a streamed POST /v1/responses with `conversation`, so a reload picks it back up.
import { authHeaders, postJSON } from "./common.js";

const KEY = "livecast_conversation_id";

export const conversationId = () => localStorage.getItem(KEY);
export const forgetConversation = () => localStorage.removeItem(KEY);

// The stored conversation's messages, oldest first ([] when there is none or it was swept).
export async function loadConversation() {
  const id = conversationId();
  if (!id) return [];
  const response = await fetch(`/v1/conversations/${id}/items?order=asc&limit=100`, { headers: authHeaders() });
  if (!response.ok) { forgetConversation(); return []; }
  const page = await response.json();
  return page.data.filter((item) => item.type === "message" && item.role !== "system").map((item) => ({
    role: item.role, text: item.content.map((part) => part.text ?? "").join(""),
  }));
}

// Streams one turn: calls onDelta(text) per token batch; resolves with the final response object.
export async function sendTurn(text, { temperature, maxTokens }, onDelta, signal) {
  if (!conversationId()) localStorage.setItem(KEY, (await postJSON("/v1/conversations", {})).id);
  const response = await fetch("/v1/responses", {
    method: "POST", signal, headers: authHeaders({ "Content-Type": "application/json" }),
    body: JSON.stringify({ conversation: conversationId(), input: text, stream: true, temperature,
                           max_output_tokens: maxTokens }),
  });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(body.error?.message || `/v1/responses: HTTP ${response.status}`);
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "", final = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const data = buffer.slice(0, end).replace(/^data: /, "");
      buffer = buffer.slice(end + 2);
      if (data === "[DONE]") continue;
      const event = JSON.parse(data);
      if (event.error) throw new Error(event.error.message);
      if (event.type === "response.output_text.delta") onDelta(event.delta);
      if (["response.completed", "response.incomplete", "response.failed"].includes(event.type)) final = event.response;
    }
  }
  return final;
}
