#!/usr/bin/env python3
"""Where a decode step's GPU time goes, kernel by kernel, from a trace of repeated identical steps.

  python3 native/probes/kernel-steps.py TRACE.csv [--steps 100] [--one-step ONE.csv]

TRACE.csv is Nsight Systems' `nsys stats -r cuda_gpu_trace -f csv` of a run that ends in decode steps (for example
native/probes/step-overhead.ts under `nsys profile --cuda-graph-trace=node`), or Nsight Compute's `--csv` output with
the metric gpu__time_duration.sum (durations only: no start times, so no gaps). A decode step replays the same
kernels in the same order, so the step is found as the period of the trace's kernel names at its end; the last
`--steps` periods are averaged. Printed: a step's span on the GPU (first kernel's start to the next step's), the sum
of its kernels' durations, the gap between them (launch latency, dependencies, the host), the time by kind (linears,
attention, norms, ...) and the kernels by time. `--one-step` writes one step's kernels in order.
"""
import argparse
import csv
import re
import sys
from collections import defaultdict

KINDS = [
    ("marlin", re.compile(r"Marlin|marlin", re.I)),
    ("int4 (MatMulNBits / Chorus)", re.compile(r"MatMulNBits|Float4Bits|Dequantize|dequant|int4|fpA_intB|BlkQ4|q4", re.I)),
    ("greedy argmax", re.compile(r"greedyArgmax|arg_min_max|ArgMax|reduce_tensor|op_tensor_kernel", re.I)),
    ("swiglu", re.compile(r"swiglu|QuickGelu|SplitKernel", re.I)),
    ("attention", re.compile(r"xqa|flash|mmha|attention|softmax|kernel_mha|GetSequenceLengths", re.I)),
    ("rotary", re.compile(r"rotary|Rotary|RoPE|rope", re.I)),
    ("norm + residual", re.compile(r"LayerNorm|layernorm|Norm|norm|Skip", re.I)),
    ("float16 linears (GEMV / GEMM)", re.compile(r"gemv|gemm|cublas|cutlass|sm90_xmma|sm80_xmma|ampere|hopper|nvjet|xmma", re.I)),
    ("memcpy / memset", re.compile(r"memcpy|memset|\[CUDA", re.I)),
    ("elementwise", re.compile(r"Elementwise|elementwise|Binary|Unary|Cast|Gather|Concat|Transpose|Slice|Split|Expand|Where|Add|Mul|Sigmoid|QuickGelu|Silu", re.I)),
]


def kind_of(name):
    for kind, pattern in KINDS:
        if pattern.search(name):
            return kind
    return "other"


def short(name, width=110):
    # Template arguments make kernel names long and unreadable; keep the head and the outer template.
    name = re.sub(r"\s+", " ", name)
    return name if len(name) <= width else name[: width - 3] + "..."


def read_trace(path):
    """(start ns or None, duration ns, name) rows in start order."""
    with open(path, newline="") as f:
        text = f.read()
    lines = text.splitlines()
    # nsys stats prints a header line before the CSV; ncu prints ==PROF== lines and the program's own output.
    head = next((i for i, l in enumerate(lines) if l.startswith('"Start (ns)"') or l.startswith("Start (ns)") or l.startswith('"ID"')), None)
    if head is None:
        sys.exit(f"{path}: no nsys cuda_gpu_trace or ncu CSV header found")
    rows = list(csv.DictReader(lines[head:]))
    out = []
    if "Start (ns)" in rows[0]:
        for r in rows:
            try:
                out.append((int(float(r["Start (ns)"])), int(float(r["Duration (ns)"])), r.get("Name", "")))
            except (ValueError, KeyError):
                continue
        out.sort(key=lambda x: x[0])
        return out
    scale = {"nsecond": 1, "ns": 1, "usecond": 1e3, "us": 1e3, "msecond": 1e6, "ms": 1e6}
    for r in rows:
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        value = float(r["Metric Value"].replace(",", ""))
        out.append((None, int(value * scale.get(r.get("Metric Unit", "nsecond"), 1)), r.get("Kernel Name", "")))
    return out


def find_period(names, end, longest=6000):
    """The smallest P for which the 3 P names before `end` repeat with period P, or None."""
    for p in range(8, longest):
        span = 3 * p
        if end - span - p < 0:
            return None
        if all(names[end - k] == names[end - k - p] for k in range(1, span + 1)):
            return p
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--one-step")
    args = ap.parse_args()
    rows = read_trace(args.trace)
    names = [r[2] for r in rows]
    period, end = None, len(rows)
    # The run may end with a few kernels that are not a decode step (the last step's release, the next request's
    # set-up): try anchors a little before the end too.
    for back in (0, 10, 50, 200, 1000, 3000):
        if len(rows) - back <= 0:
            break
        period = find_period(names, len(rows) - back)
        if period is not None:
            end = len(rows) - back
            break
    if period is None:
        sys.exit(f"{args.trace}: no repeating step found in {len(rows)} rows")
    steps = 0
    while steps < args.steps and end - (steps + 1) * period >= 0 and names[end - (steps + 1) * period: end - steps * period] == names[end - period: end]:
        steps += 1
    first = end - steps * period
    window = rows[first:end]
    has_start = window[0][0] is not None
    per_name = defaultdict(lambda: [0, 0])  # name -> [total ns, count]
    per_kind = defaultdict(int)
    for _, d, n in window:
        per_name[n][0] += d
        per_name[n][1] += 1
        per_kind[kind_of(n)] += d
    busy = sum(d for _, d, _ in window) / steps
    print(f"{args.trace}: a step is {period} GPU operations; {steps} steps averaged (rows {first}-{end} of {len(rows)})")
    if has_start:
        # The span of the last averaged step needs the next step's start, which may not exist: use the steps with one.
        spans = [rows[first + (i + 1) * period][0] - rows[first + i * period][0] for i in range(steps - 1)]
        span = sum(spans) / len(spans) if spans else float("nan")
        print(f"step on the GPU: {span / 1e3:.1f} us span, {busy / 1e3:.1f} us of kernels and copies, {(span - busy) / 1e3:.1f} us between them ({100 * (span - busy) / span:.1f}%)")
    else:
        print(f"step's kernels: {busy / 1e3:.1f} us (durations only: no start times in this trace)")
    print("\n| kind | us a step | share |\n|---|--:|--:|")
    for kind, total in sorted(per_kind.items(), key=lambda kv: -kv[1]):
        print(f"| {kind} | {total / steps / 1e3:.1f} | {100 * total / steps / busy:.1f}% |")
    print("\n| kernel | a step | us each | us a step | kind |\n|---|--:|--:|--:|---|")
    for name, (total, count) in sorted(per_name.items(), key=lambda kv: -kv[1][0])[:30]:
        print(f"| {short(name)} | {count / steps:g} | {total / count / 1e3:.2f} | {total / steps / 1e3:.1f} | {kind_of(name)} |")
    if args.one_step:
        with open(args.one_step, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["index", "start_us", "duration_us", "kind", "name"])
            base = rows[end - period][0]
            for i, (s, d, n) in enumerate(rows[end - period: end]):
                w.writerow([i, "" if s is None else f"{(s - base) / 1e3:.2f}", f"{d / 1e3:.2f}", kind_of(n), n])


if __name__ == "__main__":
    main()
