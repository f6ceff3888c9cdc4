// The chat page: sends the conversation to /v1/chat/completions with "stream": true and
// shows the reply as its server-sent chunks arrive. A distilled model's reasoning
// (delta.reasoning_content) goes into a collapsible <details> block above the answer.
"use strict";

const $ = (id) => document.getElementById(id);
const history = [];        // the turns sent back each time; an assistant turn keeps its answer only
let modelName = "xiaoxin";
let controller = null;     // aborts the reply being streamed
let conversation = 0;      // bumped by "新对话", so a reply cut off by it is not added back

// A server started with --api_key wants "Authorization: Bearer <key>" on every /v1 request:
// the key is typed once under 参数 and kept in this browser's localStorage.
const KEY_STORE = "xiaoxin.api_key";
$("api_key").value = localStorage.getItem(KEY_STORE) || "";
$("api_key").addEventListener("change", () => {
  localStorage.setItem(KEY_STORE, $("api_key").value.trim());
  loadModelName();
});

function apiHeaders(extra = {}) {
  const key = $("api_key").value.trim();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

function askForKey() {
  $("settings").open = true;
  $("api_key").focus();
}

function loadModelName() {
  fetch("/v1/models", { headers: apiHeaders() })
    .then((response) => {
      if (response.status === 401) askForKey();
      return response.json();
    })
    .then((list) => {
      modelName = list.data[0].id;
      $("model-name").textContent = modelName;
    })
    .catch(() => {});
}
loadModelName();

function scrollToEnd() {
  window.scrollTo(0, document.body.scrollHeight);
}

function addMessage(role, text = "") {
  const box = document.createElement("div");
  box.className = `message ${role}`;
  const parts = { box };
  if (role === "assistant") {
    parts.details = document.createElement("details");
    parts.details.className = "reasoning";
    parts.details.hidden = true;
    parts.summary = document.createElement("summary");
    parts.summary.textContent = "思考中…";
    parts.reasoning = document.createElement("div");
    parts.reasoning.className = "reasoning-text";
    parts.details.append(parts.summary, parts.reasoning);
    box.append(parts.details);
  }
  parts.content = document.createElement("div");
  parts.content.className = "content";
  parts.content.textContent = text;   // textContent, never innerHTML: replies are not trusted markup
  box.append(parts.content);
  $("messages").append(box);
  scrollToEnd();
  return parts;
}

function requestBody() {
  const system = $("system").value.trim();
  const body = {
    model: modelName,
    messages: (system ? [{ role: "system", content: system }] : []).concat(history),
    stream: true,
    stream_options: { include_usage: true },
  };
  for (const key of ["temperature", "top_p", "max_tokens"]) {
    const value = $(key).value.trim();     // empty: the server's default
    if (value !== "") body[key] = Number(value);
  }
  return body;
}

// Yields the JSON object of each `data:` event of a server-sent event stream until [DONE].
async function* serverEvents(stream) {
  const reader = stream.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (data === "[DONE]") return;
      if (data) yield JSON.parse(data);
    }
  }
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return body.error.message;
  } catch {
    return `HTTP ${response.status} ${response.statusText}`;
  }
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").hidden = !busy;
}

async function send(text) {
  history.push({ role: "user", content: text });
  addMessage("user", text);
  const reply = addMessage("assistant");
  reply.box.dataset.state = "streaming";
  let answer = "";
  let reasoning = "";
  let usage = null;
  let finishReason = null;
  const turnOf = conversation;
  const remember = (turn) => { if (turnOf === conversation) history.push(turn); };
  controller = new AbortController();
  setBusy(true);
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: apiHeaders({ "Content-Type": "application/json" }),
      body: JSON.stringify(requestBody()),
      signal: controller.signal,
    });
    if (response.status === 401) {
      askForKey();
      throw new Error(`${await errorMessage(response)}（在「参数」里填写 API key）`);
    }
    if (!response.ok) throw new Error(await errorMessage(response));
    for await (const event of serverEvents(response.body)) {
      if (event.error) throw new Error(event.error.message);
      if (event.usage) usage = event.usage;
      const choice = (event.choices || [])[0];
      if (!choice) continue;
      if (choice.finish_reason) finishReason = choice.finish_reason;
      const delta = choice.delta || {};
      if (delta.reasoning_content) {
        reasoning += delta.reasoning_content;
        reply.details.hidden = false;
        if (!answer) reply.details.open = true;        // show the thinking while it is written
        reply.reasoning.textContent = reasoning;
      }
      if (delta.content) {
        if (!answer && reasoning) {                      // thinking done: fold it away
          reply.details.open = false;
          reply.summary.textContent = "思考过程";
        }
        answer += delta.content;
        reply.content.textContent = answer;
      }
      scrollToEnd();
    }
    reply.box.dataset.state = "done";
    remember({ role: "assistant", content: answer });
  } catch (error) {
    if (error.name === "AbortError") {
      reply.box.dataset.state = "stopped";
      remember({ role: "assistant", content: answer });
    } else {
      reply.box.dataset.state = "error";
      reply.box.classList.add("error");
      reply.content.textContent = answer ? `${answer}\n\n[错误] ${error.message}` : `[错误] ${error.message}`;
      if (turnOf === conversation) history.pop();        // the unanswered question is not history
    }
  } finally {
    if (reasoning) reply.summary.textContent = "思考过程";
    const notes = [usage && `${usage.prompt_tokens} + ${usage.completion_tokens} tokens`,
      finishReason === "length" && "已达长度上限"].filter(Boolean);
    if (notes.length) {
      const meta = document.createElement("div");
      meta.className = "meta";
      meta.textContent = notes.join(" · ");
      reply.box.append(meta);
    }
    controller = null;
    setBusy(false);
    scrollToEnd();
  }
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || controller) return;
  $("prompt").value = "";
  send(text);
});

$("prompt").addEventListener("keydown", (event) => {
  // Enter sends, Shift+Enter breaks the line; never while an input method is composing (拼音).
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});

$("stop").addEventListener("click", () => controller && controller.abort());

$("new-chat").addEventListener("click", () => {
  if (controller) controller.abort();
  conversation += 1;
  history.length = 0;
  $("messages").replaceChildren();
  $("prompt").focus();
});
