// Model answers as Markdown, made safe to put into the page: marked turns the text into HTML, DOMPurify keeps only
// inert formatting. Model text is untrusted (a prompt can make the model write any HTML), so no script, no event
// handler attribute, no form controls, and no images: an image URL the model writes would be fetched by the
// browser on display, carrying whatever the model put into it to any server.
import { Marked } from "/vendor/marked.esm.js"
import DOMPurify from "/vendor/purify.es.mjs"

// GitHub-flavoured (tables, strikethrough, fenced code); a single newline stays a line break, as it reads in a chat.
const marked = new Marked({ gfm: true, breaks: true, async: false })

const purifier = DOMPurify(window)
purifier.addHook("afterSanitizeAttributes", (node) => {
  // Links open beside the chat, and the linked page gets no handle back to it.
  if (node.tagName === "A" && node.hasAttribute("href")) {
    node.setAttribute("target", "_blank")
    node.setAttribute("rel", "noopener noreferrer nofollow")
  }
})

const OPTIONS = {
  USE_PROFILES: { html: true },
  FORBID_TAGS: ["img", "picture", "video", "audio", "source", "form", "input", "button", "textarea", "select", "style"],
  FORBID_ATTR: ["style"]
}

/** Sanitized HTML for a Markdown text (possibly incomplete, while it streams in). */
export const renderMarkdown = (text) => purifier.sanitize(marked.parse(text), OPTIONS)
