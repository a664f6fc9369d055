// Starts the page: the tabs, the API key box, and each tab's module with the server's /ui/config.

import { initAgent } from "./agent.js";
import { initChat } from "./chat.js";
import { apiKey, getJSON, setApiKey, showError } from "./common.js";
import { initKb } from "./kb.js";

const TAB = "puyu.tab";

function showTab(name) {
  for (const button of document.querySelectorAll("#tabs button")) button.classList.toggle("active", button.dataset.tab === name);
  for (const section of document.querySelectorAll("main > .tab")) section.classList.toggle("hidden", section.id !== `tab-${name}`);
  localStorage.setItem(TAB, name);
}

async function start() {
  for (const button of document.querySelectorAll("#tabs button")) button.addEventListener("click", () => showTab(button.dataset.tab));
  showTab(localStorage.getItem(TAB) || "chat");
  const key = document.getElementById("api-key");
  key.value = apiKey();
  key.addEventListener("change", () => { setApiKey(key.value.trim()); location.reload(); });
  let config = { model: null, tools: ["python", "calculator", "solve"], needs_key: false };
  try {
    config = await getJSON("/ui/config");
  } catch (error) {
    showError(`Cannot read the server's settings: ${error.message}`);
  }
  if (config.needs_key) document.getElementById("key-box").classList.remove("hidden");
  initChat(config.model, config.images);
  initAgent(config.tools);
  initKb();
  document.body.dataset.ready = "true";
}

start();
