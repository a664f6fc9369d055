// The agent tab: runs /ui/agent and shows each step (thought, tool, arguments, output, images) as a collapsible panel
// the moment the server reports it; the final answer is rendered as Markdown.

import { isAbort, make, postStream, renderMarkdown, stoppable } from "./common.js";

const $ = (id) => document.getElementById(id);
const CHOSEN = "puyu.agent.tools";

function pretty(argumentsText) {
  try { return JSON.stringify(JSON.parse(argumentsText), null, 2); } catch (_) { return argumentsText ?? ""; }
}

function section(label, text, kind = "") {
  return make("div", { class: `part ${kind}`.trim() }, make("div", { class: "label" }, label), make("pre", {}, text));
}

function stepView(step) {
  if (step.final_answer !== null && step.final_answer !== undefined) {
    const body = make("div", { class: "body" });
    renderMarkdown(body, step.final_answer);
    const final = make("div", { class: "final", "data-step": step.index }, make("div", { class: "label" }, "Final answer"), body);
    if (step.thought) final.prepend(section("Thought", step.thought));
    if (step.error) final.append(section("Unparsed reply", step.error, "error"));
    return final;
  }
  const status = step.error ? "error" : "ok";
  const summary = make("summary", {}, make("span", { class: "index" }, `Step ${step.index}`), " ",
                       make("code", {}, step.tool), make("span", { class: `badge ${status}` }, status === "ok" ? "✓" : "error"),
                       make("span", { class: "muted" }, ` ${step.elapsed_s.toFixed(1)} s`));
  const panel = make("details", { class: "step", open: true, "data-tool": step.tool, "data-step": step.index }, summary);
  if (step.repaired) panel.append(section("Repaired reply", step.repaired, "muted"));
  if (step.thought) panel.append(section("Thought", step.thought));
  panel.append(section("Arguments", pretty(step.arguments)));
  panel.append(step.error ? section("Error", step.error, "error") : section("Output", step.output ?? ""));
  for (const image of step.images ?? []) {  // plots the python tool saved, pictures a tool made (data URLs)
    panel.append(make("figure", { class: "tool-image" }, make("img", { src: image.url, alt: image.name }), make("figcaption", {}, image.name)));
  }
  return panel;
}

function chosenTools() {
  return [...document.querySelectorAll("#agent-tools input:checked")].map((box) => box.value);
}

export function setAgentKbs(names) {
  const select = $("agent-kb");
  const current = select.value;
  select.replaceChildren(make("option", { value: "" }, "(none)"), ...names.map((n) => make("option", { value: n }, n)));
  select.value = names.includes(current) ? current : "";
}

export function initAgent(tools) {
  let saved = null;
  try { saved = JSON.parse(localStorage.getItem(CHOSEN)); } catch (_) { /* default */ }
  const chosen = saved || ["python", "calculator", "solve"];
  $("agent-tools").replaceChildren(...tools.map((name) => make("label", { class: "check" },
    make("input", { type: "checkbox", value: name, checked: chosen.includes(name) }), ` ${name}`)));
  $("agent-tools").addEventListener("change", () => localStorage.setItem(CHOSEN, JSON.stringify(chosenTools())));

  const guard = stoppable($("agent-run"), $("agent-stop"));
  $("agent-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const task = $("agent-task").value.trim();
    if (!task) return;
    const steps = $("agent-steps");
    const working = make("div", { class: "working muted" }, "working…");
    steps.replaceChildren(make("div", { class: "task" }, task), working);
    const body = { task, tools: chosenTools(), protocol: $("agent-protocol").value, language: $("agent-language").value,
                   max_steps: parseInt($("agent-max-steps").value, 10) || 6, kb: $("agent-kb").value || null };
    await guard(async (signal) => {
      try {
        await postStream("/ui/agent", body, (event) => {
          if (event.type === "step") working.before(stepView(event));
          else if (event.type === "error") working.before(make("div", { class: "msg error" }, `Error: ${event.message}`));
        }, signal);
      } catch (error) {
        working.before(make("div", { class: "msg error" }, isAbort(error) ? "Stopped." : `Error: ${error.message}`));
      } finally {
        working.remove();
      }
    });
  });
}
