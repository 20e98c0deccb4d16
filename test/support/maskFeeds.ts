// The grammar-mask inputs of a rotary-outside last shard (`TensorNames.ts`) for a run that does not fetch
// `masked_greedy_token`: no sparse and no dense rows (the graph still declares the inputs, and ORT wants every input fed).
import * as ort from "onnxruntime-node"
import type { GraphMask } from "../../src/core/shard/GraphMask.ts"
import * as TensorNames from "../../src/core/shard/TensorNames.ts"

/** `mask` as ORT feeds (default: no constrained row). */
export const maskFeeds = (vocab: number, mask?: GraphMask): Record<string, ort.Tensor> => {
  const words = Math.ceil(vocab / 32)
  const m = mask ?? { denseRows: new BigInt64Array(0), bitmask: new Int32Array(0), sparseRows: new BigInt64Array(0), sparseIds: new BigInt64Array(0), sparseK: 1 }
  return {
    [TensorNames.tokenBitmask]: new ort.Tensor("int32", m.bitmask, [m.denseRows.length, words]),
    [TensorNames.tokenBitmaskRows]: new ort.Tensor("int64", m.denseRows, [m.denseRows.length]),
    [TensorNames.allowedRows]: new ort.Tensor("int64", m.sparseRows, [m.sparseRows.length]),
    [TensorNames.allowedIds]: new ort.Tensor("int64", m.sparseIds, [m.sparseRows.length, m.sparseK])
  }
}
