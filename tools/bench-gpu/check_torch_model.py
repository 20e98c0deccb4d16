"""Checks that the PyTorch baseline (llama_torch.py) is a correct Llama 3 before its numbers are trusted: runs a fixture
checkpoint (test/fixtures/tiny-llama3-*) in float32 and compares with the transformers reference in its
reference.json: last-position prompt logits, logits of the last 8 positions, and the 24-token greedy continuation,
through both attention paths (eager slices; graph-safe masked decode) and, on CUDA, a captured CUDA graph.

    python3 tools/bench-gpu/check_torch_model.py FIXTURE_DIR [--device cuda|cpu]

Exit 0 and one line per check when all pass; exit 1 naming the first mismatch otherwise.
"""
import argparse
import json
import os
import sys

import torch

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama_torch import load_model  # noqa: E402

TOL = 1e-4  # max abs diff / max abs logit, as the fixture README asks of float32 implementations


def rel_err(got, want):
    want = torch.tensor(want, dtype=torch.float64)
    return ((got.double().cpu() - want).abs().max() / want.abs().max()).item()


def greedy(model, ids, steps, graph_safe, device):
    cache = model.new_cache(1, 64 * ((len(ids) + steps + 63) // 64))
    with torch.no_grad():
        logits = model.forward(torch.tensor([ids], device=device), cache, 0)
        tok = logits.argmax(-1, keepdim=True)
        out = [tok.item()]
        pos = len(ids)
        for _ in range(steps - 1):
            p = torch.tensor([pos], device=device) if graph_safe else pos
            tok = model.forward(tok, cache, p).argmax(-1, keepdim=True)
            out.append(tok.item())
            pos += 1
    return out


def graphed_greedy(model, ids, steps, device):
    cache = model.new_cache(1, 64 * ((len(ids) + steps + 63) // 64))
    with torch.no_grad():
        tok = model.forward(torch.tensor([ids], device=device), cache, 0).argmax(-1, keepdim=True)
        first = tok.item()
        pos = torch.tensor([len(ids)], device=device)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            model.forward(tok, cache, pos)  # warm-up outside capture (writes position len(ids), rewritten below)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            nxt = model.forward(tok, cache, pos).argmax(-1, keepdim=True)
            tok.copy_(nxt)
            pos.add_(1)
        # Capture does not execute: tok and pos still hold the first token and position.
        out = [first]
        for _ in range(steps - 1):
            graph.replay()
            out.append(tok.item())
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("fixture")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    device = torch.device(a.device)
    with open(os.path.join(a.fixture, "reference.json")) as f:
        ref = json.load(f)
    model = load_model(a.fixture, device, torch.float32, 512)
    failures = 0

    def check(name, ok, detail):
        nonlocal failures
        print(f"{'ok  ' if ok else 'FAIL'} {os.path.basename(a.fixture.rstrip('/'))} {name}: {detail}")
        failures += 0 if ok else 1

    for i, p in enumerate(ref["prompts"]):
        ids = p["input_ids"]
        with torch.no_grad():
            last = model.forward(torch.tensor([ids], device=device), model.new_cache(1, 512), 0)[0]
            e = rel_err(last, p["prefill_logits_last"])
            check(f"prompt {i} ({len(ids)} tokens) prefill logits", e < TOL, f"rel err {e:.2e}")
            full = p["full_ids"]
            all8 = model.forward(torch.tensor([full], device=device), model.new_cache(1, 512), 0, all_logits=True)[0, -8:]
            e = rel_err(all8, p["full_logits_last8"])
            check(f"prompt {i} last-8 logits", e < TOL, f"rel err {e:.2e}")
        want = p["greedy_continuation"]
        paths = [("eager", lambda: greedy(model, ids, len(want), False, device)), ("masked", lambda: greedy(model, ids, len(want), True, device))]
        if device.type == "cuda":
            paths.append(("cuda-graph", lambda: graphed_greedy(model, ids, len(want), device)))
        for name, run in paths:
            got = run()
            same = next((k for k in range(len(want)) if got[k] != want[k]), len(want))
            check(f"prompt {i} greedy {name}", got == want, f"{same}/{len(want)} tokens equal")
    if failures:
        print(f"check_torch_model: {failures} check(s) failed", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
