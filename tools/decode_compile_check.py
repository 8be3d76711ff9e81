"""
Does torch.compile keep the static KV-cache write of fast_decode.decode_step in place? Compiles the step
for a tiny model on the CPU (inductor's C++ backend: needs a C++ compiler, ~1 min) and checks the
generated code for a temporary as large as one layer's cache: the sign that the cache is copied every
step (what happened when the position was written through a slice view, ADR 0028).

    python tools/decode_compile_check.py          # prints "in place" or "COPIES the cache"
"""
from __future__ import annotations

import re

import torch
from torch._inductor.utils import run_and_get_code

from mini_nanochat.fast_decode import decode_step
from mini_nanochat.gpt import GPT, GPTConfig, KVCache


def main() -> None:
    cfg = GPTConfig.from_depth(1, vocab_size=128, sequence_len=64, head_dim=32, aspect_ratio=32)
    model = GPT(cfg).eval()
    cache = KVCache(1, 2, cfg.n_kv_head, 64, cfg.head_dim)
    fn = torch.compile(decode_step, dynamic=False, fullgraph=True)
    with torch.inference_mode():
        _, codes = run_and_get_code(fn, model, torch.tensor([1, 2]), cache, torch.tensor(3))
    code = "\n".join(codes)
    layer_numel = cache.k[0].numel()
    shape = "(" + ", ".join(str(s) for s in cache.k[0].shape) + ")"
    full_temps = [ln.strip() for ln in code.splitlines() if "empty_strided" in ln and shape in ln]
    loops = len(re.findall(rf"<static_cast<int64_t>\({layer_numel}L\)", code))
    print(f"one layer's cache: shape {shape}, {layer_numel} elements")
    print(f"temporaries of that shape: {len(full_temps)}; loops over that many elements: {loops}")
    print("in place" if not full_temps and not loops else "COPIES the cache every step")


if __name__ == "__main__":
    main()
