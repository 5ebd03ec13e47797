#!/usr/bin/env python3
"""Step time and memory per GPU of MoE training on 8-512 H200s, modelled from one GPU.

A model, not a measurement: it scales the one-GPU step of docs/results.md (moex, small shape,
one H200) to other shapes and layouts and adds the communication of the TED layout
(docs/parallelism.md) at the bandwidths below. docs/scaling.md explains every input, says which
are assumptions, and shows the output. Standard library only:

    python3 bench/scaling_model.py            # the tables of docs/scaling.md (markdown)
    python3 bench/scaling_model.py --json     # one JSON line per row
"""
import argparse
import json
from dataclasses import dataclass, replace

GIB = 1024**3

# ---- measured: docs/results.md run h, one H200, moex bf16 with bf16 Adam moments, small shape,
# 8 x 1024 tokens: `moex bench train-step --config configs/gpu-small.json --moments-dtype bf16
# --warmup 10 --json`, its op_ms (CUDA events around each op; they sum to 46.7 ms of a 45.9 ms
# step, the events' own cost included).
MEASURED_MS = {
    "moe_fwd": 8.3,      # 12 MoE layers: router, gating, permute, expert GEMMs, weight upload
    "moe_bwd": 16.1,
    "moe_misc": 0.0,     # (the statistics copy and casts are inside the two above)
    "attention": 5.6,    # forward 1.2 + backward 4.3
    "dense": 5.0,        # QKV, O, LM head GEMMs, forward + backward
    "other": 4.6,        # norms, RoPE, residual adds, QKV split, cross-entropy, embedding
    "gaps": 0.0,         # launch gaps: hidden (the host runs ahead of the GPU)
    "adamw": 5.4,        # one pass over 928 M parameters (memory-bound, bf16 moments)
    "grad_norm": 1.7,    # with zero_grad: two passes over the fp32 gradients
}
MEASURED_PARAMS = 927.6e6
MEASURED_PEAK_GIB = 19.69
MEASURED_TOKENS = 8 * 1024
# Bytes of both Adam moments a parameter: 4 with optimizer.moments_dtype "bf16" (measured above),
# 8 with fp32 moments.
MOMENT_BYTES = 4

# ---- hardware: cited, see docs/scaling.md ------------------------------------------------------
GPUS_PER_NODE = 8          # NVIDIA DGX H200 (8 GPUs on NVSwitch)
HBM_GIB = 139.0            # H200 141 GB; 139 GiB usable as measured (docs/results.md)
HOST_GIB_PER_GPU = 2048 / 8 * 1e9 / GIB  # DGX H200: 2 TB system memory per node
NVLINK_GBS = 450.0         # NVLink 4 via NVSwitch: 900 GB/s per GPU, 450 GB/s each direction
IB_GBS = 50.0              # one ConnectX-7 NDR 400 Gb/s port per GPU
HOST_DRAM_GBS = 2 * 307.0 / 8  # DGX H200: 2 Xeon 8480C, 8 DDR5-4800 channels each, per GPU
PCIE_GBS = 64.0            # PCIe Gen5 x16, each direction
# ---- assumptions (docs/scaling.md) -------------------------------------------------------------
A2A_EFFICIENCY = 0.6       # share of the link an all-to-all reaches (NCCL alltoall busbw)
RING_EFFICIENCY = 0.8      # share of the link a ring all-reduce / reduce-scatter reaches
MEMORY_HEADROOM = 0.9      # share of HBM a run may plan to use (fragmentation, workspaces)
HOST_EFFICIENCY = 0.5      # share of DRAM and PCIe bandwidth CPU Adam and the copies reach
# per parameter: read master, moments, grad; write master, moments (28 with fp32 moments)
CPU_ADAM_BYTES = 4 + MOMENT_BYTES + 4 + 4 + MOMENT_BYTES
# fp32 master and the moments: what ZeRO-1 shards
MASTER_MOMENT_BYTES = 4 + MOMENT_BYTES
# everything a parameter costs on one GPU without ZeRO: bf16 copy, master, moments, fp32 gradient
STATE_BYTES = 2 + MASTER_MOMENT_BYTES + 4


@dataclass(frozen=True)
class Shape:
    name: str
    d: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int          # expert FFN width (SwiGLU: 3 matrices)
    experts: int
    top_k: int = 2
    vocab: int = 32000
    seq: int = 1024

    def expert_params(self):
        return self.layers * self.experts * 3 * self.d * self.ffn

    def non_expert_params(self):
        head_dim = self.d // self.heads
        attn = 2 * self.d * self.d + 2 * self.d * self.kv_heads * head_dim
        router = self.experts * self.d
        return self.layers * (attn + router + 2 * self.d) + 2 * self.vocab * self.d

    def params(self):
        return self.expert_params() + self.non_expert_params()


SMALL = Shape("small (measured)", d=1024, layers=12, heads=16, kv_heads=4, ffn=2816, experts=8)
MIXTRAL = Shape("mixtral-like", d=4096, layers=32, heads=32, kv_heads=8, ffn=14336, experts=8)


@dataclass(frozen=True)
class Layout:
    gpus: int
    tp: int = 1
    ep: int = 1
    zero: int = 0          # 0, 1 or 2 (DeepSpeed's: master and moments, and at 2 the gradients)
    offload: bool = False  # ZeRO-Offload: master, m, v and fp32 gradients in host memory
    dtd: bool = False      # Duplicate Token Dropping
    cac: bool = False      # communication-aware activation checkpointing
    checkpointing: bool = False

    @property
    def dp(self):
        return self.gpus // self.tp

    @property
    def edp(self):
        return self.dp // self.ep


def span_nodes(stride, size):
    """True when a group of `size` ranks spaced `stride` apart leaves one node."""
    return stride * size > GPUS_PER_NODE


def ring_ms(bytes_per_rank, size, inter_node, passes):
    """A ring collective: passes = 2 for an all-reduce, 1 for reduce-scatter or all-gather."""
    if size == 1:
        return 0.0
    bw = (IB_GBS if inter_node else NVLINK_GBS) * RING_EFFICIENCY
    return passes * (size - 1) / size * bytes_per_rank / (bw * 1e9) * 1e3


def all_to_all_ms(bytes_per_rank, layout):
    """bytes_per_rank leave each rank, 1/ep to every ep peer; NVLink and IB carry their parts at
    once, so the slower part sets the time."""
    ep, tp = layout.ep, layout.tp
    if ep == 1:
        return 0.0
    on_node = min(ep, max(1, GPUS_PER_NODE // tp))  # ep peers on this node, self included
    intra = bytes_per_rank * (on_node - 1) / ep
    inter = bytes_per_rank * (ep - on_node) / ep
    return max(intra / NVLINK_GBS, inter / IB_GBS) / A2A_EFFICIENCY / 1e9 * 1e3


def compute_ms(shape, layout):
    """The measured step scaled by each part's FLOPs (or bytes) ratio to the small shape."""
    s, m = SMALL, MEASURED_MS
    expert = shape.top_k * shape.layers * shape.d * shape.ffn / (s.top_k * s.layers * s.d * s.ffn)
    attn = shape.layers * shape.d * shape.seq / (s.layers * s.d * s.seq)
    dense = (shape.non_expert_params() / s.non_expert_params())
    other = shape.layers * shape.d / (s.layers * s.d)
    # Without DTD every tp rank routes the whole micro-batch, so each token reaches its experts
    # tp times; DTD sends 1/tp of it from each rank.
    moe_share = 1 / layout.tp if layout.dtd else 1.0
    fwd = m["moe_fwd"] * expert * moe_share + (m["attention"] / 3 * attn + m["dense"] / 3 * dense) / layout.tp
    parts = {
        "moe": (m["moe_fwd"] + m["moe_bwd"] + m["moe_misc"]) * expert * moe_share,
        "attention_dense": (m["attention"] * attn + m["dense"] * dense) / layout.tp,
        "other": m["other"] * other + m["gaps"] * shape.layers / s.layers,
        # Activation checkpointing runs every block's forward again in backward (about a third
        # of the forward + backward attention and dense time is forward).
        "recompute": fwd if layout.checkpointing else 0.0,
    }
    return parts


def state_params_per_gpu(shape, layout):
    """(non-expert, expert) parameters a GPU holds weights of."""
    return shape.non_expert_params() / layout.tp, shape.expert_params() / layout.ep


def communication_ms(shape, layout):
    tokens = MEASURED_TOKENS  # per tp group
    act = tokens * shape.top_k * shape.d * 2  # bf16 rows a rank routes per all-to-all
    sent = act / layout.tp if layout.dtd else act
    # dispatch + combine, forward and backward; repeated when a block is recomputed unless CAC
    # reuses the saved outputs.
    count = 4 + (2 if layout.checkpointing and not layout.cac else 0)
    a2a = shape.layers * count * all_to_all_ms(sent, layout)
    tp_ms = 0.0
    if layout.tp > 1:
        hidden = tokens * shape.d * 2
        tp_count = 4 + (2 if layout.checkpointing else 0)  # Megatron: 2 forward, 2 backward
        tp_ms = shape.layers * tp_count * ring_ms(hidden, layout.tp, False, 2)
        if layout.dtd:  # the all-gather that restores the tp group's buffer (and its backward)
            tp_ms += shape.layers * 2 * ring_ms(act, layout.tp, False, 1)
    ne, ex = state_params_per_gpu(shape, layout)
    dp_inter = span_nodes(layout.tp, layout.dp)
    edp_inter = span_nodes(layout.tp * layout.ep, layout.edp)
    if layout.zero >= 2:  # reduce-scatter fp32 gradients, all-gather bf16 weights
        grads = (ring_ms(ne * 4, layout.dp, dp_inter, 1) + ring_ms(ne * 2, layout.dp, dp_inter, 1) +
                 ring_ms(ex * 4, layout.edp, edp_inter, 1) + ring_ms(ex * 2, layout.edp, edp_inter, 1))
    else:  # all-reduce fp32 gradients (ZeRO-1 adds the weight all-gather)
        grads = ring_ms(ne * 4, layout.dp, dp_inter, 2) + ring_ms(ex * 4, layout.edp, edp_inter, 2)
        if layout.zero == 1:
            grads += ring_ms(ne * 2, layout.dp, dp_inter, 1) + ring_ms(ex * 2, layout.edp, edp_inter, 1)
    return {"all_to_all": a2a, "tp_collectives": tp_ms, "gradients": grads}


def optimizer_ms(shape, layout):
    ne, ex = state_params_per_gpu(shape, layout)
    shard = ne / (layout.dp if layout.zero else 1) + ex / (layout.edp if layout.zero else 1)
    if layout.offload:
        # CPU Adam over the shard at the host's memory bandwidth, plus bf16 gradients down and
        # bf16 weights up over PCIe; not overlapped with the GPU's work.
        adam = shard * CPU_ADAM_BYTES / (HOST_DRAM_GBS * HOST_EFFICIENCY * 1e9)
        pcie = 2 * shard * 2 / (PCIE_GBS * HOST_EFFICIENCY * 1e9)
        return (adam + pcie) * 1e3
    per_param = (MEASURED_MS["adamw"] + MEASURED_MS["grad_norm"]) / MEASURED_PARAMS
    return shard * per_param


def step(shape, layout):
    parts = compute_ms(shape, layout)
    parts.update(communication_ms(shape, layout))
    parts["optimizer"] = optimizer_ms(shape, layout)
    total = sum(parts.values())
    tokens_per_gpu_s = MEASURED_TOKENS / layout.tp / (total / 1e3)
    return total, parts, tokens_per_gpu_s


def activation_gib(shape, layout):
    """Fitted to the measured small step: its peak minus its STATE_BYTES a parameter of state is
    the activations and MoE buffers of 8 x 1024 tokens, taken as proportional to layers x d."""
    s = SMALL
    alpha = (MEASURED_PEAK_GIB * GIB - STATE_BYTES * MEASURED_PARAMS) / (
        MEASURED_TOKENS * s.layers * s.d)
    per_layer = alpha * MEASURED_TOKENS * shape.d / layout.tp
    if layout.checkpointing:  # each block's bf16 input, plus one block's activations at a time
        return (MEASURED_TOKENS * shape.d * 2 * shape.layers + per_layer) / GIB
    return per_layer * shape.layers / GIB


def memory_gib(shape, layout):
    """(GPU GiB, host GiB) per GPU."""
    ne, ex = state_params_per_gpu(shape, layout)
    dp, edp = layout.dp, layout.edp

    def sharded(bytes_per_param, stage):
        if layout.zero >= stage:
            return bytes_per_param * (ne / dp + ex / edp)
        return bytes_per_param * (ne + ex)

    weights = 2 * (ne + ex)            # bf16 working copy
    master_moments = sharded(MASTER_MOMENT_BYTES, 1)  # fp32 master, m, v
    grads = sharded(4, 2)              # fp32 gradients
    host = 0.0
    if layout.offload:
        host = master_moments + grads
        gpu_state = weights + 2 * (ne + ex)  # bf16 gradients before the copy to the host
    else:
        gpu_state = weights + master_moments + grads
    return gpu_state / GIB + activation_gib(shape, layout), host / GIB


def fits(shape, layout):
    gpu, host = memory_gib(shape, layout)
    return gpu <= HBM_GIB * MEMORY_HEADROOM and host <= HOST_GIB_PER_GPU * MEMORY_HEADROOM


def layouts(gpus, experts, **flags):
    for tp in (1, 2, 4, 8):
        if gpus % tp:
            continue
        ep = 1
        while ep <= gpus // tp:
            if experts % ep == 0:
                yield Layout(gpus, tp=tp, ep=ep, **flags)
            ep *= 2


def largest_model(gpus, base, **flags):
    """The most experts per layer (a power of two) for which some layout fits."""
    best = None
    experts = 8
    while experts <= 8192:
        shape = replace(base, experts=experts)
        fitting = [l for l in layouts(gpus, experts, checkpointing=True, cac=True, dtd=True, **flags)
                   if fits(shape, l)]
        if not fitting:
            break
        # Among layouts that fit, the fastest.
        best = (shape, min(fitting, key=lambda l: step(shape, l)[0]))
        experts *= 2
    return best


GPU_COUNTS = (8, 16, 32, 64, 128, 256, 512)


def dtd_cac_rows(shape, experts_per_gpu):
    """Step time of one layout per GPU count with DTD and CAC off and on."""
    rows = []
    for gpus in GPU_COUNTS:
        tp = 4
        ep = gpus // tp
        s = replace(shape, experts=experts_per_gpu * ep)
        for dtd, cac in ((False, False), (True, False), (False, True), (True, True)):
            layout = Layout(gpus, tp=tp, ep=ep, zero=2, checkpointing=True, dtd=dtd, cac=cac)
            total, parts, tps = step(s, layout)
            rows.append({"gpus": gpus, "tp": tp, "ep": ep, "experts": s.experts,
                         "params_b": s.params() / 1e9, "dtd": dtd, "cac": cac,
                         "step_ms": total, "tokens_per_gpu_s": tps,
                         **{k + "_ms": v for k, v in parts.items()}})
    return rows


def memory_rows(base):
    rows = []
    for gpus in GPU_COUNTS:
        for name, flags in (("no ZeRO", {"zero": 0}), ("ZeRO-2", {"zero": 2}),
                            ("ZeRO-2 + offload", {"zero": 2, "offload": True})):
            best = largest_model(gpus, base, **flags)
            if best is None:
                rows.append({"gpus": gpus, "config": name, "params_b": 0})
                continue
            shape, layout = best
            gpu, host = memory_gib(shape, layout)
            total, parts, tps = step(shape, layout)
            rows.append({"gpus": gpus, "config": name, "experts": shape.experts,
                         "params_b": shape.params() / 1e9, "tp": layout.tp, "ep": layout.ep,
                         "gpu_gib": gpu, "host_gib": host, "step_ms": total,
                         "optimizer_ms": parts["optimizer"], "tokens_per_gpu_s": tps})
    return rows


def check_calibration():
    """The model must give back the measured step for the measured shape on one GPU."""
    total, parts, _ = step(SMALL, Layout(1))
    measured = sum(MEASURED_MS.values())
    assert abs(total - measured) / measured < 0.05, (total, measured)
    gpu, _ = memory_gib(SMALL, Layout(1))
    assert abs(gpu - MEASURED_PEAK_GIB) / MEASURED_PEAK_GIB < 0.05, (gpu, MEASURED_PEAK_GIB)
    return total, gpu


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="one JSON line per row")
    args = ap.parse_args()
    total, gpu = check_calibration()
    small_rows = dtd_cac_rows(SMALL, experts_per_gpu=2)
    mixtral_rows = dtd_cac_rows(MIXTRAL, experts_per_gpu=1)
    mem = memory_rows(MIXTRAL)
    if args.json:
        for r in small_rows + mixtral_rows + mem:
            print(json.dumps(r))
        return
    print(f"calibration: small shape on 1 GPU {total:.1f} ms (measured {sum(MEASURED_MS.values()):.1f}),"
          f" {gpu:.1f} GiB (measured {MEASURED_PEAK_GIB})\n")
    for title, rows in (("small shape", small_rows), ("mixtral-like shape", mixtral_rows)):
        print(f"### Step time, {title}: tp 4, ep = GPUs / 4, ZeRO-2, activation checkpointing\n")
        print("| GPUs | experts | params (B) | DTD | CAC | step ms | all-to-all ms | tp coll. ms "
              "| MoE compute ms | grads ms | tokens/s per GPU |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['gpus']} | {r['experts']} | {r['params_b']:.1f} | {'on' if r['dtd'] else 'off'} "
                  f"| {'on' if r['cac'] else 'off'} | {r['step_ms']:.1f} | {r['all_to_all_ms']:.1f} "
                  f"| {r['tp_collectives_ms']:.1f} | {r['moe_ms']:.1f} | {r['gradients_ms']:.1f} "
                  f"| {r['tokens_per_gpu_s']:,.0f} |")
        print()
    print("### Largest mixtral-like model (experts per layer, powers of two) per GPU count\n")
    print("| GPUs | config | experts | params (B) | tp | ep | GPU GiB | host GiB | step ms "
          "| optimizer ms | tokens/s per GPU |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in mem:
        if not r["params_b"]:
            print(f"| {r['gpus']} | {r['config']} | does not fit | | | | | | | | |")
            continue
        print(f"| {r['gpus']} | {r['config']} | {r['experts']} | {r['params_b']:.0f} | {r['tp']} "
              f"| {r['ep']} | {r['gpu_gib']:.0f} | {r['host_gib']:.0f} | {r['step_ms']:.0f} "
              f"| {r['optimizer_ms']:.0f} | {r['tokens_per_gpu_s']:,.0f} |")


if __name__ == "__main__":
    main()
