"""A Meta-Llama-3-8B-Instruct-shaped (or 70B-shaped) checkpoint with random float16 weights, for `npm run bench:gpu`
and the multi-GPU runs (docs/multi-gpu.md) on hosts that cannot download the real one. Hugging Face layout:
config.json (the released values), generation_config.json, model-0000K-of-0000N.safetensors shards and
model.safetensors.index.json (written last, so its presence means the checkpoint is complete). Weights: normal(0, 0.02)
from a seeded torch.Generator on the GPU; norms are 1.

    python3 tools/bench-gpu/make_weights.py OUTDIR [--shape 8b|70b] [--layers N] [--device cuda] [--small] [--dry-run]

`--shape 70b` takes Meta-Llama-3-70B's layer shape (hidden 8192, 64 query / 8 KV heads, FFN 28672); `--layers N` keeps
the first N layers of either shape, so a reduced-depth model has the full model's per-layer cost. float16 sizes:
70B 1.71 GB a layer + 4.20 GB embeddings and LM head (80 layers 141.1 GB: fits on neither lent host's disk, 64 GB and
128 GB, and a conversion writes as much again; 20 layers 38.4 GB). `--dry-run` prints the config and the planned files
without torch and writes nothing. Before writing, the free disk space is checked against the planned size.

Does nothing when OUTDIR already holds the same checkpoint; refuses to touch an OUTDIR that holds another model. A run
cut short (a time limit) goes on where it stopped when called again: the files it completed are kept.
`--small` writes a 2-layer 8B-form model with hidden 256 (development only).
"""
import argparse
import json
import os
import shutil
import sys
import time

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
# Meta-Llama-3-70B-Instruct's config.json values (its weights are released as bfloat16; these random ones are float16).
CONFIG_70B = dict(
    CONFIG_8B,
    hidden_size=8192,
    intermediate_size=28672,
    num_attention_heads=64,
    num_hidden_layers=80,
    num_key_value_heads=8,
)
SHAPES = {"8b": CONFIG_8B, "70b": CONFIG_70B}
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


class OneLineParser(argparse.ArgumentParser):
    """Bad flags: one line on stderr and exit status 2 (argparse would print the whole usage first)."""

    def error(self, message):
        self.exit(2, f"make_weights: {message}\n")


def parse_args(argv):
    ap = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="8b", help="the released model whose shape to take (default 8b)")
    ap.add_argument("--layers", type=int, help="keep the first N decoder layers (default: all of the shape's)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="2 layers, hidden 256 (development; 8b shape only)")
    ap.add_argument("--shard-bytes", type=int, default=5_000_000_000)
    ap.add_argument("--dry-run", action="store_true", help="print the config and the planned files; write nothing (no torch needed)")
    a = ap.parse_args(argv)
    if a.small and a.shape != "8b":
        ap.error("--small is the 8b form at hidden 256; leave it out with --shape 70b (use --layers to reduce depth)")
    full = (SMALL if a.small else SHAPES[a.shape])["num_hidden_layers"]
    if a.layers is not None and not 1 <= a.layers <= full:
        ap.error(f"--layers must be from 1 to {full}, got {a.layers}")
    if a.shard_bytes < 1:
        ap.error(f"--shard-bytes must be positive, got {a.shard_bytes}")
    return a


def build_config(shape, layers=None, small=False):
    """The config.json to write: the shape's released values, the small form's, and the reduced depth."""
    config = dict(SHAPES[shape], **(SMALL if small else {}))
    if layers is not None:
        config["num_hidden_layers"] = layers
    return config


def shard_file(k, n):
    return f"model-{k + 1:05d}-of-{n:05d}.safetensors"


def planned_files(config, shard_bytes):
    """(file name, tensor specs, bytes) of every safetensors file, in writing order."""
    shards = plan_shards(tensor_specs(config), shard_bytes)
    return [(shard_file(k, len(shards)), group, sum(2 * _numel(s[1]) for s in group)) for k, group in enumerate(shards)]


def free_bytes(outdir):
    """Free bytes on the file system OUTDIR is (or will be) on: its nearest existing ancestor's."""
    d = os.path.abspath(outdir)
    while not os.path.exists(d):
        d = os.path.dirname(d)
    return shutil.disk_usage(d).free


def layers_that_fit(config, free):
    """The most layers of this shape whose checkpoint fits in `free` bytes (0 when not even the embeddings do)."""
    specs = tensor_specs(dict(config, num_hidden_layers=1))
    layer = sum(2 * _numel(s[1]) for s in specs if s[0].startswith("model.layers."))
    fixed = sum(2 * _numel(s[1]) for s in specs) - layer
    return max(0, (free - fixed) // layer)


def dry_run(a, config, files):
    total = sum(b for _, _, b in files)
    print(json.dumps(config, indent=2))
    for name, group, size in files:
        print(f"make_weights: would write {name}: {len(group)} tensors, {size / 1e9:.2f} GB")
    free = free_bytes(a.outdir)
    print(f"make_weights: would write {a.outdir}: {total / 1e9:.2f} GB ({total} bytes) in {len(files)} shards; "
          f"{free / 1e9:.1f} GB free there, room for {layers_that_fit(config, free)} layers of this shape")


def written_files(outdir, config, files):
    """Files an interrupted run of this config already wrote (each is renamed into place only once complete); exits
    where OUTDIR holds part of another model (its config.json, written first, differs) or files of unknown origin."""
    config_path = os.path.join(outdir, "config.json")
    if os.path.exists(config_path):
        with open(config_path) as f:
            found = json.load(f)
        if any(found.get(k) != config[k] for k in SHAPE_KEYS):
            raise SystemExit(f"make_weights: {outdir} holds part of another model; choose another OUTDIR")
    done = [name for name, _, _ in files if os.path.exists(os.path.join(outdir, name))]
    if done and not os.path.exists(config_path):
        raise SystemExit(f"make_weights: {outdir} holds {done[0]} but no config.json: not a run of this script; choose another OUTDIR")
    return set(done)


def generate(a, config, files, done):
    """Writes the files not in `done`. Those in `done` are drawn again on the device and dropped, so that the seeded
    generator reaches the later tensors in the state an uninterrupted run would: a resumed run writes the same bytes."""
    import torch
    from safetensors.torch import save_file

    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("make_weights: torch sees no CUDA device; pass --device cpu to generate on the CPU (slow)")
    os.makedirs(a.outdir, exist_ok=True)
    # Written first, so that a resumed run can tell its own partial output from another model's.
    with open(os.path.join(a.outdir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    t0 = time.perf_counter()
    gen = torch.Generator(device=device)
    gen.manual_seed(SEED)
    weight_map, total = {}, 0
    for name, group, size in files:
        for tname, _, _ in group:
            weight_map[tname] = name
        total += size
        if name in done:
            for _, shape, is_norm in group:
                if not is_norm:
                    torch.randn(shape, generator=gen, device=device, dtype=torch.float16)
            print(f"make_weights: {name}: written by an earlier run", flush=True)
            continue
        tensors = {}
        for tname, shape, is_norm in group:
            if is_norm:
                tensors[tname] = torch.ones(shape, dtype=torch.float16)
            else:
                tensors[tname] = torch.randn(shape, generator=gen, device=device, dtype=torch.float16).mul_(STD).cpu()
        tmp = os.path.join(a.outdir, f".tmp-{name}")
        save_file(tensors, tmp, metadata={"format": "pt"})
        os.replace(tmp, os.path.join(a.outdir, name))
        print(f"make_weights: {name}: {len(tensors)} tensors, {size / 1e9:.2f} GB ({time.perf_counter() - t0:.1f} s)", flush=True)
        del tensors
    with open(os.path.join(a.outdir, "generation_config.json"), "w") as f:
        json.dump(GENERATION_CONFIG, f, indent=2)
    with open(os.path.join(a.outdir, INDEX + ".tmp"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    os.replace(os.path.join(a.outdir, INDEX + ".tmp"), os.path.join(a.outdir, INDEX))
    print(f"make_weights: wrote {a.outdir}: {total / 1e9:.2f} GB in {len(files)} shards, {time.perf_counter() - t0:.1f} s")


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    config = build_config(a.shape, a.layers, a.small)
    files = planned_files(config, a.shard_bytes)
    if a.dry_run:
        dry_run(a, config, files)
        return 0
    if existing(a.outdir, config):
        print(f"make_weights: {a.outdir} already holds the checkpoint; nothing to do")
        return 0
    done = written_files(a.outdir, config, files)
    need, free = sum(b for name, _, b in files if name not in done), free_bytes(a.outdir)
    if need > free:
        raise SystemExit(f"make_weights: {need / 1e9:.1f} GB to write, {free / 1e9:.1f} GB free at {a.outdir}; "
                         f"pass --layers {layers_that_fit(config, free)} or less")
    generate(a, config, files, done)
    return 0


if __name__ == "__main__":
    sys.exit(main())
