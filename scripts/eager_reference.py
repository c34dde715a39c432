#!/usr/bin/python3
"""Eager PyTorch reference for `peft bench --suite=perf` (issue 4's targets).

The same model and step as the C++ benchmark, written the way a user of eager
PyTorch would: a LLaMA (hidden 512, 8 layers, 8 heads, FFN 1376, vocabulary
32000, RMSNorm, RoPE, SwiGLU) with LoRA r=8 (alpha 16) on every linear
projection of the blocks, the base frozen, AdamW on the adapters, a batch of
8 sequences of 256 random tokens, next-token cross-entropy, and either bf16
CPU autocast (fp32 master weights) or fp32. It prints one JSON line with
tokens/s and the process's peak RSS, so run it once per precision in a fresh
process:

  python3 scripts/eager_reference.py --precision=bf16 --threads=2
  python3 scripts/eager_reference.py --precision=fp32 --threads=2

On a GPU machine (pip PyTorch with CUDA), --device=cuda runs the same step on
cuda:0 with CUDA bf16 autocast and reports the CUDA allocator's peak memory
(scripts/gpu_check.sh runs it beside the C++ benchmark).

Needs Debian's python3-torch (1.13.1, the same ATen as libtorch-dev);
scripts/install_deps.sh installs it. Nothing is downloaded.
"""
import argparse
import json
import math
import resource
import time

import torch
import torch.nn.functional as F


class LoraLinear(torch.nn.Module):
    def __init__(self, fin, fout, r, alpha):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(fout, fin) * 0.02, requires_grad=False)
        self.lora_A = torch.nn.Parameter(torch.randn(r, fin) / math.sqrt(fin))
        self.lora_B = torch.nn.Parameter(torch.zeros(fout, r))
        self.scale = alpha / r

    def forward(self, x):
        return F.linear(x, self.weight) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scale


class RmsNorm(torch.nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(dim), requires_grad=False)
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Block(torch.nn.Module):
    def __init__(self, c, r, alpha):
        super().__init__()
        h, f = c["hidden"], c["ffn"]
        self.heads = c["heads"]
        self.q = LoraLinear(h, h, r, alpha)
        self.k = LoraLinear(h, h, r, alpha)
        self.v = LoraLinear(h, h, r, alpha)
        self.o = LoraLinear(h, h, r, alpha)
        self.gate = LoraLinear(h, f, r, alpha)
        self.up = LoraLinear(h, f, r, alpha)
        self.down = LoraLinear(f, h, r, alpha)
        self.n1 = RmsNorm(h)
        self.n2 = RmsNorm(h)

    def forward(self, x, cos, sin, mask):
        b, t, h = x.shape
        d = h // self.heads
        y = self.n1(x)
        q = self.q(y).view(b, t, self.heads, d).transpose(1, 2)
        k = self.k(y).view(b, t, self.heads, d).transpose(1, 2)
        v = self.v(y).view(b, t, self.heads, d).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        s = (q @ k.transpose(-1, -2)) / math.sqrt(d) + mask
        a = torch.softmax(s.float(), dim=-1).to(v.dtype) @ v
        x = x + self.o(a.transpose(1, 2).reshape(b, t, h))
        y = self.n2(x)
        return x + self.down(F.silu(self.gate(y)) * self.up(y))


class Llama(torch.nn.Module):
    def __init__(self, c, r, alpha, device="cpu"):
        super().__init__()
        self.embed = torch.nn.Parameter(torch.randn(c["vocab"], c["hidden"]) * 0.02, requires_grad=False)
        self.blocks = torch.nn.ModuleList([Block(c, r, alpha) for _ in range(c["layers"])])
        self.norm = RmsNorm(c["hidden"])
        self.head = torch.nn.Parameter(torch.randn(c["vocab"], c["hidden"]) * 0.02, requires_grad=False)
        d = c["hidden"] // c["heads"]
        inv = 1.0 / (10000.0 ** (torch.arange(0, d, 2).float() / d))
        f = torch.outer(torch.arange(c["seq"]).float(), inv)
        emb = torch.cat((f, f), dim=-1)
        self.cos, self.sin = emb.cos().to(device), emb.sin().to(device)
        self.mask = torch.full((c["seq"], c["seq"]), float("-inf")).triu(1).to(device)

    def forward(self, ids):
        x = F.embedding(ids, self.embed)
        for blk in self.blocks:
            x = blk(x, self.cos, self.sin, self.mask)
        return F.linear(self.norm(x), self.head)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    a = p.parse_args()
    cuda = a.device == "cuda"
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    c = dict(vocab=32000, hidden=512, layers=8, heads=8, ffn=1376, seq=256, batch=8)
    model = Llama(c, r=8, alpha=16, device=a.device).to(a.device)
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(0, c["vocab"], (c["batch"], c["seq"] + 1)).to(a.device)
    times = []
    for step in range(a.warmup + a.steps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(a.device, dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            logits = model(ids[:, :-1])
            loss = F.cross_entropy(logits.float().reshape(-1, c["vocab"]), ids[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if step >= a.warmup:
            times.append(time.perf_counter() - t0)
    step_s = sorted(times)[len(times) // 2]
    print(json.dumps({
        "impl": "eager PyTorch " + torch.__version__,
        "precision": a.precision,
        "threads": a.threads,
        "trainable_parameters": sum(q.numel() for q in params),
        "step_s_median": step_s,
        "tokens_per_s": c["batch"] * c["seq"] / step_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "loss": loss.item(),
        "device": a.device,
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else 0,
    }))


if __name__ == "__main__":
    main()
