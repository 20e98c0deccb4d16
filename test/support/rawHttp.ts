// HTTP/1.1 over a raw socket, for requests fetch cannot express (broken framing, odd methods, absurd headers,
// bodies that stream for long) and for telling an answer from a reset.
import * as net from "node:net"

export interface RawAnswer {
  /** The response status, or undefined when the connection ended without one. */
  readonly status: number | undefined
  readonly headers: string
  readonly body: string
  /** How the connection ended: "complete" (a whole response read), "closed", "reset" (ECONNRESET/EPIPE), "timeout". */
  readonly end: "complete" | "closed" | "reset" | "timeout"
}

export interface RawOptions {
  /** Bytes to send after the head, as pieces written one after the other. */
  readonly pieces?: ReadonlyArray<Buffer | string>
  /** Half-close after the last piece (as a client that sent everything it has). */
  readonly halfClose?: boolean
  readonly timeoutMs?: number
}

const HEAD_END = "\r\n\r\n"

/** A `100 Continue` (or other 1xx) ahead of the real response is skipped. */
const finalResponse = (data: string): string => {
  let rest = data
  while (/^HTTP\/1\.[01] 1\d\d /.test(rest) && rest.includes(HEAD_END)) rest = rest.slice(rest.indexOf(HEAD_END) + 4)
  return rest
}

/** Whether `data` (latin1) holds a complete response: its head plus the whole framed body. */
const complete = (all: string): boolean => {
  const data = finalResponse(all)
  const at = data.indexOf(HEAD_END)
  if (at < 0) return false
  const head = data.slice(0, at).toLowerCase()
  const body = data.slice(at + 4)
  const length = /\r\ncontent-length: *(\d+)/.exec(head)
  if (length !== null) return Buffer.byteLength(body, "latin1") >= Number(length[1])
  if (/\r\ntransfer-encoding: *chunked/.test(head)) return body.endsWith("0\r\n\r\n")
  return false
}

const parse = (all: string, end: RawAnswer["end"]): RawAnswer => {
  const data = finalResponse(all)
  const status = /^HTTP\/1\.[01] (\d{3})/.exec(data)
  const at = data.indexOf(HEAD_END)
  return {
    status: status === null ? undefined : Number(status[1]),
    headers: at < 0 ? data : data.slice(0, at),
    body: at < 0 ? "" : Buffer.from(data.slice(at + 4), "latin1").toString("utf8"),
    end
  }
}

/** Sends `head` then the pieces on a fresh connection and reads one response. */
export const rawRequest = (port: number, head: Buffer | string, options: RawOptions = {}): Promise<RawAnswer> =>
  new Promise((resolve) => {
    const socket = net.connect(port, "127.0.0.1")
    let data = ""
    let settled = false
    const settle = (end: RawAnswer["end"]) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      socket.destroy()
      resolve(parse(data, end))
    }
    const timer = setTimeout(() => settle("timeout"), options.timeoutMs ?? 10_000)
    socket.on("data", (chunk) => {
      data += chunk.toString("latin1")
      if (complete(data)) settle("complete")
    })
    socket.on("error", (e: NodeJS.ErrnoException) => settle(e.code === "ECONNRESET" || e.code === "EPIPE" ? "reset" : "closed"))
    socket.on("close", () => settle("closed"))
    socket.on("connect", () => {
      socket.write(head)
      for (const piece of options.pieces ?? []) socket.write(piece)
      if (options.halfClose === true) socket.end()
    })
  })

/** The head of a request: request line, `Host`, the given header lines, blank line. */
export const requestHead = (method: string, path: string, headers: ReadonlyArray<string>): string =>
  `${method} ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n${headers.map((h) => `${h}\r\n`).join("")}\r\n`

/** A body in chunked transfer coding, cut into the given piece sizes. */
export const chunked = (body: Buffer, sizes: ReadonlyArray<number>): Buffer => {
  const parts: Array<Buffer> = []
  let offset = 0
  for (const size of sizes) {
    if (offset >= body.length) break
    const piece = body.subarray(offset, offset + Math.max(1, size))
    offset += piece.length
    parts.push(Buffer.from(`${piece.length.toString(16)}\r\n`), piece, Buffer.from("\r\n"))
  }
  if (offset < body.length) {
    const rest = body.subarray(offset)
    parts.push(Buffer.from(`${rest.length.toString(16)}\r\n`), rest, Buffer.from("\r\n"))
  }
  parts.push(Buffer.from("0\r\n\r\n"))
  return Buffer.concat(parts)
}
