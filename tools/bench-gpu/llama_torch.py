"""A plain PyTorch Llama 3 forward with a static KV cache: the peer baseline of `npm run bench:gpu`.

Written by hand (no transformers) so that what is timed is clear: RMSNorm, RoPE (with Llama 3.1 scaling when the
config has it), grouped-query attention through torch.nn.functional.scaled_dot_product_attention, SwiGLU. The
projections are fused (q|k|v and gate|up) as serving engines do. The cache is one preallocated tensor pair per layer,
`[batch, kv_heads, max_len, head_dim]`, written in place.

Two attention paths:
  * eager (`pos` a Python int): attends to the first `pos + T` cache entries (a slice, no padding read);
  * graph-safe (`pos` a one-element device tensor, T == 1): attends to the whole cache with a mask, so the step has
    static shapes and can be captured in a CUDA graph.
"""
import json
import math
import os

import torch
import torch.nn.functional as F


def _sdpa_reference(q, k, v, attn_mask=None):
    """Only for torch < 2.0 (development machines); the GPU hosts run torch 2.11, which has SDPA."""
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return torch.matmul(torch.softmax(scores.float(), dim=-1).to(q.dtype), v)


_sdpa = getattr(F, "scaled_dot_product_attention", None) or _sdpa_reference


class LlamaConfig:
    def __init__(self, path):
        with open(path) as f:
            c = json.load(f)
        if c.get("model_type") != "llama":
            raise SystemExit(f"{path}: model_type must be 'llama', found {c.get('model_type')!r}")
        self.vocab = c["vocab_size"]
        self.hidden = c["hidden_size"]
        self.inter = c["intermediate_size"]
        self.layers = c["num_hidden_layers"]
        self.heads = c["num_attention_heads"]
        self.kv_heads = c.get("num_key_value_heads", self.heads)
        self.head_dim = c.get("head_dim") or self.hidden // self.heads
        self.eps = c.get("rms_norm_eps", 1e-5)
        rope = c.get("rope_parameters") or {}
        self.rope_theta = c.get("rope_theta", rope.get("rope_theta", 10000.0))
        scaling = c.get("rope_scaling") or rope
        self.rope_scaling = scaling if scaling.get("rope_type", scaling.get("type")) == "llama3" else None
        self.tied = bool(c.get("tie_word_embeddings", False))
        if self.heads % self.kv_heads != 0:
            raise SystemExit(f"{path}: num_attention_heads {self.heads} is not a multiple of num_key_value_heads {self.kv_heads}")


def rope_tables(cfg, max_pos, device, dtype):
    """cos and sin `[max_pos, head_dim]` as transformers computes them (float32, then cast)."""
    d = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    s = cfg.rope_scaling
    if s is not None:
        factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
        old = s["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > old / low, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / high) & ~(wavelen > old / low)
        inv = torch.where(medium, smoothed, scaled)
    freqs = torch.outer(torch.arange(max_pos, dtype=torch.int64).float(), inv)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(device=device, dtype=dtype), emb.sin().to(device=device, dtype=dtype)


def load_weights(model_dir, device):
    """Every tensor of the checkpoint (single file or sharded with an index), loaded straight onto `device`."""
    from safetensors.torch import load_file

    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.exists(os.path.join(model_dir, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        raise SystemExit(f"{model_dir}: no model.safetensors.index.json or model.safetensors")
    weights = {}
    for name in files:
        weights.update(load_file(os.path.join(model_dir, name), device=str(device)))
    return weights


class Llama:
    def __init__(self, cfg, weights, device, dtype, max_pos):
        self.cfg = cfg
        self.device = device

        def take(name):
            if name not in weights:
                raise SystemExit(f"checkpoint has no tensor {name}")
            return weights.pop(name).to(dtype)

        self.embed = take("model.embed_tokens.weight")
        self.lm_head = self.embed if cfg.tied and "lm_head.weight" not in weights else take("lm_head.weight")
        self.norm = take("model.norm.weight")
        self.layers = []
        for i in range(cfg.layers):
            p = f"model.layers.{i}."
            wqkv = torch.cat([take(p + "self_attn.q_proj.weight"), take(p + "self_attn.k_proj.weight"), take(p + "self_attn.v_proj.weight")])
            wgu = torch.cat([take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")])
            self.layers.append({
                "ln1": take(p + "input_layernorm.weight"),
                "wqkv": wqkv,
                "wo": take(p + "self_attn.o_proj.weight"),
                "ln2": take(p + "post_attention_layernorm.weight"),
                "wgu": wgu,
                "wdown": take(p + "mlp.down_proj.weight"),
            })
        self.cos, self.sin = rope_tables(cfg, max_pos, device, dtype)
        self.dtype = dtype

    def new_cache(self, batch, max_len):
        c = self.cfg
        shape = (batch, c.kv_heads, max_len, c.head_dim)
        return [(torch.zeros(shape, device=self.device, dtype=self.dtype), torch.zeros(shape, device=self.device, dtype=self.dtype)) for _ in range(c.layers)]

    def _rms(self, x, w):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.cfg.eps)
        return w * xf.to(x.dtype)

    @staticmethod
    def _rope(x, cos, sin):
        # x [B, T, heads, D]; cos/sin [T, D]
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos[None, :, None, :] + rotated * sin[None, :, None, :]

    def forward(self, tokens, cache, pos, all_logits=False):
        """Logits `[B, vocab]` of the last position (or `[B, T, vocab]` with all_logits) after writing the T new
        positions' keys and values into `cache` (a list of per-layer (k, v) tensors of B rows)."""
        c = self.cfg
        B, T = tokens.shape
        H, KV, D = c.heads, c.kv_heads, c.head_dim
        G = H // KV
        eager = isinstance(pos, int)
        if eager:
            positions = torch.arange(pos, pos + T, device=self.device)
            n = pos + T
            key_pos = torch.arange(n, device=self.device)
        else:
            if T != 1:
                raise ValueError("the graph-safe path decodes one token per sequence")
            positions = pos
            n = cache[0][0].shape[2]
            key_pos = torch.arange(n, device=self.device)
        # Row r of a KV head's query block is query position positions[r // G] (heads grouped as in repeat_kv).
        # (expand + reshape, not repeat_interleave, which may synchronize and so break graph capture).
        mask = None if eager and T == 1 else key_pos[None, :] <= positions[:, None].expand(T, G).reshape(T * G, 1)
        cos, sin = self.cos[positions], self.sin[positions]
        x = F.embedding(tokens, self.embed)
        for layer, (kc, vc) in zip(self.layers, cache):
            h = self._rms(x, layer["ln1"])
            q, k, v = F.linear(h, layer["wqkv"]).split([H * D, KV * D, KV * D], dim=-1)
            q = self._rope(q.view(B, T, H, D), cos, sin)
            k = self._rope(k.view(B, T, KV, D), cos, sin).transpose(1, 2)
            v = v.view(B, T, KV, D).transpose(1, 2)
            if eager:
                kc[:, :, pos:n] = k
                vc[:, :, pos:n] = v
                keys, values = kc[:, :, :n], vc[:, :, :n]
            else:
                kc.index_copy_(2, positions, k)
                vc.index_copy_(2, positions, v)
                keys, values = kc, vc
            qg = q.view(B, T, KV, G, D).permute(0, 2, 1, 3, 4).reshape(B, KV, T * G, D)
            o = _sdpa(qg, keys, values, attn_mask=mask)
            o = o.view(B, KV, T, G, D).permute(0, 2, 1, 3, 4).reshape(B, T, H * D)
            x = x + F.linear(o, layer["wo"])
            gate, up = F.linear(self._rms(x, layer["ln2"]), layer["wgu"]).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, layer["wdown"])
        if not all_logits:
            x = x[:, -1]
        return F.linear(self._rms(x, self.norm), self.lm_head)


def load_model(model_dir, device, dtype, max_pos):
    cfg = LlamaConfig(os.path.join(model_dir, "config.json"))
    return Llama(cfg, load_weights(model_dir, device), device, dtype, max_pos)


def prompt_ids(seq, length, vocab):
    """The benchmark's deterministic prompts; run.ts's `benchPrompt` makes the same ids (ordinary-word ids below
    Llama 3's special tokens, different per sequence)."""
    limit = min(vocab, 128000)
    return [(seq * 7919 + j * 104729 + 17) % limit for j in range(length)]
