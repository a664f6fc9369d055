// The knowledge-base tab: upload files or a folder, build/sync with a progress bar, ask with cited answers;
// a citation [n] is a link that opens the chunk it cites (file, headings, lines or page, and its text).

import { getJSON, isAbort, make, postStream, renderMarkdown, send, showError, stoppable } from "./common.js";
import { setAgentKbs } from "./agent.js";

const $ = (id) => document.getElementById(id);
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
let sources = [];

function kbName() {
  const name = $("kb-name").value.trim();
  if (!NAME.test(name)) throw new Error(`knowledge base name ${JSON.stringify(name)}: use letters, digits, '.', '_' and '-'`);
  localStorage.setItem("puyu.kb.name", name);
  return name;
}

const url = (name, rest = "") => `/ui/kb/${encodeURIComponent(name)}${rest}`;

async function refreshList() {
  const kbs = await getJSON("/ui/kb");
  $("kb-list").replaceChildren(...kbs.map((kb) => make("option", { value: kb.name }, `${kb.files} files, ${kb.chunks} chunks`)));
  setAgentKbs(kbs.map((kb) => kb.name));
}

async function refreshDocs() {
  const name = kbName();
  const info = await getJSON(url(name));
  $("kb-docs").replaceChildren(...info.docs.map((doc) => {
    const remove = make("button", { type: "button", class: "small", title: "delete" }, "×");
    remove.addEventListener("click", () => run(async () => {
      await send(url(name, `/files/${doc.path.split("/").map(encodeURIComponent).join("/")}`), "DELETE");
      await refreshDocs();
    }));
    return make("li", {}, make("span", {}, doc.path), remove);
  }));
  if (!$("kb-sync").disabled) { // a sync in progress owns the status line
    $("kb-status").textContent = info.built ? `${info.files} files, ${info.chunks} chunks indexed` : "not built yet";
  }
}

async function run(work) {
  try { await work(); } catch (error) { showError(error.message); }
}

async function upload(files) {
  const name = kbName();
  const form = new FormData();
  for (const file of files) form.append("files", file, file.webkitRelativePath || file.name);
  const result = await send(url(name, "/files"), "POST", form);
  if (result.skipped.length) showError(`Skipped ${result.skipped.map((s) => s.reason).join("; ")}`);
  await refreshDocs();
}

async function sync() {
  const name = kbName();
  const bar = $("kb-progress");
  const status = $("kb-status");
  bar.value = 0;
  status.textContent = "starting…";
  $("kb-sync").disabled = true;
  try {
    await postStream(url(name, "/sync"), null, (event) => {
      if (event.type === "progress") {
        bar.max = Math.max(event.total, 1);
        bar.value = event.done;
        status.textContent = `${event.done} / ${event.total} files${event.file ? ` · ${event.file}` : ""}`;
      } else if (event.type === "report") {
        status.textContent = `${event.added} added, ${event.changed} changed, ${event.removed} removed, ${event.unchanged} unchanged, `
          + `${event.skipped.length} skipped; ${event.chunks_total} chunks`;
        if (event.skipped.length) showError(`Could not read ${event.skipped.map((s) => `${s.file}: ${s.reason}`).join("; ")}`);
      } else if (event.type === "error") {
        throw new Error(event.message);
      }
    });
    await refreshList();
  } finally {
    $("kb-sync").disabled = false;
  }
}

function openChunk(number) {
  const hit = sources.find((s) => s.number === number);
  if (!hit) return;
  $("chunk-title").textContent = `[${number}] ${hit.location}`;
  $("chunk-text").textContent = hit.text;
  $("chunk-view").showModal();
}

// Turn [n] in the answer's text nodes into links to source n (only for valid citations).
function linkCitations(element, valid) {
  const walker = document.createTreeWalker(element, NodeFilter.SHOW_TEXT);
  const nodes = [];
  while (walker.nextNode()) nodes.push(walker.currentNode);
  for (const node of nodes) {
    if (node.parentElement.closest("code, pre")) continue;
    const parts = node.textContent.split(/(\[\d+\])/);
    if (parts.length === 1) continue;
    node.replaceWith(...parts.map((part) => {
      const number = Number(part.slice(1, -1));
      if (!/^\[\d+\]$/.test(part) || !valid.includes(number)) return part;
      const link = make("a", { href: "#", class: "cite", "data-n": number, title: sources[number - 1]?.location }, part);
      link.addEventListener("click", (event) => { event.preventDefault(); openChunk(number); });
      return link;
    }));
  }
}

function showSources(list, cited) {
  $("kb-sources").replaceChildren(...list.map((hit) => {
    const link = make("a", { href: "#", class: cited.includes(hit.number) ? "cited" : "" }, `[${hit.number}] ${hit.location}`);
    link.addEventListener("click", (event) => { event.preventDefault(); openChunk(hit.number); });
    return make("li", {}, link, make("span", { class: "muted" }, ` similarity ${hit.similarity.toFixed(2)}`));
  }));
}

async function ask(signal) {
  const name = kbName();
  const question = $("kb-question").value.trim();
  if (!question) return;
  const box = $("kb-answer");
  const body = box.querySelector(".body");
  box.classList.remove("hidden");
  box.dataset.status = "streaming";
  let text = "";
  sources = [];
  body.textContent = "";
  $("kb-sources").replaceChildren();
  try {
    await postStream(url(name, "/ask"), { question }, (event) => {
      if (event.type === "sources") {
        sources = event.sources;
        showSources(sources, []);
      } else if (event.type === "delta") {
        text += event.text;
        renderMarkdown(body, text);
      } else if (event.type === "answer") {
        renderMarkdown(body, event.text);
        linkCitations(body, event.citations);
        showSources(sources, event.citations);
        if (event.uncited) body.append(make("p", { class: "note" }, "This answer cites no source; treat it as unsupported."));
        box.dataset.status = "done";
      } else if (event.type === "error") {
        throw new Error(event.message);
      }
    }, signal);
  } catch (error) {
    box.dataset.status = "failed";
    body.append(make("p", { class: "msg error" }, isAbort(error) ? "Stopped." : `Error: ${error.message}`));
  }
}

export function initKb() {
  $("kb-name").value = localStorage.getItem("puyu.kb.name") || $("kb-name").value;
  $("kb-name").addEventListener("change", () => run(refreshDocs));
  for (const id of ["kb-files", "kb-folder"]) {
    $(id).addEventListener("change", (event) => run(async () => {
      await upload([...event.target.files]);
      event.target.value = "";
    }));
  }
  $("kb-sync").addEventListener("click", () => run(sync));
  const guard = stoppable($("kb-ask"), $("kb-stop"));
  $("kb-form").addEventListener("submit", (event) => { event.preventDefault(); guard((signal) => run(() => ask(signal))); });
  run(refreshList);
  run(refreshDocs);
}
