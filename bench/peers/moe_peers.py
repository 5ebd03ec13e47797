#!/usr/bin/env python3
"""PyTorch peers for `moex bench moe-layer --device cuda`, written from each project's documented
behaviour, timed the same way (CUDA events, warm-up, median), bf16 activations and weights:

  deepspeed   DeepSpeed-MoE's algorithm as in deepspeed/moe/sharded_moe.py: fp32 gate, top-k gating
              with capacity (position order, top-2 style: first choices before second), one-hot
              [T,E,C] dispatch/combine tensors used through einsum, a Python loop over experts.
  grouped_mm  a sort-based dropless layer on torch._grouped_mm (torchtitan-style: routes sorted by
              expert, each group padded to 16 rows, un-permute by index_add).
  hf_mixtral  transformers' MixtralSparseMoeBlock (SwiGLU shapes only).
  torch_dense a dense FFN over T*k rows with the same FLOPs.

Prints one JSON object per line: shape, mode, peer, fwd_ms, fwdbwd_ms, fwd_tflops, fwdbwd_tflops,
dense_fwdbwd_tflops (the latter from torch_dense in the same process).
"""
import argparse
import json
import math
import sys

import torch
import torch.nn.functional as F

from timing import median_ms

SHAPES = {
    "mixtral": dict(T=8192, d=4096, ffn=14336, E=8, k=2, act="swiglu"),
    "finegrained": dict(T=8192, d=2048, ffn=1408, E=64, k=6, act="swiglu"),
    "gshard": dict(T=8192, d=2048, ffn=8192, E=16, k=2, act="gelu"),
}
DEV = "cuda"
DT = torch.bfloat16


def expert_flops(s, routed):
    mats = 3 if s["act"] == "swiglu" else 2
    return 2.0 * routed * s["d"] * s["ffn"] * mats


def act_fn(s, h):
    if s["act"] == "swiglu":
        g, u = h.chunk(2, dim=-1)
        return F.silu(g) * u
    return F.gelu(h, approximate="tanh")


class Weights:
    def __init__(self, s):
        E, d, f = s["E"], s["d"], s["ffn"]
        f1 = 2 * f if s["act"] == "swiglu" else f
        g = torch.Generator(device=DEV).manual_seed(0)
        self.wg = ((torch.rand(E, d, device=DEV, generator=g) * 2 - 1) / math.sqrt(d)).requires_grad_()
        self.w1 = ((torch.rand(E, f1, d, device=DEV, generator=g) * 2 - 1) / math.sqrt(d)).to(DT).requires_grad_()
        self.w2 = ((torch.rand(E, d, f, device=DEV, generator=g) * 2 - 1) / math.sqrt(f)).to(DT).requires_grad_()


# ---------------- (a) DeepSpeed's algorithm ----------------
def deepspeed_moe(s, W, x, state):
    T, E, k = s["T"], s["E"], s["k"]
    logits = F.linear(x.float(), W.wg)  # fp32 gate, as TopKGate (wg in fp32)
    gates = F.softmax(logits, dim=1)
    capacity = max(4, math.ceil(T / E * 1.0 * k))
    topk_idx = torch.topk(gates, k, dim=1).indices  # [T,k]
    masks = [F.one_hot(topk_idx[:, j], E) for j in range(k)]  # each [T,E]
    # aux loss (top-2 form: first choices)
    me = gates.mean(0)
    ce = masks[0].float().mean(0)
    l_aux = (me * ce).mean() * E * E
    locs, base = [], torch.zeros(E, device=DEV, dtype=torch.long)
    for m in masks:  # first choices before second choices (top2gating: locations2 += sum(mask1))
        loc = torch.cumsum(m, dim=0) - 1 + base
        base = base + m.sum(0)
        locs.append(loc)
    masks = [m * torch.lt(l, capacity) for m, l in zip(masks, locs)]
    gate_vals = [(gates * m).sum(1) for m in masks]
    denom = torch.clamp(sum(gate_vals), min=torch.finfo(gates.dtype).eps)
    combine = 0
    for m, l, gv in zip(masks, locs, gate_vals):
        loc_s = (l * m).sum(1)
        loc_sc = F.one_hot(loc_s, capacity).to(gates.dtype)
        combine = combine + torch.einsum("se,sc->sec", (gv / denom).unsqueeze(1) * m.to(gates.dtype), loc_sc)
    dispatch = combine.bool()
    state["kept"] = int(sum(int(m.sum()) for m in masks)) if "kept" not in state else state["kept"]
    dispatched = torch.einsum("sec,sm->ecm", dispatch.type_as(x), x)  # [E,C,d]
    outs = []
    for e in range(E):  # DeepSpeed's Experts: a loop over local experts
        h = dispatched[e] @ W.w1[e].t()
        outs.append(act_fn(s, h) @ W.w2[e].t())
    out = torch.stack(outs)
    y = torch.einsum("sec,ecm->sm", combine.type_as(x), out)
    return y, l_aux


# ---------------- (b) sort-based dropless on torch._grouped_mm ----------------
ALIGN = 16


def grouped_mm_moe(s, W, x, state):
    T, E, k, d = s["T"], s["E"], s["k"], s["d"]
    logits = F.linear(x.float(), W.wg)
    probs = F.softmax(logits, dim=1)
    topv, topi = torch.topk(probs, k, dim=1)
    flat = topi.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=E)
    padded = (counts + ALIGN - 1) // ALIGN * ALIGN
    pad_off = torch.cumsum(padded, 0) - padded
    off = torch.cumsum(counts, 0) - counts
    sorted_e = flat[order]
    dest = pad_off[sorted_e] + (torch.arange(T * k, device=DEV) - off[sorted_e])
    max_rows = T * k + E * ALIGN
    xs = x.new_zeros(max_rows, d)
    xs = xs.index_copy(0, dest, x[order // k])
    offs = torch.cumsum(padded, 0).to(torch.int32)
    h = torch._grouped_mm(xs, W.w1.transpose(-2, -1), offs=offs)
    a = act_fn(s, h)
    o = torch._grouped_mm(a, W.w2.transpose(-2, -1), offs=offs)
    o_routes = o[dest] * topv.reshape(-1)[order].unsqueeze(1).to(o.dtype)
    y = torch.zeros(T, d, device=DEV, dtype=x.dtype).index_add(0, order // k, o_routes)
    state["kept"] = T * k
    return y, None


# ---------------- (c) transformers' MixtralSparseMoeBlock ----------------
def make_hf_block(s):
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    cfg = MixtralConfig(hidden_size=s["d"], intermediate_size=s["ffn"], num_local_experts=s["E"],
                        num_experts_per_tok=s["k"], router_jitter_noise=0.0)
    block = MixtralSparseMoeBlock(cfg).to(DEV, DT)
    with torch.no_grad():
        for p in block.parameters():
            p.uniform_(-1.0 / math.sqrt(s["d"]), 1.0 / math.sqrt(s["d"]))
    block.train()
    return block


def time_peer(s, name, fwd):
    T, d = s["T"], s["d"]
    g = torch.Generator(device=DEV).manual_seed(1)
    x = (torch.rand(T, d, device=DEV, generator=g) * 2 - 1).to(DT).requires_grad_()
    dy = (torch.rand(T, d, device=DEV, generator=g) * 2 - 1).to(DT)
    state = {}

    def f_only():
        fwd(x, state)

    def f_b():
        y, aux = fwd(x, state)
        loss = (y.float() * dy.float()).sum()
        if aux is not None:
            loss = loss + 0.01 * aux
        loss.backward()

    fwd_ms = median_ms(f_only)
    fb_ms = median_ms(f_b)
    routed = state.get("kept", T * s["k"])
    fl = expert_flops(s, routed)
    return dict(peer=name, fwd_ms=round(fwd_ms, 4), fwdbwd_ms=round(fb_ms, 4),
                fwd_tflops=round(fl / fwd_ms / 1e9, 2), fwdbwd_tflops=round(3 * fl / fb_ms / 1e9, 2))


def dense_tflops(s):
    rows = s["T"] * s["k"]
    f1 = 2 * s["ffn"] if s["act"] == "swiglu" else s["ffn"]
    x = (torch.rand(rows, s["d"], device=DEV) * 2 - 1).to(DT).requires_grad_()
    w1 = (torch.rand(f1, s["d"], device=DEV) * 0.02).to(DT).requires_grad_()
    w2 = (torch.rand(s["d"], s["ffn"], device=DEV) * 0.02).to(DT).requires_grad_()
    dy = (torch.rand(rows, s["d"], device=DEV) * 2 - 1).to(DT)

    def fb():
        y = act_fn(s, x @ w1.t()) @ w2.t()
        y.backward(dy)

    ms = median_ms(fb)
    return 3 * expert_flops(s, rows) / ms / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", action="append", default=None)
    ap.add_argument("--peer", action="append", default=None)
    args = ap.parse_args()
    shapes = args.shape or list(SHAPES)
    peers = args.peer or ["deepspeed", "grouped_mm", "hf_mixtral"]
    torch.backends.cuda.matmul.allow_tf32 = False
    for name in shapes:
        s = SHAPES[name]
        dense = dense_tflops(s)
        torch.cuda.empty_cache()
        for peer in peers:
            try:
                if peer == "deepspeed":
                    W = Weights(s)
                    r = time_peer(s, peer, lambda x, st: deepspeed_moe(s, W, x, st))
                    mode = "capacity"
                elif peer == "grouped_mm":
                    W = Weights(s)
                    r = time_peer(s, peer, lambda x, st: grouped_mm_moe(s, W, x, st))
                    mode = "dropless"
                else:
                    if s["act"] != "swiglu":
                        continue
                    block = make_hf_block(s)

                    def hf(x, st):
                        out = block(x.unsqueeze(0))
                        y = out[0] if isinstance(out, tuple) else out
                        return y.squeeze(0), None
                    r = time_peer(s, peer, hf)
                    mode = "dropless"
                r = dict(shape=name, mode=mode, **r, dense_fwdbwd_tflops=round(dense, 2))
                print(json.dumps(r), flush=True)
            except Exception as exc:  # a peer that cannot run is reported, not fatal
                print(json.dumps(dict(shape=name, peer=peer, error=repr(exc)[:300])), flush=True)
            finally:
                W = None
                block = None
                torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
