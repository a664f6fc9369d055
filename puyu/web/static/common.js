// Helpers shared by the tabs: requests with the API key, server-sent events, Markdown, the error banner.

const KEY_STORE = "puyu.key";

export function apiKey() {
  return localStorage.getItem(KEY_STORE) || "";
}

export function setApiKey(key) {
  localStorage.setItem(KEY_STORE, key);
}

export function headers(json = true) {
  const h = json ? { "Content-Type": "application/json" } : {};
  const key = apiKey();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

// The message of a failed response: OpenAI's {"error": {"message"}}, FastAPI's {"detail"}, or the status.
export async function errorMessage(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body.error) return typeof body.error === "string" ? body.error : body.error.message;
    if (body.detail) return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (_) { /* not JSON */ }
  return `${response.status} ${response.statusText} ${text.slice(0, 200)}`.trim();
}

export async function getJSON(url) {
  const response = await fetch(url, { headers: headers(false) });
  if (!response.ok) throw new Error(await errorMessage(response));
  return response.json();
}

export async function send(url, method, body) {
  const init = { method, headers: headers(!(body instanceof FormData)) };
  if (body !== undefined) init.body = body instanceof FormData ? body : JSON.stringify(body);
  const response = await fetch(url, init);
  if (!response.ok) throw new Error(await errorMessage(response));
  return response.json();
}

// POST ``body`` and call ``onEvent(data)`` for every server-sent event until the stream ends.
// Text is decoded as a stream, so a character split across network chunks (Chinese, emoji) stays whole.
export async function postStream(url, body, onEvent, signal) {
  const response = await fetch(url, { method: "POST", headers: headers(), body: JSON.stringify(body ?? {}), signal });
  if (!response.ok) throw new Error(await errorMessage(response));
  const reader = response.body.getReader();
  const decoder = new TextDecoder("utf-8");
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      onEvent(JSON.parse(data));
    }
    if (done) return;
  }
}

// Markdown to safe HTML (marked + DOMPurify, vendored: works offline).
export function renderMarkdown(element, text) {
  element.innerHTML = DOMPurify.sanitize(marked.parse(text || "", { gfm: true, breaks: true }));
  for (const pre of element.querySelectorAll("pre")) {
    const button = make("button", { class: "copy-code", type: "button", title: "copy" }, "copy");
    button.addEventListener("click", () => copyText(pre.querySelector("code")?.textContent ?? pre.textContent, button));
    pre.prepend(button);
  }
}

export async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch (_) { // no clipboard API (an insecure origin): the textarea fallback
    const area = make("textarea", {}, text);
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  if (button) {
    const label = button.textContent;
    button.textContent = "copied";
    setTimeout(() => { button.textContent = label; }, 1200);
  }
}

// ``make("div", {class: "x"}, child, "text")``: an element with attributes and children.
export function make(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined && value !== false) element.setAttribute(name, value === true ? "" : value);
  }
  element.append(...children.filter((c) => c !== null && c !== undefined));
  return element;
}

export function showError(message) {
  const banner = document.getElementById("banner");
  banner.replaceChildren(make("span", {}, message), closeButton(() => banner.classList.add("hidden")));
  banner.classList.remove("hidden");
  if (/API key/i.test(message)) document.getElementById("key-box").classList.remove("hidden");
}

function closeButton(onClick) {
  const button = make("button", { class: "close", type: "button", "aria-label": "close" }, "×");
  button.addEventListener("click", onClick);
  return button;
}

// Run ``work(signal)`` with the Run/Stop buttons swapped while it runs; stop aborts it.
export function stoppable(runButton, stopButton) {
  let controller = null;
  stopButton.addEventListener("click", () => controller?.abort());
  return async (work) => {
    controller = new AbortController();
    runButton.disabled = true;
    stopButton.classList.remove("hidden");
    try {
      await work(controller.signal);
    } finally {
      controller = null;
      runButton.disabled = false;
      stopButton.classList.add("hidden");
    }
  };
}

export function isAbort(error) {
  return error?.name === "AbortError";
}
