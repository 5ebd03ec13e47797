#!/usr/bin/env python3
"""Peer for `moex bench train-step --device cuda`: one training step (forward, backward, gradient
clipping, fused AdamW) of transformers' MixtralForCausalLM in bf16 with SDPA attention, eager and
under torch.compile, on the shapes of configs/gpu-small.json and configs/gpu-medium.json.

Prints one JSON line per (shape, mode) with the keys moex's benchmark prints: tokens_per_s,
step_ms, mfu (model FLOPs per token x tokens/s / 737e12, the same FLOP count as moex's) and
peak_mem_gib (torch.cuda.max_memory_allocated over the timed steps).

  python3 bench/peers/train_peers.py [--shape small|medium] [--mode eager|compile] [--iters N]
      [--layers L] [--checkpointing]

--layers changes the shape's depth and --checkpointing turns on transformers' gradient
checkpointing: bench/peers/largest_peer.py uses them to find the deepest model that trains.
"""
import argparse
import json
import sys
import time

import torch

from gpu_model import build_bf16_on_gpu

SHAPES = {
    "small": dict(d=1024, layers=12, ffn=2816, experts=8, top_k=2, heads=16, kv_heads=4,
                  vocab=32000, batch=8, seq=1024),
    "medium": dict(d=2048, layers=16, ffn=5632, experts=8, top_k=2, heads=16, kv_heads=8,
                   vocab=32000, batch=4, seq=2048),
}
PEAK_BF16 = 737e12  # dense bf16 GEMM rate measured on the H200 (docs/results.md)


def flops_per_token(s):
    """6 x active matmul weights + causal attention (the count moex's bench uses)."""
    dh = s["d"] // s["heads"]
    attn = s["d"] * (s["heads"] + 2 * s["kv_heads"]) * dh + s["heads"] * dh * s["d"]
    moe = s["experts"] * s["d"] + s["top_k"] * 3 * s["d"] * s["ffn"]
    active = s["vocab"] * s["d"] + s["layers"] * (attn + moe)
    return 6.0 * active + 6.0 * s["layers"] * s["seq"] * s["heads"] * dh


def run(shape, mode, iters, warmup, layers=None, checkpointing=False):
    from transformers import MixtralConfig, MixtralForCausalLM

    s = dict(SHAPES[shape])
    if layers:
        s["layers"] = layers
    config = MixtralConfig(
        vocab_size=s["vocab"], hidden_size=s["d"], intermediate_size=s["ffn"],
        num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
        num_key_value_heads=s["kv_heads"], num_local_experts=s["experts"],
        num_experts_per_tok=s["top_k"], max_position_embeddings=s["seq"], rope_theta=1e6,
        router_aux_loss_coef=0.02, output_router_logits=True, tie_word_embeddings=False,
        attn_implementation="sdpa")
    model = build_bf16_on_gpu(MixtralForCausalLM, config)
    if checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=True)
    step_fn = model if mode == "eager" else torch.compile(model)
    ids = torch.randint(0, s["vocab"], (s["batch"], s["seq"]), device="cuda")

    def step():
        out = step_fn(input_ids=ids, labels=ids)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(iters):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    step_ms = times[len(times) // 2]
    tokens = s["batch"] * s["seq"]
    tps = tokens / (step_ms / 1e3)
    fpt = flops_per_token(s)
    result = dict(bench="train-step", peer="hf_" + mode, shape=shape, layers=s["layers"],
                  checkpointing=checkpointing,
                  parameters=sum(p.numel() for p in model.parameters()), tokens=tokens,
                  step_ms=step_ms, tokens_per_s=tps, flops_per_token=fpt,
                  mfu=fpt * tps / PEAK_BF16,
                  peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30)
    del model, opt, step_fn
    torch.cuda.empty_cache()
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=list(SHAPES), action="append")
    ap.add_argument("--mode", choices=["eager", "compile"], action="append")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--layers", type=int, help="the shape with this many layers")
    ap.add_argument("--checkpointing", action="store_true", help="gradient checkpointing")
    a = ap.parse_args()
    for shape in a.shape or list(SHAPES):
        for mode in a.mode or ["eager", "compile"]:
            try:
                r = run(shape, mode, a.iters, a.warmup, a.layers, a.checkpointing)
            except Exception as e:  # report and go on with the other rows
                r = dict(bench="train-step", peer="hf_" + mode, shape=shape, error=repr(e)[:300])
            print(json.dumps(r), flush=True)


if __name__ == "__main__":
    sys.exit(main())
