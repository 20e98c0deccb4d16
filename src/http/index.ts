/**
 * The HTTP server's public surface: run it as a layer in an Effect app, or start it from plain Node code.
 *
 * @since 0.1.0
 */
export { type RunningServer, runServer, type ServerOptions, serverLayer, startServer } from "./Server.ts"
export { Serving, type ServingStatus } from "./Serving.ts"
