// Reading a Prometheus text exposition and evaluating PromQL instant-vector selectors over it
// (`name{label="v", label!="v", label=~"re", label!~"re"}`), the way Prometheus matches them: regexes are anchored,
// a missing label reads as "", and a selector matches a sample only when every matcher holds.

export interface Sample {
  readonly name: string
  readonly labels: Readonly<Record<string, string>>
  readonly value: number
}

export interface Matcher {
  readonly label: string
  readonly op: "=" | "!=" | "=~" | "!~"
  readonly value: string
}

export interface Selector {
  readonly name: string
  readonly matchers: ReadonlyArray<Matcher>
}

const unescape = (s: string): string => s.replace(/\\(["\\n])/g, (_, c: string) => (c === "n" ? "\n" : c))

const parseValue = (v: string): number => (v === "+Inf" ? Infinity : v === "-Inf" ? -Infinity : v === "NaN" ? NaN : Number(v))

/** Label pairs `a="x",b="y"` (quoted values with `\"`, `\\`, `\n` escapes) after the opening brace at `at`. */
const parseLabels = (text: string, at: number, ops: ReadonlyArray<string>) => {
  const out: Array<{ label: string; op: string; value: string }> = []
  let i = at
  const ws = () => {
    while (text[i] === " " || text[i] === "\t") i++
  }
  for (;;) {
    ws()
    if (text[i] === "}") return { pairs: out, end: i + 1 }
    const name = /^[a-zA-Z_][a-zA-Z0-9_]*/.exec(text.slice(i))
    if (name === null) throw new Error(`expected a label name at ${i} in ${text}`)
    i += name[0].length
    ws()
    const op = ops.find((o) => text.startsWith(o, i) && !(o === "=" && text[i + 1] === "~"))
    if (op === undefined) throw new Error(`expected one of ${ops.join(" ")} at ${i} in ${text}`)
    i += op.length
    ws()
    if (text[i] !== "\"") throw new Error(`expected a quoted value at ${i} in ${text}`)
    let j = i + 1
    while (j < text.length && text[j] !== "\"") j += text[j] === "\\" ? 2 : 1
    if (j >= text.length) throw new Error(`unterminated label value in ${text}`)
    out.push({ label: name[0], op, value: unescape(text.slice(i + 1, j)) })
    i = j + 1
    ws()
    if (text[i] === ",") i++
  }
}

/** The samples of a text exposition (format 0.0.4); comment lines are skipped. */
export const parseExposition = (text: string): Array<Sample> => {
  const samples: Array<Sample> = []
  for (const line of text.split("\n")) {
    if (line.trim() === "" || line.startsWith("#")) continue
    const name = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line)
    if (name === null) throw new Error(`not a sample line: ${line}`)
    let rest = line.slice(name[0].length)
    const labels: Record<string, string> = {}
    if (rest.startsWith("{")) {
      const { pairs, end } = parseLabels(rest, 1, ["="])
      for (const p of pairs) labels[p.label] = p.value
      rest = rest.slice(end)
    }
    const value = rest.trim().split(/\s+/)[0]
    if (value === undefined || value === "") throw new Error(`no value in: ${line}`)
    samples.push({ name: name[0], labels, value: parseValue(value) })
  }
  return samples
}

/** One selector, `name{...}` or `name`. */
export const parseSelector = (text: string): Selector => {
  const name = /^\s*([a-zA-Z_:][a-zA-Z0-9_:]*)/.exec(text)
  if (name === null) throw new Error(`not a selector: ${text}`)
  const rest = text.slice(name[0].length).trim()
  if (rest === "") return { name: name[1]!, matchers: [] }
  if (!rest.startsWith("{")) throw new Error(`not a selector: ${text}`)
  const { pairs, end } = parseLabels(rest, 1, ["=~", "!~", "!=", "="])
  if (rest.slice(end).trim() !== "") throw new Error(`trailing text after selector: ${text}`)
  return { name: name[1]!, matchers: pairs.map((p) => ({ label: p.label, op: p.op as Matcher["op"], value: p.value })) }
}

/** Every `metric{...}` selector inside a PromQL expression (functions and aggregations around them are skipped). */
export const selectorsIn = (expr: string): Array<string> =>
  [...expr.matchAll(/([a-zA-Z_:][a-zA-Z0-9_:]*)\{((?:[^}"]|"(?:[^"\\]|\\.)*")*)\}/g)]
    .filter((m) => !["by", "without", "on", "ignoring", "group_left", "group_right"].includes(m[1]!))
    .map((m) => m[0])

const holds = (m: Matcher, labels: Readonly<Record<string, string>>): boolean => {
  const v = labels[m.label] ?? ""
  switch (m.op) {
    case "=":
      return v === m.value
    case "!=":
      return v !== m.value
    case "=~":
      return new RegExp(`^(?:${m.value})$`).test(v)
    case "!~":
      return !new RegExp(`^(?:${m.value})$`).test(v)
  }
}

/** The samples a selector selects. */
export const select = (samples: ReadonlyArray<Sample>, selector: Selector | string): Array<Sample> => {
  const s = typeof selector === "string" ? parseSelector(selector) : selector
  return samples.filter((x) => x.name === s.name && s.matchers.every((m) => holds(m, x.labels)))
}
