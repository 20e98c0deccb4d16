// Chorus web chat: keeps the conversation in the page, streams each answer from the server's OpenAI-compatible
// /v1/chat/completions (SSE), and shows answers as sanitized Markdown (markdown.js); the user's own text stays
// plain text nodes.

import { renderMarkdown } from "./markdown.js"

const $ = (id) => {
  const el = document.querySelector(`[data-testid="${id}"]`)
  if (el === null) throw new Error(`missing element ${id}`)
  return el
}

const ui = {
  model: $("model-name"),
  newChat: $("new-chat"),
  settingsToggle: $("settings-toggle"),
  settingsPanel: $("settings-panel"),
  settingsClose: $("settings-close"),
  messages: $("messages"),
  empty: $("empty-state"),
  error: $("error"),
  errorText: $("error-text"),
  errorDismiss: $("error-dismiss"),
  composer: $("composer"),
  input: $("input"),
  send: $("send"),
  stop: $("stop")
}

// Settings fields: element, localStorage name, and how the value goes into the request body.
const fields = {
  system: { el: $("system-prompt") },
  temperature: { el: $("temperature"), param: "temperature" },
  topP: { el: $("top-p"), param: "top_p" },
  maxTokens: { el: $("max-tokens"), param: "max_tokens" },
  seed: { el: $("seed"), param: "seed" },
  apiKey: { el: $("api-key") }
}

const STORAGE_KEY = "chorus.chat.settings"

const loadSettings = () => {
  try {
    const saved = JSON.parse(localStorage.getItem(STORAGE_KEY) ?? "{}")
    for (const [name, f] of Object.entries(fields)) {
      if (typeof saved[name] === "string") f.el.value = saved[name]
    }
  } catch {
    // A corrupt entry is dropped: the defaults are a fine start.
    localStorage.removeItem(STORAGE_KEY)
  }
}

const saveSettings = () => {
  const values = Object.fromEntries(Object.entries(fields).map(([name, f]) => [name, f.el.value]))
  try {
    localStorage.setItem(STORAGE_KEY, JSON.stringify(values))
  } catch {
    // Storage may be disabled (private mode): the settings still apply to this page.
  }
}

const authHeaders = () => {
  const key = fields.apiKey.el.value.trim()
  return key === "" ? {} : { Authorization: `Bearer ${key}` }
}

// ---- errors ----------------------------------------------------------------------------------------------------

const hints = {
  401: "Check the API key in Settings.",
  403: "Check the API key in Settings.",
  429: "The server is busy; try again in a moment."
}

const showError = (message) => {
  ui.errorText.textContent = message
  ui.error.hidden = false
}

const clearError = () => {
  ui.error.hidden = true
  ui.errorText.textContent = ""
}

/** One line for a failed HTTP answer, from the server's `{"error":{"message"}}` body when it sent one. */
const describeHttpError = async (response) => {
  let message = ""
  try {
    const body = await response.json()
    if (body && body.error && typeof body.error.message === "string") message = body.error.message
  } catch {
    // Not JSON: the status line is all there is.
  }
  const status = `Error ${response.status}${response.statusText ? ` ${response.statusText}` : ""}`
  const hint = hints[response.status]
  const line = message === "" ? status : `${status}: ${message}`
  return hint === undefined ? line : `${line}${/[.!?]$/.test(line) ? "" : "."} ${hint}`
}

// ---- model name ------------------------------------------------------------------------------------------------

let modelId

const loadModel = async () => {
  try {
    const response = await fetch("/v1/models", { headers: authHeaders() })
    if (!response.ok) {
      ui.model.textContent = "model unavailable"
      showError(await describeHttpError(response))
      return
    }
    const body = await response.json()
    const first = Array.isArray(body.data) ? body.data[0] : undefined
    modelId = first && typeof first.id === "string" ? first.id : undefined
    ui.model.textContent = modelId ?? "no model"
    ui.model.title = modelId ?? ""
  } catch (e) {
    ui.model.textContent = "offline"
    showError(`Could not reach the server: ${e instanceof Error ? e.message : String(e)}`)
  }
}

// ---- conversation ----------------------------------------------------------------------------------------------

/** The turns sent as history: `{ role, content }`, the assistant's content growing while it streams. */
let history = []
/** The answer being streamed: `{ controller, ... }`, or null when idle. */
let current = null

const setBusy = (busy) => {
  document.body.dataset.state = busy ? "streaming" : "idle"
  ui.send.hidden = busy
  ui.stop.hidden = !busy
  ui.stop.disabled = !busy
}

const nearBottom = () => ui.messages.scrollHeight - ui.messages.scrollTop - ui.messages.clientHeight < 48

const scrollToBottom = () => {
  ui.messages.scrollTop = ui.messages.scrollHeight
}

const addBubble = (role, text) => {
  ui.empty.hidden = true
  const item = document.createElement("div")
  item.className = `message ${role}`
  item.dataset.testid = "message"
  item.dataset.role = role
  const bubble = document.createElement("div")
  bubble.className = "bubble"
  bubble.dataset.testid = "message-text"
  bubble.textContent = text
  item.append(bubble)
  ui.messages.append(item)
  scrollToBottom()
  return { item, bubble }
}

const addUsageLine = (item, text) => {
  const line = document.createElement("div")
  line.className = "usage"
  line.dataset.testid = "message-usage"
  line.textContent = text
  item.append(line)
}

const formatUsage = (turn, outcome) => {
  const seconds = Math.max((performance.now() - turn.started) / 1000, 1e-3)
  const parts = []
  const tokens = turn.usage?.completion_tokens
  if (typeof tokens === "number") {
    if (typeof turn.usage.prompt_tokens === "number") parts.push(`${turn.usage.prompt_tokens} prompt`)
    parts.push(`${tokens} tokens`)
    // Decode speed: tokens after the first over the time after the first, so prompt processing does not count.
    const decode = turn.firstAt !== undefined ? (performance.now() - turn.firstAt) / 1000 : 0
    const rate = tokens > 1 && decode > 0 ? (tokens - 1) / decode : tokens / seconds
    parts.push(`${rate.toFixed(1)} tokens/s`)
  } else if (turn.chunks > 0) {
    parts.push(`~${turn.chunks} tokens`)
    parts.push(`${(turn.chunks / seconds).toFixed(1)} tokens/s`)
  }
  parts.push(`${seconds.toFixed(1)} s`)
  if (outcome !== "") parts.push(outcome)
  return parts.join(" · ")
}

const requestBody = () => {
  const messages = []
  const system = fields.system.el.value.trim()
  if (system !== "") messages.push({ role: "system", content: system })
  for (const m of history) messages.push({ role: m.role, content: m.content })
  const body = { messages, stream: true, stream_options: { include_usage: true } }
  if (modelId !== undefined) body.model = modelId
  for (const f of Object.values(fields)) {
    // Empty means "server default"; anything else goes as typed so the server's validation message can explain it.
    if (f.param !== undefined && f.el.value.trim() !== "") body[f.param] = Number(f.el.value)
  }
  return body
}

/** An error the server reported inside the stream, after the answer had started. */
class StreamError extends Error {}

/** Yields the JSON payload of each SSE `data:` event until `[DONE]` or the end of the body. */
async function* sseEvents(body, signal) {
  const reader = body.getReader()
  const decoder = new TextDecoder()
  let buffer = ""
  let data = []
  const onAbort = () => reader.cancel().catch(() => {})
  signal.addEventListener("abort", onAbort)
  try {
    for (;;) {
      const { value, done } = await reader.read()
      if (done) break
      buffer += decoder.decode(value, { stream: true })
      let newline
      while ((newline = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, newline).replace(/\r$/, "")
        buffer = buffer.slice(newline + 1)
        if (line === "") {
          if (data.length > 0) {
            const payload = data.join("\n")
            data = []
            if (payload === "[DONE]") return
            yield JSON.parse(payload)
          }
        } else if (line.startsWith("data:")) {
          data.push(line.slice(5).replace(/^ /, ""))
        }
        // Other fields (event:, id:, comments) carry nothing this page needs.
      }
    }
    if (data.length > 0 && data.join("\n") !== "[DONE]") yield JSON.parse(data.join("\n"))
  } finally {
    signal.removeEventListener("abort", onAbort)
  }
}

const send = async () => {
  const text = ui.input.value
  if (current !== null || text.trim() === "") return
  clearError()
  ui.input.value = ""
  autosize()

  const userMessage = { role: "user", content: text }
  const assistantMessage = { role: "assistant", content: "" }
  history.push(userMessage)
  const body = JSON.stringify(requestBody())
  history.push(assistantMessage)
  const user = addBubble("user", text)
  const answer = addBubble("assistant", "")
  answer.item.classList.add("pending")
  // The whole answer is rendered again as it grows (a list or code block changes shape as tokens arrive), at
  // most once per frame however fast tokens come.
  let renderQueued = false
  const render = () => {
    renderQueued = false
    answer.bubble.innerHTML = renderMarkdown(assistantMessage.content)
    answer.bubble.dataset.source = assistantMessage.content
  }
  const queueRender = () => {
    if (renderQueued) return
    renderQueued = true
    requestAnimationFrame(() => {
      if (renderQueued) render()
    })
  }

  const turn = { controller: new AbortController(), started: performance.now(), firstAt: undefined, chunks: 0, usage: undefined }
  current = turn
  setBusy(true)

  // A turn that failed before any text is taken back whole: the message returns to the input box to send again.
  const withdraw = () => {
    history = history.filter((m) => m !== userMessage && m !== assistantMessage)
    user.item.remove()
    answer.item.remove()
    if (ui.input.value === "") {
      ui.input.value = text
      autosize()
    }
    if (history.length === 0 && ui.messages.querySelector(".message") === null) ui.empty.hidden = false
  }

  let outcome = ""
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream", ...authHeaders() },
      body,
      signal: turn.controller.signal
    })
    if (!response.ok || response.body === null) {
      showError(await describeHttpError(response))
      withdraw()
      return
    }
    for await (const event of sseEvents(response.body, turn.controller.signal)) {
      if (event.error) {
        const message = typeof event.error.message === "string" ? event.error.message : "unknown error"
        throw new StreamError(message)
      }
      if (event.usage) turn.usage = event.usage
      const choice = Array.isArray(event.choices) ? event.choices[0] : undefined
      if (choice === undefined) continue
      const delta = choice.delta?.content
      if (typeof delta === "string" && delta !== "") {
        const stick = nearBottom()
        if (turn.firstAt === undefined) {
          turn.firstAt = performance.now()
          answer.item.classList.remove("pending")
        }
        turn.chunks++
        assistantMessage.content += delta
        queueRender()
        if (stick) requestAnimationFrame(scrollToBottom)
      }
      if (choice.finish_reason === "length") outcome = "max tokens reached"
      // The text is complete: show all of it now rather than at the next frame.
      if (choice.finish_reason != null && renderQueued) render()
    }
    if (turn.controller.signal.aborted) outcome = "stopped"
  } catch (e) {
    if (turn.controller.signal.aborted) {
      outcome = "stopped"
    } else if (e instanceof StreamError) {
      showError(`The answer failed: ${e.message}`)
      outcome = "failed"
    } else if (assistantMessage.content === "") {
      showError(`Could not reach the server: ${e instanceof Error ? e.message : String(e)}`)
      withdraw()
      return
    } else {
      showError(`The answer was cut off: ${e instanceof Error ? e.message : String(e)}`)
      outcome = "cut off"
    }
  } finally {
    // A stream cut short (Stop, an error) still shows every token that arrived.
    if (renderQueued || answer.bubble.dataset.source !== assistantMessage.content) render()
    if (current === turn) {
      current = null
      setBusy(false)
    }
  }
  answer.item.classList.remove("pending")
  if (assistantMessage.content === "" && outcome === "failed") {
    withdraw()
    return
  }
  if (assistantMessage.content === "") answer.item.classList.add("blank")
  if (outcome === "stopped" || outcome === "failed" || outcome === "cut off") answer.item.classList.add(outcome.replace(" ", "-"))
  const stick = nearBottom()
  addUsageLine(answer.item, formatUsage(turn, outcome))
  if (stick) scrollToBottom()
}

const stop = () => {
  if (current !== null) current.controller.abort()
}

const newChat = () => {
  stop()
  current = null
  setBusy(false)
  history = []
  for (const m of ui.messages.querySelectorAll(".message")) m.remove()
  ui.empty.hidden = false
  clearError()
  ui.input.focus()
}

// ---- input box and settings panel ------------------------------------------------------------------------------

const autosize = () => {
  ui.input.style.height = "auto"
  ui.input.style.height = `${Math.min(ui.input.scrollHeight, 200)}px`
}

const toggleSettings = (open) => {
  ui.settingsPanel.hidden = !open
  ui.settingsToggle.setAttribute("aria-expanded", String(open))
  if (open) fields.system.el.focus()
}

ui.composer.addEventListener("submit", (e) => {
  e.preventDefault()
  void send()
})
ui.input.addEventListener("keydown", (e) => {
  // Enter sends; Shift+Enter (and Enter while an input method is composing) types a newline.
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault()
    void send()
  }
})
ui.input.addEventListener("input", autosize)
ui.stop.addEventListener("click", stop)
ui.newChat.addEventListener("click", newChat)
ui.errorDismiss.addEventListener("click", clearError)
ui.settingsPanel.addEventListener("submit", (e) => {
  e.preventDefault()
  toggleSettings(false)
})
ui.settingsToggle.addEventListener("click", () => toggleSettings(ui.settingsPanel.hidden))
ui.settingsClose.addEventListener("click", () => toggleSettings(false))
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && !ui.settingsPanel.hidden) toggleSettings(false)
})
for (const f of Object.values(fields)) f.el.addEventListener("input", saveSettings)
// A new key may unlock the model list.
fields.apiKey.el.addEventListener("change", () => {
  clearError()
  void loadModel()
})

loadSettings()
setBusy(false)
autosize()
ui.input.focus()
void loadModel()
