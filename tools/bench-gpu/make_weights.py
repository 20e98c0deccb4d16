"""A Meta-Llama-3-8B-Instruct-shaped checkpoint with random float16 weights, for `npm run bench:gpu` on hosts that
cannot download the real one. Hugging Face layout: config.json (the released 8B values), generation_config.json,
model-0000K-of-0000N.safetensors shards and model.safetensors.index.json (written last, so its presence means
the checkpoint is complete). Weights: normal(0, 0.02) from a seeded torch.Generator on the GPU; norms are 1.

    python3 tools/bench-gpu/make_weights.py OUTDIR [--device cuda] [--small]

Does nothing when OUTDIR already holds the same checkpoint; refuses to touch an OUTDIR that holds another model.
`--small` writes a 2-layer model of the same form (development only).
"""
import argparse
import json
import os
import sys
import time

import torch

# Meta-Llama-3-8B-Instruct's config.json as released (rope_theta at the top level, no rope_scaling).
CONFIG_8B = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128009],
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 8192,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "transformers_version": "4.40.0.dev0",
    "use_cache": True,
    "vocab_size": 128256,
}
SMALL = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
GENERATION_CONFIG = {"bos_token_id": 128000, "eos_token_id": [128001, 128009], "do_sample": True, "temperature": 0.6, "top_p": 0.9}
SEED = 8_000_000_000
STD = 0.02
INDEX = "model.safetensors.index.json"
# Keys compared when OUTDIR already holds a checkpoint.
SHAPE_KEYS = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "torch_dtype"]


def tensor_specs(c):
    """(name, shape, is_norm) in the order transformers writes a Llama checkpoint."""
    h, i, d = c["hidden_size"], c["intermediate_size"], c["hidden_size"] // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
    specs = [("model.embed_tokens.weight", (c["vocab_size"], h), False)]
    for n in range(c["num_hidden_layers"]):
        p = f"model.layers.{n}."
        specs += [
            (p + "input_layernorm.weight", (h,), True),
            (p + "self_attn.q_proj.weight", (q, h), False),
            (p + "self_attn.k_proj.weight", (kv, h), False),
            (p + "self_attn.v_proj.weight", (kv, h), False),
            (p + "self_attn.o_proj.weight", (h, q), False),
            (p + "post_attention_layernorm.weight", (h,), True),
            (p + "mlp.gate_proj.weight", (i, h), False),
            (p + "mlp.up_proj.weight", (i, h), False),
            (p + "mlp.down_proj.weight", (h, i), False),
        ]
    specs += [("model.norm.weight", (h,), True), ("lm_head.weight", (c["vocab_size"], h), False)]
    return specs


def plan_shards(specs, shard_bytes):
    """Consecutive groups of tensors of at most shard_bytes each (a larger tensor gets a shard of its own)."""
    shards, current, size = [], [], 0
    for spec in specs:
        b = 2 * _numel(spec[1])
        if current and size + b > shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(spec)
        size += b
    if current:
        shards.append(current)
    return shards


def _numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def existing(outdir, config):
    """True when outdir holds a complete checkpoint of this config; exits when it holds another model."""
    index = os.path.join(outdir, INDEX)
    if not os.path.exists(index):
        return False
    with open(os.path.join(outdir, "config.json")) as f:
        found = json.load(f)
    diff = [k for k in SHAPE_KEYS if found.get(k) != config[k]]
    if diff:
        raise SystemExit(f"make_weights: {outdir} already holds another model ({', '.join(f'{k} {found.get(k)} != {config[k]}' for k in diff)}); choose another OUTDIR")
    with open(index) as f:
        files = set(json.load(f)["weight_map"].values())
    missing = [f for f in sorted(files) if not os.path.exists(os.path.join(outdir, f))]
    if missing:
        raise SystemExit(f"make_weights: {index} names missing files {missing}; delete {outdir} and run again")
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="2 layers, hidden 256 (development)")
    ap.add_argument("--shard-bytes", type=int, default=5_000_000_000)
    a = ap.parse_args()
    from safetensors.torch import save_file

    config = dict(CONFIG_8B, **(SMALL if a.small else {}))
    if existing(a.outdir, config):
        print(f"make_weights: {a.outdir} already holds the checkpoint; nothing to do")
        return
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("make_weights: torch sees no CUDA device; pass --device cpu to generate on the CPU (slow)")
    os.makedirs(a.outdir, exist_ok=True)
    t0 = time.perf_counter()
    gen = torch.Generator(device=device)
    gen.manual_seed(SEED)
    shards = plan_shards(tensor_specs(config), a.shard_bytes)
    weight_map, total = {}, 0
    for k, group in enumerate(shards):
        name = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for tname, shape, is_norm in group:
            if is_norm:
                t = torch.ones(shape, dtype=torch.float16)
            else:
                t = torch.randn(shape, generator=gen, device=device, dtype=torch.float16).mul_(STD).cpu()
            tensors[tname] = t
            weight_map[tname] = name
            total += t.numel() * 2
        tmp = os.path.join(a.outdir, f".tmp-{name}")
        save_file(tensors, tmp, metadata={"format": "pt"})
        os.replace(tmp, os.path.join(a.outdir, name))
        print(f"make_weights: {name}: {len(tensors)} tensors, {sum(t.numel() * 2 for t in tensors.values()) / 1e9:.2f} GB ({time.perf_counter() - t0:.1f} s)", flush=True)
        del tensors
    with open(os.path.join(a.outdir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(a.outdir, "generation_config.json"), "w") as f:
        json.dump(GENERATION_CONFIG, f, indent=2)
    with open(os.path.join(a.outdir, INDEX + ".tmp"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    os.replace(os.path.join(a.outdir, INDEX + ".tmp"), os.path.join(a.outdir, INDEX))
    print(f"make_weights: wrote {a.outdir}: {total / 1e9:.2f} GB in {len(shards)} shards, {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
