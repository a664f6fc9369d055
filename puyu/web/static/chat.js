// The chat tab: streams /v1/chat/completions (the OpenAI API of this server or, through the proxy, a remote one).
// The conversation and the settings live in localStorage, saved as the reply streams, so a reload keeps them;
// a reply cut by a reload is marked "interrupted", one cut by Stop "stopped".  With a vision-language model, images
// picked with "Image…" go with the next message as OpenAI image_url parts (data: URLs, kept with the conversation).

import { copyText, getJSON, isAbort, make, postStream, renderMarkdown, showError, stoppable } from "./common.js";

const STORE = "puyu.chat.v1";
const $ = (id) => document.getElementById(id);

let state = load();
let modelName = null;
let pendingFrame = 0;
let running = false;
let pending = [];  // data: URLs of the images for the next message
const MAX_IMAGE_BYTES = 8 << 20;

function load() {
  // temperature and top_p null: the server samples as the model recommends (its generation_config.json) until moved
  const empty = { messages: [], system: "", temperature: null, top_p: null, max_tokens: 512 };
  let saved = {};
  try { saved = JSON.parse(localStorage.getItem(STORE) || "{}"); } catch (_) { /* a damaged entry: start over */ }
  const loaded = { ...empty, ...saved };
  for (const message of loaded.messages) {
    if (message.status === "streaming") message.status = "interrupted";
  }
  return loaded;
}

function save() {
  try {
    localStorage.setItem(STORE, JSON.stringify(state));
  } catch (_) {  // the browser's storage quota (a few MB): images are what fills it
    showError("This conversation's images are too large to keep across a reload; Clear starts a new one.");
  }
}

function content(message) {  // an OpenAI message content: text, or image_url parts then the text
  if (!message.images?.length) return message.content;
  return message.images.map((url) => ({ type: "image_url", image_url: { url } })).concat({ type: "text", text: message.content });
}

function thumbnails(urls) {
  return make("div", { class: "images" }, ...urls.map((url) => make("img", { class: "thumb", src: url, alt: "image" })));
}

function showPending() {
  $("attachments").replaceChildren(...pending.map((url, i) => {
    const remove = make("button", { type: "button", title: "remove" }, "×");
    remove.addEventListener("click", () => { pending.splice(i, 1); showPending(); });
    return make("figure", {}, make("img", { class: "thumb", src: url, alt: "image to send" }), remove);
  }));
}

function readImage(file) {
  return new Promise((resolve, reject) => {
    if (file.size > MAX_IMAGE_BYTES) reject(new Error(`${file.name} is over ${MAX_IMAGE_BYTES >> 20} MB; pick a smaller image`));
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`cannot read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

async function attach(files) {
  for (const file of files) {
    try { pending.push(await readImage(file)); } catch (error) { showError(error.message); }
  }
  $("attach").value = "";
  showPending();
}

function apiMessages() {
  const turns = state.messages.filter((m) => (m.role === "user" || m.role === "assistant") && m.content && !m.failed);
  const system = state.system.trim() ? [{ role: "system", content: state.system }] : [];
  return system.concat(turns.map((m) => ({ role: m.role, content: content(m) })));
}

function messageView(message, index) {
  const body = make("div", { class: "body" });
  if (message.role === "assistant") renderMarkdown(body, message.content);
  else body.textContent = message.content;
  if (message.images?.length) body.prepend(thumbnails(message.images));
  const view = make("div", { class: `msg ${message.role}`, "data-role": message.role, "data-status": message.status || "done",
                             "data-index": index }, body);
  if (message.failed) view.append(make("div", { class: "actions" }, make("span", { class: "note" }, "not sent to the model again")));
  if (message.role === "assistant") {
    const note = { stopped: "stopped", interrupted: "interrupted (the page was reloaded)" }[message.status];
    const copy = make("button", { type: "button", class: "copy" }, "copy");
    copy.addEventListener("click", () => copyText(message.content, copy));
    view.append(make("div", { class: "actions" }, note ? make("span", { class: "note" }, note) : null, copy));
  }
  return view;
}

function render() {
  const list = $("messages");
  list.replaceChildren(...state.messages.map(messageView));
  list.scrollTop = list.scrollHeight;
  updateButtons();
}

function renderLast() {  // at most once per frame while streaming
  if (pendingFrame) return;
  pendingFrame = requestAnimationFrame(() => {
    pendingFrame = 0;
    const index = state.messages.length - 1;
    const old = $("messages").querySelector(`[data-index="${index}"]`);
    if (old) old.replaceWith(messageView(state.messages[index], index));
    $("messages").scrollTop = $("messages").scrollHeight;
    save();
  });
}

function updateButtons() {
  const last = state.messages[state.messages.length - 1];
  $("regenerate").disabled = !last || running;
  $("clear").disabled = running;
}

const guard = stoppable($("send"), $("stop"));

async function model() {
  if (!modelName) {
    modelName = (await getJSON("/v1/models")).data[0].id;
    $("model-name").textContent = modelName;
  }
  return modelName;
}

async function reply() {
  const messages = apiMessages();
  const answer = { role: "assistant", content: "", status: "streaming" };
  state.messages.push(answer);
  running = true;
  render();
  save();
  await guard(async (signal) => {
    try {
      const body = { model: await model(), messages, stream: true, max_tokens: state.max_tokens };
      if (state.temperature != null) body.temperature = state.temperature;
      if (state.top_p != null) body.top_p = state.top_p;
      await postStream("/v1/chat/completions", body, (chunk) => {
        if (chunk.error) throw new Error(chunk.error.message || "the server reported an error");
        const piece = chunk.choices?.[0]?.delta?.content;
        if (piece) {
          answer.content += piece;
          renderLast();
        }
      }, signal);
      answer.status = "done";
    } catch (error) {
      answer.status = isAbort(error) ? "stopped" : "failed";
      if (!isAbort(error)) {  // the failed turn stays visible but is not sent again (Regenerate retries it)
        state.messages.findLast((m) => m.role === "user").failed = true;
        state.messages.push({ role: "error", content: `Error: ${error.message}` });
      }
    }
  });
  if (!answer.content && answer.status !== "stopped") state.messages.splice(state.messages.indexOf(answer), 1);
  running = false;
  save();
  render();
}

async function submit() {
  const text = $("prompt").value;
  if (!text.trim() || running) return;
  $("prompt").value = "";
  const message = { role: "user", content: text };
  if (pending.length) message.images = pending;
  pending = [];
  showPending();
  state.messages.push(message);
  await reply();
}

async function regenerate() {
  while (state.messages.length && state.messages[state.messages.length - 1].role !== "user") state.messages.pop();
  if (state.messages.length) {
    delete state.messages[state.messages.length - 1].failed;
    await reply();
  }
  else render();
}

function bindSetting(id, key, parse) {
  const input = $(id);
  const output = $(`${id}-value`);
  if (state[key] != null) input.value = state[key];
  if (output) output.textContent = state[key] == null ? "model's" : input.value;
  input.addEventListener("input", () => {
    state[key] = parse(input.value);
    if (output) output.textContent = input.value;
    save();
  });
}

export function initChat(defaultModel, takesImages = false) {
  modelName = defaultModel || null;
  $("attach-button").classList.toggle("hidden", !takesImages);
  $("attach-button").addEventListener("click", () => $("attach").click());
  $("attach").addEventListener("change", () => attach([...$("attach").files]));
  $("model-name").textContent = modelName || "";
  model().catch((error) => showError(`Cannot list the server's models: ${error.message}`));
  bindSetting("system", "system", String);
  bindSetting("temperature", "temperature", Number);
  bindSetting("top-p", "top_p", Number);
  bindSetting("max-tokens", "max_tokens", (v) => Math.max(1, parseInt(v, 10) || 1));
  $("composer").addEventListener("submit", (event) => { event.preventDefault(); submit(); });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) { event.preventDefault(); submit(); }
  });
  $("regenerate").addEventListener("click", regenerate);
  $("clear").addEventListener("click", () => { state.messages = []; save(); render(); });
  render();
}
