"""The PyTorch side of `npm run bench:gpu`: the same workloads as Chorus on the same card, plus the two ceilings.

    python3 tools/bench-gpu/torch_baseline.py CHECKPOINT OUT.json [--cuda-graphs] [--batches 1,8,32,64,128]

Model: llama_torch.py (float16, fused projections, static KV cache per workload, greedy argmax on the device; tokens
stay on the device between steps, so there is no host round trip per step, which a server would have).
Workloads:
  single stream  prefill CONTEXT tokens, then DECODE_STEPS timed decode steps: tokens/s, inter-token latency
  batches        B sequences of PROMPT_LEN tokens, GEN_LEN generated each: prefill time (sequences prefilled 8192
                 tokens per call, as Chorus's maxNumBatchedTokens), then aggregate tokens/s of the GEN_LEN - 1
                 decode steps
  ttft           prompt of PROMPT_LEN at batch 1: prefill + first token on the host, median of TTFT_REPEATS
Each decode measurement runs eager (Python issues every kernel) and, with --cuda-graphs, as a captured CUDA graph
replayed per step (static shapes: the whole cache is attended with a mask). Ceilings: device-to-device copy
bandwidth (bytes read + written) and a large float16 matrix product.
Timing: warm-up first, CUDA events around device work, medians. OUT.json is rewritten after every section, so a
run cut short still leaves what it measured.
"""
import argparse
import json
import os
import statistics
import sys
import time
import traceback

import torch

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama_torch import load_model, prompt_ids  # noqa: E402


class Clock:
    """CUDA events on a GPU, the host clock on the CPU (development dry runs)."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def ms(self, a, b):
        return a.elapsed_time(b) if self.cuda else (b - a) * 1000.0


def percentile(xs, q):
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def round_up(n, m=64):
    return (n + m - 1) // m * m


def copy_bandwidth(device, clock, gib, repeats=10):
    n = int(gib * 2**30)
    src = torch.randint(0, 256, (n,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(2):
        dst.copy_(src)
    times = []
    for _ in range(repeats):
        a = clock.mark()
        dst.copy_(src)
        b = clock.mark()
        clock.sync()
        times.append(clock.ms(a, b))
    if not torch.equal(dst[-4096:], src[-4096:]):
        raise SystemExit("copy bandwidth: the copy did not arrive")
    ms = statistics.median(times)
    del src, dst
    if clock.cuda:
        torch.cuda.empty_cache()  # give the 2 x 4 GiB back before the model loads
    return {"bytesPerSecond": 2 * n / (ms / 1000), "bytesCopied": n, "medianMs": ms, "countedBytes": "read + written"}


def matmul_rate(device, clock, dtype, n, repeats=10):
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b)
    times = []
    for _ in range(repeats):
        s = clock.mark()
        torch.matmul(a, b)
        e = clock.mark()
        clock.sync()
        times.append(clock.ms(s, e))
    ms = statistics.median(times)
    return {"flopsPerSecond": 2 * n**3 / (ms / 1000), "n": n, "medianMs": ms}


class DecodeGraph:
    """One decode step of B sequences captured as a CUDA graph: replay = forward, argmax, tok <- next, pos += 1."""

    def __init__(self, model, cache, batch):
        dev = model.device
        self.tok = torch.zeros((batch, 1), dtype=torch.long, device=dev)
        self.pos = torch.zeros((1,), dtype=torch.long, device=dev)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up outside capture (cuBLAS handles, SDPA backend choice)
                model.forward(self.tok, cache, self.pos)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            nxt = model.forward(self.tok, cache, self.pos).argmax(-1, keepdim=True)
            self.tok.copy_(nxt)
            self.pos.add_(1)

    def start(self, first_tokens, position):
        self.tok.copy_(first_tokens)
        self.pos.fill_(position)

    def step(self):
        self.graph.replay()
        return self.tok


def decode(model, cache, first, position, steps, clock, graph=None):
    """Runs `steps` decode steps from `first` (tokens at `position`); returns the marks around each step and the last tokens."""
    if graph is not None:
        graph.start(first, position)
    tok = first
    marks = [clock.mark()]
    for s in range(steps):
        tok = graph.step() if graph is not None else model.forward(tok, cache, position + s).argmax(-1, keepdim=True)
        marks.append(clock.mark())
    clock.sync()
    return marks, tok.clone()


def itl_stats(clock, marks):
    itl = [clock.ms(marks[i], marks[i + 1]) for i in range(len(marks) - 1)]
    total = clock.ms(marks[0], marks[-1])
    return {
        "tokensPerSecond": len(itl) / (total / 1000),
        "itlMeanMs": statistics.fmean(itl),
        "itlP50Ms": percentile(itl, 50),
        "itlP99Ms": percentile(itl, 99),
        "steps": len(itl),
    }


def prefill(model, ids, cache, max_tokens):
    """Greedy first tokens of every row of `ids`, prefilled in chunks of whole sequences of at most max_tokens."""
    rows = max(1, max_tokens // ids.shape[1])
    out = []
    for i in range(0, ids.shape[0], rows):
        view = [(k[i:i + rows], v[i:i + rows]) for k, v in cache]
        out.append(model.forward(ids[i:i + rows], view, 0).argmax(-1, keepdim=True))
    return torch.cat(out)


def guarded(name, fn):
    """A failed section (out of memory, capture refused) is reported in the JSON and on stderr; the run goes on."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - any failure of one measurement must not lose the others
        traceback.print_exc()
        print(f"torch_baseline: {name} failed: {type(e).__name__}: {e}".splitlines()[0], file=sys.stderr)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    ap.add_argument("--cuda-graphs", action="store_true", help="also time decode steps replayed from a captured CUDA graph")
    ap.add_argument("--batches", default="1,8,32,64,128")
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--gen-len", type=int, default=256)
    ap.add_argument("--context", type=int, default=1024, help="single-stream prompt length")
    ap.add_argument("--decode-steps", type=int, default=128, help="single-stream timed decode steps")
    ap.add_argument("--ttft-repeats", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=2, help="measurements per row; the median is reported")
    ap.add_argument("--max-batched-tokens", type=int, default=8192)
    ap.add_argument("--copy-gib", type=float, default=4.0)
    ap.add_argument("--matmul-n", type=int, default=8192)
    a = ap.parse_args()

    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("torch_baseline: torch sees no CUDA device (torch.cuda.is_available() is False); check the driver and CUDA_VISIBLE_DEVICES")
    if a.cuda_graphs and device.type != "cuda":
        raise SystemExit("torch_baseline: --cuda-graphs needs --device cuda")
    dtype = getattr(torch, a.dtype)
    batches = [int(b) for b in a.batches.split(",") if b]
    clock = Clock(device)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "deviceMemoryBytes": torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None,
        "torch": torch.__version__,
        "cudaVersion": torch.version.cuda,
        "dtype": a.dtype,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "implementation": f"llama_torch.py: hand-written {a.dtype} Llama, fused qkv and gate|up, static KV cache, SDPA, greedy argmax on the device",
        "workloads": {"context": a.context, "decodeSteps": a.decode_steps, "promptLen": a.prompt_len, "genLen": a.gen_len,
                      "ttftRepeats": a.ttft_repeats, "repeat": a.repeat, "maxBatchedTokens": a.max_batched_tokens},
        "batches": [],
    }

    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)

    def save():
        tmp = a.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=2)
        os.replace(tmp, a.out)

    def log(msg):
        print(f"[torch {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    log(f"{result['device']}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    result["copyBandwidth"] = guarded("copy bandwidth", lambda: copy_bandwidth(device, clock, a.copy_gib))
    log(f"copy bandwidth {result['copyBandwidth']}")
    result["matmul"] = guarded("matmul rate", lambda: matmul_rate(device, clock, dtype, a.matmul_n))
    log(f"matmul {result['matmul']}")
    save()

    t = time.perf_counter()
    max_pos = round_up(max(a.context + a.decode_steps + 1, a.prompt_len + a.gen_len) + 64)
    with torch.no_grad():
        model = load_model(a.checkpoint, device, dtype, max_pos)
    tensors = [model.embed, model.norm] + ([] if model.lm_head is model.embed else [model.lm_head])
    tensors += [w for layer in model.layers for w in layer.values()]
    weight_bytes = sum(w.numel() * w.element_size() for w in tensors)
    result["loadSeconds"] = time.perf_counter() - t
    result["weightBytes"] = weight_bytes
    log(f"loaded {a.checkpoint} in {result['loadSeconds']:.1f} s, {weight_bytes / 1e9:.2f} GB of weights")
    vocab = model.cfg.vocab

    with torch.no_grad():
        # --- single stream
        def single_stream(graphs):
            cache = model.new_cache(1, round_up(a.context + a.decode_steps + 1))
            ids = torch.tensor([prompt_ids(0, a.context, vocab)], device=device)
            graph = DecodeGraph(model, cache, 1) if graphs else None
            runs = []
            for rep in range(a.repeat + 1):  # the first is warm-up
                s = clock.mark()
                first = model.forward(ids, cache, 0).argmax(-1, keepdim=True)
                marks, _ = decode(model, cache, first, a.context, a.decode_steps, clock, graph)
                if rep > 0:
                    runs.append({**itl_stats(clock, marks), "prefillMs": clock.ms(s, marks[0])})
            best = sorted(runs, key=lambda r: r["tokensPerSecond"])[len(runs) // 2]
            return {**best, "runs": runs}

        ss = {"context": a.context, "eager": guarded("single stream eager", lambda: single_stream(False))}
        log(f"single stream eager {ss['eager'].get('tokensPerSecond', ss['eager'])}")
        if a.cuda_graphs:
            ss["graphs"] = guarded("single stream graphs", lambda: single_stream(True))
            log(f"single stream graphs {ss['graphs'].get('tokensPerSecond', ss['graphs'])}")
        result["singleStream"] = ss
        save()

        # --- batches
        def batch_row(B):
            cache = model.new_cache(B, round_up(a.prompt_len + a.gen_len))
            ids = torch.tensor([prompt_ids(i, a.prompt_len, vocab) for i in range(B)], device=device)
            steps = a.gen_len - 1
            graph = guarded(f"batch {B} graph capture", lambda: DecodeGraph(model, cache, B)) if a.cuda_graphs else None
            graph_error = graph.get("error") if isinstance(graph, dict) else None
            if graph_error is not None:
                graph = None
            w = min(B, max(1, a.max_batched_tokens // a.prompt_len))  # warm-up: one prefill chunk, a few decode steps
            prefill(model, ids[:w], [(k[:w], v[:w]) for k, v in cache], a.max_batched_tokens)
            decode(model, cache, ids[:, :1], a.prompt_len, 4, clock)
            eager, graphed, prefills, agree = [], [], [], []
            for _ in range(a.repeat):
                s = clock.mark()
                first = prefill(model, ids, cache, a.max_batched_tokens)
                e = clock.mark()
                clock.sync()
                prefills.append(clock.ms(s, e))
                marks, last_eager = decode(model, cache, first, a.prompt_len, steps, clock)
                eager.append(B * steps / (clock.ms(marks[0], marks[-1]) / 1000))
                if graph is not None:
                    marks, last_graph = decode(model, cache, first, a.prompt_len, steps, clock, graph)
                    graphed.append(B * steps / (clock.ms(marks[0], marks[-1]) / 1000))
                    agree.append((last_graph == last_eager).float().mean().item())
            row = {"batch": B, "prefillMs": statistics.median(prefills),
                   "eager": {"tokensPerSecond": statistics.median(eager), "runs": eager}}
            if graph is not None:
                # Eager slices the cache, the graph masks it: different attention kernels, so float16 argmax may differ.
                row["graphs"] = {"tokensPerSecond": statistics.median(graphed), "runs": graphed, "lastTokenAgreementWithEager": statistics.fmean(agree)}
            elif graph_error is not None:
                row["graphs"] = {"error": graph_error}
            return row

        for B in batches:
            row = guarded(f"batch {B}", lambda: batch_row(B))
            row.setdefault("batch", B)
            result["batches"].append(row)
            log(f"batch {B}: {json.dumps({k: (v.get('tokensPerSecond', v) if isinstance(v, dict) else v) for k, v in row.items()})}")
            save()
            if device.type == "cuda":
                torch.cuda.empty_cache()

        # --- time to first token
        def ttft():
            cache = model.new_cache(1, round_up(a.prompt_len + 1))
            ids = torch.tensor([prompt_ids(0, a.prompt_len, vocab)], device=device)
            samples = []
            for rep in range(a.ttft_repeats + 2):  # two warm-ups
                clock.sync()
                t0 = time.perf_counter()
                model.forward(ids, cache, 0).argmax(-1).item()
                if rep >= 2:
                    samples.append((time.perf_counter() - t0) * 1000)
            return {"promptLen": a.prompt_len, "medianMs": statistics.median(samples), "samplesMs": samples}

        result["ttft"] = {"eager": guarded("ttft", ttft)}
        log(f"ttft {result['ttft']['eager'].get('medianMs', result['ttft']['eager'])}")
        save()
    log(f"wrote {a.out}")


if __name__ == "__main__":
    main()
