#!/usr/bin/env python3
"""Peer for `moex bench decode --device cuda --shape mixtral4l --batch 1,8,32 --tokens 64 --json`:
greedy decoding of transformers' MixtralForCausalLM with random weights, bf16, SDPA attention, on
the mixtral4l shape (tools/moex/bench_model.cpp decode_shape: vocab 32000, d 4096, 4 layers, 32/8
heads, FFN 14336, 8 experts top-2, rope_theta 1e6, untied embeddings). B sequences of a 16-token
random prompt, then greedy decoding.

  python3 bench/peers/decode_peer.py [--batch 1,8,32] [--tokens 64] [--impl compile,eager]
      [--eager-tokens 16] [--warmup 5] [--experts batched_mm[,grouped_mm]]
      [--compile-mode reduce-overhead]

Implementations (--impl, default both):
  compile  the strong peer. A StaticCache, the prompt prefilled by the model (not compiled), then a
           function decode_step(input_ids, cache_position) -> next ids (model forward + argmax of
           the last logits) under torch.compile(mode="reduce-overhead") (CUDA graphs), no
           generate() / generation_config involved. The MoE experts run on transformers' experts
           backend --experts (default batched_mm: the backend transformers itself switches to
           for decoding and the one it documents as CUDA-graph safe; grouped_mm is documented as
           not CUDA-graph safe, try it with --compile-mode max-autotune-no-cudagraphs). The
           prefill and the correctness check run on the model's default backend. Warm-up steps
           (compilation, graph capture) are not timed; ms_per_step is the wall time of --tokens
           steps between two synchronizes, over --tokens. torch._dynamo.reset() between rows.
           greedy_match: the fraction of the first 16 decoded tokens that an uncompiled forward of
           the whole sequence (no cache) also picks (random weights in bf16 have near-ties, so a
           little under 1.0 is expected; near 0 means the static-cache path is wrong).
  eager    the weak peer: model.generate(ids, max_new_tokens=N, min_new_tokens=N,
           do_sample=False) with the default (dynamic) cache and experts backend, N =
           --eager-tokens (default 16: it is slow); ms_per_step = generate's wall time / N, the
           prefill included, nothing subtracted. One short generate() first as a warm-up.

Prints one JSON line per (impl, experts, batch): bench, impl, batch, prompt_tokens, new_tokens,
ms_per_step, tokens_per_s (B / ms_per_step), floor_ms, frac_of_floor (floor_ms / ms_per_step),
bytes_per_step, copy_gbps, plus impl details. The floor is moex's: bf16 bytes of every non-expert
weight except the input embedding, the experts a batch is expected to touch (E * (1 - (1 - k/E)^B)
per layer) and the KV cache at the mean length prompt + new_tokens/2, over the copy rate measured
like moex's copy_rate (1 GiB device-to-device copies, 5 reps, read + write bytes). A row that
fails prints {"error": ...} (traceback on stderr) and the script goes on.
(Everything is bf16, so torch.backends.cuda.matmul.allow_tf32 does not matter here.)
"""
import argparse
import gc
import inspect
import json
import sys
import time
import traceback

import torch

from gpu_model import build_bf16_on_gpu

SHAPE = dict(vocab=32000, d=4096, layers=4, heads=32, kv_heads=8, ffn=14336, experts=8, top_k=2,
             rope_theta=1e6, max_seq=4096)
PROMPT = 16


# ---------------- the floor, as moex computes it (bench_model.cpp decode_one_batch) ----------------
def num_parameters(s):
    d, hd = s["d"], s["d"] // s["heads"]
    qd, kd = s["heads"] * hd, s["kv_heads"] * hd
    attn = d * (qd + 2 * kd) + qd * d
    total = s["vocab"] * d * 2 + d  # untied embedding + LM head, final RMSNorm
    for _ in range(s["layers"]):
        total += attn + 2 * d  # attention, two RMSNorms
        total += s["experts"] * d + s["experts"] * 3 * d * s["ffn"]  # router, SwiGLU experts
    return total


def floor_bytes(s, batch, new_tokens):
    per_expert = 3.0 * s["d"] * s["ffn"]
    expert_params = s["layers"] * s["experts"] * per_expert
    miss = (1.0 - s["top_k"] / s["experts"]) ** batch
    touched = s["layers"] * s["experts"] * (1.0 - miss) * per_expert
    embed = float(s["vocab"]) * s["d"]
    weights = float(num_parameters(s)) - expert_params - embed + touched
    hd = s["d"] // s["heads"]
    kv = 2.0 * s["layers"] * batch * (PROMPT + new_tokens / 2.0) * s["kv_heads"] * hd
    return (weights + kv) * 2.0  # bf16


def copy_rate(nbytes=1 << 30, reps=5):
    """Bytes/s (read + write) of device-to-device copies, as moex's copy_rate."""
    a = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    b = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    a.zero_()
    b.copy_(a)  # warm-up (pages touched)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(reps):
        if i % 2:
            a.copy_(b)
        else:
            b.copy_(a)
    torch.cuda.synchronize()
    rate = 2.0 * reps * nbytes / (time.perf_counter() - t0)
    del a, b
    torch.cuda.empty_cache()
    return rate


# ---------------- the model ----------------
def build_model():
    from transformers import MixtralConfig, MixtralForCausalLM

    s = SHAPE
    config = MixtralConfig(
        vocab_size=s["vocab"], hidden_size=s["d"], intermediate_size=s["ffn"],
        num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
        num_key_value_heads=s["kv_heads"], num_local_experts=s["experts"],
        num_experts_per_tok=s["top_k"], max_position_embeddings=s["max_seq"],
        rope_theta=s["rope_theta"], sliding_window=None, tie_word_embeddings=False,
        output_router_logits=False, router_jitter_noise=0.0, use_cache=True,
        attn_implementation="sdpa")
    # transformers 5.x keeps rope_theta in config.rope_parameters; make sure it is 1e6 either way.
    rp = getattr(config, "rope_parameters", None)
    if isinstance(rp, dict) and rp.get("rope_theta") != s["rope_theta"]:
        rp["rope_theta"] = s["rope_theta"]
    # No sliding window: the static cache's sliding layers keep a Python int (a recompile a step).
    config.sliding_window = None
    model = build_bf16_on_gpu(MixtralForCausalLM, config)
    model.eval()
    model.requires_grad_(False)
    n = sum(p.numel() for p in model.parameters())
    if n != num_parameters(s):
        print(f"decode_peer: the HF model has {n} parameters, the floor formula counts "
              f"{num_parameters(s)}", file=sys.stderr)
    return model


def get_experts(model):
    """The model's experts backend (transformers >= 5 with the experts interface), or None."""
    try:
        impl = model.get_experts_implementation()
        if isinstance(impl, dict):
            impl = impl.get("", next(iter(impl.values()), None))
        return impl
    except Exception:
        return getattr(model.config, "_experts_implementation", None)


def set_experts(model, name):
    """Switches the experts backend; returns what the model reports afterwards."""
    if name is None:
        return get_experts(model)
    if hasattr(model, "set_experts_implementation"):
        model.set_experts_implementation(name)
    else:
        model.config._experts_implementation = name
    return get_experts(model)


def forward_accepts(model, name):
    """Whether MixtralModel.forward still names `name` (transformers 5.x removed cache_position:
    the StaticCache keeps its own write position; passing it anyway would only land in **kwargs)."""
    for fn in (model.model.forward, model.forward):
        try:
            if name in inspect.signature(fn).parameters:
                return True
        except (TypeError, ValueError):
            pass
    return False


def make_static_cache(config, batch, max_len):
    """transformers 5.x: StaticCache(config=, max_cache_len=) (batch, device, dtype taken from the
    first update, extra keywords accepted and ignored); 4.4x-4.5x: max_batch_size=, device=,
    dtype=; older 4.x: batch_size=."""
    from transformers import StaticCache

    try:
        params = inspect.signature(StaticCache.__init__).parameters
    except (TypeError, ValueError):
        params = {}
    attempts = []
    if "max_batch_size" in params:
        attempts.append(dict(config=config, max_batch_size=batch, max_cache_len=max_len,
                             device="cuda", dtype=torch.bfloat16))
    if "batch_size" in params:
        attempts.append(dict(config=config, batch_size=batch, max_cache_len=max_len,
                             device="cuda", dtype=torch.bfloat16))
    attempts.append(dict(config=config, max_cache_len=max_len))
    attempts.append(dict(config=config, max_batch_size=batch, max_cache_len=max_len,
                         device="cuda", dtype=torch.bfloat16))
    last = None
    for kw in attempts:
        try:
            return StaticCache(**kw)
        except TypeError as e:
            last = e
    raise last


def prompts(batch, vocab):
    g = torch.Generator(device="cuda").manual_seed(1234 + batch)
    return torch.randint(0, vocab, (batch, PROMPT), device="cuda", generator=g)


def dynamo_graphs():
    """Graphs dynamo has compiled so far (a rise while timing means recompilation)."""
    try:
        return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
    except Exception:
        return -1


def graph_breaks():
    try:
        return int(sum(torch._dynamo.utils.counters["graph_break"].values()))
    except Exception:
        return -1


def free():
    gc.collect()
    torch.cuda.empty_cache()


def base_row(impl, batch, new_tokens, rate, ms):
    fb = floor_bytes(SHAPE, batch, new_tokens)
    floor_ms = fb / rate * 1e3
    return dict(bench="decode", impl=impl, model="mixtral4l", device=torch.cuda.get_device_name(),
                batch=batch, prompt_tokens=PROMPT,
                new_tokens=new_tokens, ms_per_step=ms, tokens_per_s=batch / (ms / 1e3),
                floor_ms=floor_ms, frac_of_floor=floor_ms / ms, bytes_per_step=fb,
                copy_gbps=rate / 1e9)


# ---------------- compile: StaticCache + torch.compile(decode_step) ----------------
def run_compile(model, batch, tokens, warmup, experts, mode, rate, default_experts):
    torch._dynamo.reset()
    try:
        torch._dynamo.utils.counters.clear()  # graph_breaks counts this row only
    except Exception:
        pass
    free()
    config = model.config
    max_len = PROMPT + 1 + warmup + tokens + 8
    cache = make_static_cache(config, batch, max_len)
    pass_cp = forward_accepts(model, "cache_position")
    ids = prompts(batch, SHAPE["vocab"])

    # Prefill, uncompiled, on the default experts backend (batched_mm would copy an expert's
    # weights for each of the B*16*k routed rows).
    set_experts(model, default_experts)
    pos = torch.arange(PROMPT, device="cuda")
    kw = dict(input_ids=ids, past_key_values=cache, position_ids=pos.unsqueeze(0).expand(batch, -1),
              use_cache=True)
    if pass_cp:
        kw["cache_position"] = pos
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = model(**kw)
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    torch.cuda.synchronize()
    prefill_ms = (time.perf_counter() - t0) * 1e3
    del out

    used = set_experts(model, experts)

    def decode_step(input_ids, cache_position):
        kw = dict(input_ids=input_ids, past_key_values=cache,
                  position_ids=cache_position.unsqueeze(0).expand(input_ids.shape[0], -1),
                  use_cache=True)
        if pass_cp:
            kw["cache_position"] = cache_position
        logits = model(**kw).logits
        return logits[:, -1].argmax(-1, keepdim=True)

    step = torch.compile(decode_step, mode=mode, fullgraph=False, dynamic=False)
    cudagraphs = mode is not None and "cudagraphs" not in mode and mode != "default"
    generated = [nxt]
    ids = nxt.clone()
    pos = torch.tensor([PROMPT], device="cuda")

    def one():
        nonlocal ids, pos
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        new = step(ids, pos)
        ids = new.clone()  # the graph's output buffer is reused by the next replay
        pos = pos + 1
        generated.append(ids)

    t0 = time.perf_counter()
    for _ in range(warmup):
        one()
    torch.cuda.synchronize()
    warmup_s = time.perf_counter() - t0
    graphs_before = dynamo_graphs()
    t0 = time.perf_counter()
    for _ in range(tokens):
        one()
    torch.cuda.synchronize()
    ms = (time.perf_counter() - t0) * 1e3 / tokens
    recompiled = dynamo_graphs() - graphs_before

    # Check: an uncompiled, cache-free forward of prompt + the first m tokens picks them too.
    set_experts(model, default_experts)
    m = min(16, len(generated))
    gen = torch.cat(generated[:m], dim=1)
    logits = model(input_ids=torch.cat([prompts(batch, SHAPE["vocab"]), gen], dim=1),
                   use_cache=False).logits
    pred = logits[:, PROMPT - 1:PROMPT - 1 + m].argmax(-1)
    match = (pred == gen).float().mean().item()
    del logits, pred

    row = base_row("hf_compile", batch, tokens, rate, ms)
    row.update(compile_mode=mode, experts=used, prefill_experts=default_experts,
               prefill_ms=prefill_ms, warmup_steps=warmup, warmup_s=warmup_s,
               max_cache_len=max_len, cache_position_passed=pass_cp, greedy_match=match,
               graph_breaks=graph_breaks(), graphs_compiled_while_timed=recompiled)
    del step, cache, generated, ids, pos
    torch._dynamo.reset()
    free()
    return row


# ---------------- eager: model.generate ----------------
def run_eager(model, batch, tokens, rate, default_experts):
    free()
    used = set_experts(model, default_experts)
    ids = prompts(batch, SHAPE["vocab"])
    attn = torch.ones_like(ids)
    kw = dict(attention_mask=attn, do_sample=False, pad_token_id=0)
    model.generate(ids, max_new_tokens=2, min_new_tokens=2, **kw)  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, **kw)
    torch.cuda.synchronize()
    ms = (time.perf_counter() - t0) * 1e3 / tokens
    produced = out.shape[1] - PROMPT
    row = base_row("hf_eager", batch, tokens, rate, ms)
    row.update(experts=used, produced_tokens=produced, timing="generate wall time / new_tokens, "
               "prefill included")
    del out
    free()
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", default="1,8,32")
    ap.add_argument("--tokens", type=int, default=64, help="timed decode steps (compile)")
    ap.add_argument("--eager-tokens", type=int, default=16, help="new tokens of generate (eager)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed compiled steps")
    ap.add_argument("--impl", default="compile,eager")
    ap.add_argument("--experts", default="batched_mm",
                    help="comma list of experts backends for the compile impl")
    ap.add_argument("--compile-mode", default="reduce-overhead")
    a = ap.parse_args()
    batches = [int(b) for b in a.batch.split(",") if b]
    impls = [i for i in a.impl.split(",") if i]
    for i in impls:
        if i not in ("compile", "eager"):
            ap.error(f"unknown --impl {i} (compile, eager)")
    if a.tokens < 2 or a.eager_tokens < 2:
        ap.error("--tokens and --eager-tokens must be >= 2")

    torch.manual_seed(0)
    import transformers
    model = build_model()
    default_experts = get_experts(model)
    if default_experts == "batched_mm":  # prefill and checks need one that does not copy weights
        default_experts = "eager"
    rate = copy_rate()
    print(f"decode_peer: torch {torch.__version__}, transformers {transformers.__version__}, "
          f"{torch.cuda.get_device_name()}, copy {rate / 1e9:.0f} GB/s, default experts "
          f"{default_experts}", file=sys.stderr, flush=True)

    for impl in impls:
        variants = [e for e in a.experts.split(",") if e] if impl == "compile" else [None]
        for experts in variants:
            for batch in batches:
                try:
                    with torch.no_grad():
                        if impl == "compile":
                            r = run_compile(model, batch, a.tokens, a.warmup, experts,
                                            a.compile_mode, rate, default_experts)
                        else:
                            r = run_eager(model, batch, a.eager_tokens, rate, default_experts)
                except Exception as e:  # report and go on with the other rows
                    traceback.print_exc()
                    r = dict(bench="decode", impl="hf_" + impl, batch=batch, experts=experts,
                             error=repr(e)[:400])
                print(json.dumps(r), flush=True)
                if "error" in r:  # out of the except block: the failed frames are gone
                    try:
                        torch._dynamo.reset()
                        set_experts(model, default_experts)
                    except Exception:
                        pass
                    free()


if __name__ == "__main__":
    sys.exit(main())
