/**
 * Minimal ONNX graph writer over `onnx-proto` (the ONNX protobuf schema as static code).
 *
 * Graph builders (one per model family, in `src/adapters/<family>`) describe nodes with plain values; this module
 * turns them into a serialized `ModelProto`. Weights are never embedded: initializers point at an external data
 * file written next to the graph, so a multi-gigabyte checkpoint never has to sit in one JS buffer.
 */
import onnxProto from "onnx-proto"

const { onnx } = onnxProto

/** ONNX `TensorProto.DataType` codes used by Chorus. */
export const DataType = {
  float32: 1,
  uint8: 2,
  int8: 3,
  int32: 6,
  int64: 7,
  float16: 10,
  bfloat16: 16
} as const
export type DataTypeName = keyof typeof DataType

/** A dimension: a fixed size or a symbolic name (`"batch"`). */
export type Dim = number | string

/** Attribute values: integers become INT, `{ float }` becomes FLOAT, strings STRING, arrays INTS / FLOATS. */
export type AttributeValue = number | { readonly float: number } | string | ReadonlyArray<number> | { readonly floats: ReadonlyArray<number> }

export interface NodeSpec {
  readonly op: string
  readonly inputs: ReadonlyArray<string>
  readonly outputs: ReadonlyArray<string>
  readonly attributes?: Readonly<Record<string, AttributeValue>>
  readonly domain?: string
  readonly name?: string
}

export interface ValueSpec {
  readonly name: string
  readonly type: DataTypeName
  readonly dims: ReadonlyArray<Dim>
}

/** An initializer stored in the external data file at `[offset, offset + length)`. */
export interface ExternalInitializer {
  readonly name: string
  readonly type: DataTypeName
  readonly dims: ReadonlyArray<number>
  readonly location: string
  readonly offset: number
  readonly length: number
}

/** A small initializer embedded in the graph itself (shape constants, axes). */
export interface InlineInitializer {
  readonly name: string
  readonly type: "int64" | "int32" | "float32"
  readonly dims: ReadonlyArray<number>
  readonly values: ReadonlyArray<number>
}

export interface GraphSpec {
  readonly name: string
  readonly nodes: ReadonlyArray<NodeSpec>
  readonly inputs: ReadonlyArray<ValueSpec>
  readonly outputs: ReadonlyArray<ValueSpec>
  readonly external: ReadonlyArray<ExternalInitializer>
  readonly inline: ReadonlyArray<InlineInitializer>
  /** Opset per domain; `""` is the default ONNX domain. */
  readonly opsets: Readonly<Record<string, number>>
}

const attribute = (name: string, value: AttributeValue) => {
  const A = onnx.AttributeProto.AttributeType
  if (typeof value === "number") {
    return Number.isInteger(value)
      ? onnx.AttributeProto.create({ name, type: A.INT, i: value })
      : onnx.AttributeProto.create({ name, type: A.FLOAT, f: value })
  }
  if (typeof value === "string") return onnx.AttributeProto.create({ name, type: A.STRING, s: new TextEncoder().encode(value) })
  if ("float" in value) return onnx.AttributeProto.create({ name, type: A.FLOAT, f: value.float })
  if ("floats" in value) return onnx.AttributeProto.create({ name, type: A.FLOATS, floats: [...value.floats] })
  return onnx.AttributeProto.create({ name, type: A.INTS, ints: [...(value as ReadonlyArray<number>)] })
}

const valueInfo = (v: ValueSpec) =>
  onnx.ValueInfoProto.create({
    name: v.name,
    type: onnx.TypeProto.create({
      tensorType: onnx.TypeProto.Tensor.create({
        elemType: DataType[v.type],
        shape: onnx.TensorShapeProto.create({
          dim: v.dims.map((d) => (typeof d === "number" ? { dimValue: d } : { dimParam: d }))
        })
      })
    })
  })

const externalTensor = (t: ExternalInitializer) =>
  onnx.TensorProto.create({
    name: t.name,
    dataType: DataType[t.type],
    dims: [...t.dims],
    dataLocation: onnx.TensorProto.DataLocation.EXTERNAL,
    externalData: [
      { key: "location", value: t.location },
      { key: "offset", value: String(t.offset) },
      { key: "length", value: String(t.length) }
    ]
  })

const inlineTensor = (t: InlineInitializer) => {
  const base = { name: t.name, dataType: DataType[t.type], dims: [...t.dims] }
  switch (t.type) {
    case "int64":
      return onnx.TensorProto.create({ ...base, int64Data: [...t.values] })
    case "int32":
      return onnx.TensorProto.create({ ...base, int32Data: [...t.values] })
    case "float32":
      return onnx.TensorProto.create({ ...base, floatData: [...t.values] })
  }
}

/** Serializes a graph description into the bytes of an `.onnx` file (IR version 8). */
export const encodeModel = (graph: GraphSpec): Uint8Array => {
  const model = onnx.ModelProto.create({
    irVersion: 8,
    producerName: "chorus",
    opsetImport: Object.entries(graph.opsets).map(([domain, version]) => ({ domain, version })),
    graph: onnx.GraphProto.create({
      name: graph.name,
      node: graph.nodes.map((n, i) =>
        onnx.NodeProto.create({
          name: n.name ?? `${n.op}_${i}`,
          opType: n.op,
          domain: n.domain ?? "",
          input: [...n.inputs],
          output: [...n.outputs],
          attribute: Object.entries(n.attributes ?? {}).map(([k, v]) => attribute(k, v))
        })
      ),
      input: graph.inputs.map(valueInfo),
      output: graph.outputs.map(valueInfo),
      initializer: [...graph.external.map(externalTensor), ...graph.inline.map(inlineTensor)]
    })
  })
  return onnx.ModelProto.encode(model).finish()
}
