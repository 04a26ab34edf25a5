// Shared by every page: the header, /health, the API key, URLs and small DOM helpers.

const PAGES = [["index.html", "Home"], ["stylize.html", "Stylize"], ["watch.html", "Watch"], ["chat.html", "Chat"],
  ["imagine.html", "Imagine"]];

// A key given once as ?api_key=… is kept for the session's other pages.
const params = new URLSearchParams(location.search);
if (params.get("api_key")) sessionStorage.setItem("livecast_api_key", params.get("api_key"));
const apiKey = () => sessionStorage.getItem("livecast_api_key");

export const $ = (selector, root = document) => root.querySelector(selector);

export function authHeaders(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

export function wsUrl(path) {
  const url = new URL(path, location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  if (apiKey()) url.searchParams.set("api_key", apiKey());  // browsers' WebSockets cannot send headers
  return url.toString();
}

export async function postJSON(path, body) {
  const response = await fetch(path, {
    method: "POST", headers: authHeaders({ "Content-Type": "application/json" }), body: JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error?.message || `${path}: HTTP ${response.status}`);
  return data;
}

// {llm, diffusion}: each side's /health entry, or null when the server runs without it.
export async function health() {
  try {
    const response = await fetch("/health", { cache: "no-store" });
    const body = await response.json();
    return { llm: body.llm ?? null, diffusion: body.diffusion ?? null, reachable: true };
  } catch {
    return { llm: null, diffusion: null, reachable: false };
  }
}

export function renderHeader(active) {
  const header = document.createElement("header");
  header.className = "top";
  const links = PAGES.map(([href, name]) =>
    `<a href="${href}"${href === active ? ' class="active"' : ""}>${name}</a>`).join("");
  header.innerHTML = `<a class="brand" href="index.html">livecast</a><nav>${links}</nav>
    <div class="health"><span class="pill" id="pill-llm">LLM …</span><span class="pill" id="pill-diffusion">diffusion …</span></div>`;
  document.body.prepend(header);
}

// Fills the header pills and returns /health; `need` names the side this page cannot work without.
export async function showHealth(need, banner) {
  const status = await health();
  for (const side of ["llm", "diffusion"]) {
    const pill = $(`#pill-${side}`);
    const info = status[side];
    const name = side === "llm" ? "LLM" : "diffusion";
    pill.className = `pill ${info ? "on" : "off"}`;
    pill.textContent = info ? `${name}: ${side === "llm" ? info.model : describeModel(info)}` : `${name}: off`;
  }
  if (banner && need && !status[need]) {
    const what = need === "llm" ? "The LLM is off on this server" : "The diffusion pipeline is off on this server";
    setBanner(banner, status.reachable ? `${what} (see /health), so this page cannot run.` :
      "The server is not reachable.", "warn");
  }
  return status;
}

export function describeModel(info) {
  // info.weights: "trained by livecast on procedural scenes" (demo), "random weights" (demo-random)
  const weights = info.weights ?? (info.demo ? "random weights" : null);
  return `${info.model}${weights ? ` · ${weights}` : ""} · ${info.device}`;
}

export function setBanner(element, text, kind = "warn") {
  element.textContent = text;
  element.className = `banner show${kind === "error" ? " error" : ""}`;
}

export function clearBanner(element) {
  element.className = "banner";
  element.textContent = "";
}

export function debounce(fn, ms) {
  let timer;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}

// A page's state, also readable by the browser tests as `window.livecastTest.<page>`: the one
// object on `window` that tests read; pages never read it themselves.
export function testHook(page, state) {
  (window.livecastTest ??= {})[page] = state;
  return state;
}
