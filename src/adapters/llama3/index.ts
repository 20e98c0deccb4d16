/**
 * The Llama 3 adapter's public surface: the adapter, its options, and the conversion entry point.
 *
 * @since 0.1.0
 */
export { Llama3Adapter, type Llama3Options } from "./Llama3Adapter.ts"
export { convertCheckpoint, type ConvertOptions, type ConvertProgress, type ConvertedModel } from "./Converter.ts"
export { llama3ChatText } from "./PromptFormat.ts"
