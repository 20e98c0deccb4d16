/**
 * The Node HTTP server under the Effect router, with what Node leaves to its user: a `CONNECT` request (a proxy
 * tunnel) never reaches the router, and without a listener Node closes its socket without a word. Chorus is not a
 * proxy, so it answers 405 and closes.
 *
 * Other requests the router has no use for already get a status: unknown routes and methods 404, a request line
 * Node cannot parse 400, headers past Node's 16 KiB limit 431.
 *
 * @since 0.1.0
 */
import * as http from "node:http"
import type { Duplex } from "node:stream"

const refusal = (method: string): string => {
  const body = JSON.stringify({
    error: { message: `the ${method} method is not supported: this server is not a proxy`, type: "invalid_request_error", param: null, code: "method_not_allowed" }
  })
  return [
    "HTTP/1.1 405 Method Not Allowed",
    "Allow: GET, POST",
    "Content-Type: application/json",
    `Content-Length: ${Buffer.byteLength(body)}`,
    "Connection: close",
    "",
    body
  ].join("\r\n")
}

/**
 * Makes `server` answer `CONNECT` with 405 instead of dropping the connection. Works for `https` servers too.
 *
 * @category combinators
 */
export const refuseTunnels = <S extends http.Server>(server: S): S =>
  server.on("connect", (request: http.IncomingMessage, socket: Duplex) => {
    socket.on("error", () => {})
    socket.end(refusal(request.method ?? "CONNECT"))
  })

/**
 * A plain `http.Server` for `NodeHttpServer.layer`, with tunnels refused.
 *
 * @category constructors
 */
export const createNodeServer = (): http.Server => refuseTunnels(http.createServer())
