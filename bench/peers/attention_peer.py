#!/usr/bin/env python3
"""PyTorch peer for moex_bench_attention: torch.nn.functional.scaled_dot_product_attention,
causal, bf16, on the same shapes, timed the same way (CUDA events, warm-up, median of 20).

torch wants [B, H, T, Dh] (moex stores [B, T, H, Dh]); the tensors are made in torch's layout, so
no transpose is timed. Two GQA variants:
  torch_sdpa           enable_gqa=True with k/v of Hkv heads (the call a GQA model makes);
  torch_sdpa_expanded  k/v repeated to H heads beforehand (not timed), enable_gqa=False: the
                       fused kernels' plain MHA path, in case GQA sends torch to a slower backend.
The backend is read off the kernel names of one profiled call (flash / cudnn / efficient / math).

Prints one JSON object per line: shape, impl, backend, fwd_ms, fwdbwd_ms, fwd_tflops,
fwdbwd_tflops (causal FLOPs: fwd = 2*2*B*H*T*T*Dh/2, bwd = 2.5 x fwd).
"""
import json

import torch
import torch.nn.functional as F

from timing import median_ms

SHAPES = [
    dict(shape="small", B=8, T=1024, H=16, Hkv=4, Dh=64),
    dict(shape="medium", B=4, T=2048, H=16, Hkv=8, Dh=128),
]


def backend_of(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = " ".join(e.key for e in prof.key_averages()).lower()
    for tag, key in (("cudnn", "cudnn"), ("flash", "flash"), ("efficient", "fmha"),
                     ("efficient", "efficient"), ("cudnn", "sm90")):
        if key in names:
            return tag
    return "math?"


def run(s, expanded):
    B, T, H, Hkv, Dh = s["B"], s["T"], s["H"], s["Hkv"], s["Dh"]
    g = torch.Generator(device="cuda").manual_seed(0)
    q = (torch.rand(B, H, T, Dh, device="cuda", generator=g) * 2 - 1).bfloat16()
    k = (torch.rand(B, Hkv, T, Dh, device="cuda", generator=g) * 2 - 1).bfloat16()
    v = (torch.rand(B, Hkv, T, Dh, device="cuda", generator=g) * 2 - 1).bfloat16()
    if expanded:
        k = k.repeat_interleave(H // Hkv, dim=1).contiguous()
        v = v.repeat_interleave(H // Hkv, dim=1).contiguous()
    q.requires_grad_(True)
    k.requires_grad_(True)
    v.requires_grad_(True)
    dout = (torch.rand(B, H, T, Dh, device="cuda", generator=g) * 2 - 1).bfloat16()
    gqa = not expanded

    def fwd():
        with torch.no_grad():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)

    def fwdbwd():
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        out.backward(dout)

    fwd_ms = median_ms(fwd, warmup=5)
    fwdbwd_ms = median_ms(fwdbwd, warmup=5)
    flops = 2.0 * 2.0 * B * H * T * T * Dh / 2.0
    print(json.dumps(dict(
        shape=s["shape"], impl="torch_sdpa_expanded" if expanded else "torch_sdpa",
        backend=backend_of(fwdbwd), B=B, T=T, H=H, Hkv=Hkv, Dh=Dh, layout="[B,H,T,Dh]",
        fwd_ms=round(fwd_ms, 4), fwdbwd_ms=round(fwdbwd_ms, 4),
        fwd_tflops=round(flops / (fwd_ms * 1e9), 1),
        fwdbwd_tflops=round(3.5 * flops / (fwdbwd_ms * 1e9), 1))), flush=True)


# Serving prefill (moex_bench_attention's "prefill" lines): rows at positions [first, first + rows)
# of one sequence, forward only. A chunk after cached keys takes the lower-right causal mask
# (torch.nn.attention.bias.causal_lower_right), the mask moex's paged rows follow.
PREFILL = [("prompt2k", 0, 2048), ("prompt8k", 0, 8192), ("chunk512at8k", 7680, 512),
           ("chunk64at4k", 4032, 64), ("chunk16at4k", 4080, 16), ("chunk8at4k", 4088, 8)]


def run_prefill(name, first, rows, H=32, Hkv=8, Dh=128):
    from torch.nn.attention.bias import causal_lower_right
    g = torch.Generator(device="cuda").manual_seed(0)
    q = (torch.rand(1, H, rows, Dh, device="cuda", generator=g) * 2 - 1).bfloat16()
    k = (torch.rand(1, Hkv, first + rows, Dh, device="cuda", generator=g) * 2 - 1).bfloat16()
    v = (torch.rand(1, Hkv, first + rows, Dh, device="cuda", generator=g) * 2 - 1).bfloat16()

    def fwd():
        with torch.no_grad():
            if first == 0:
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=causal_lower_right(rows, first + rows), enable_gqa=True)

    fwd_ms = median_ms(fwd, warmup=5)
    keys = sum(first + r + 1 for r in range(rows))
    print(json.dumps(dict(
        prefill=True, shape=name, impl="torch_sdpa", backend=backend_of(fwd), first=first,
        rows=rows, H=H, Hkv=Hkv, Dh=Dh, fwd_ms=round(fwd_ms, 4),
        fwd_tflops=round(2.0 * 2.0 * H * Dh * keys / (fwd_ms * 1e9), 1))), flush=True)


def main():
    print(json.dumps(dict(torch=torch.__version__, device=torch.cuda.get_device_name())),
          flush=True)
    for s in SHAPES:
        for expanded in (False, True):
            run(s, expanded)
    for name, first, rows in PREFILL:
        try:
            run_prefill(name, first, rows)
        except Exception as e:  # a backend without this mask: say so, keep the other lines
            print(json.dumps(dict(prefill=True, shape=name, impl="torch_sdpa", error=str(e))),
                  flush=True)


if __name__ == "__main__":
    main()
