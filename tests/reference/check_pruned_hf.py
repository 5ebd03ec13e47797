# Checks `moex prune` on Hugging Face directories against transformers.
#
#   python3 tests/reference/check_pruned_hf.py --moex build/moex [--work DIR]
#
# For each model of tests/fixtures/hf/<arch>/model (tiny Mixtral, Qwen2-MoE, Qwen3-MoE and OLMoE
# models that transformers itself saved), runs `moex prune` (expert pruning, layer dropping, or
# both, by frequency or gate mass, calibrated on the fixture's input_ids) into DIR/<case>, then
#   - loads DIR/<case> with transformers' AutoModelForCausalLM: no missing or unexpected
#     weights, and a config whose layer and expert counts are the pruned ones;
#   - compares transformers' logits on the fixture's input_ids with `moex eval --logits-out` of
#     the same directory (relative L2 < 1e-5; both fp32);
#   - checks that the pruned router has one row per kept expert and that the JSON moex printed
#     counts the parameters transformers holds;
#   - builds the pruned model a second way, in torch alone: the source model's state dict with
#     the blocks moex reported keeping (renumbered) and, in each, the router rows and experts it
#     reported keeping, loaded into a model made from the source config with those counts; its
#     logits must equal those of the pruned directory (relative L2 < 1e-6).
# Prints one line per check and "ALL OK" or "MISMATCH" last; the exit status is 0 only for ALL OK.
import argparse
import json
import copy
import os
import re
import subprocess
import sys
import tempfile

import torch
import transformers
from safetensors.torch import load_file

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "hf")

# (case, fixture, prune flags, expected layers, expected experts per MoE layer)
CASES = [
    ("mixtral_experts", "mixtral", ["--keep-experts", "2"], 2, 2),
    ("mixtral_layers_gate_mass", "mixtral",
     ["--keep-experts", "3", "--rank-by", "gate-mass", "--keep-layers", "1"], 1, 3),
    ("qwen2_moe_layers_experts", "qwen2_moe",
     ["--keep-experts", "3", "--keep-layers", "1,2"], 2, 3),  # dense layer 1 kept as layer 0
    ("qwen3_moe_experts_gate_mass", "qwen3_moe",
     ["--keep-experts", "4", "--rank-by", "gate-mass"], 2, 4),
    ("olmoe_layers", "olmoe", ["--keep-layers", "1"], 1, 8),
]


def rel_l2(a, b):
    return float((a - b).norm() / b.norm())


def num_experts(config):
    return getattr(config, "num_local_experts", None) or getattr(config, "num_experts")


def dense_layers(config):
    """The source blocks whose FFN is dense, as transformers decides it (Qwen's mlp_only_layers
    and decoder_sparse_step; Mixtral and OLMoE have none)."""
    only = set(getattr(config, "mlp_only_layers", None) or [])
    step = getattr(config, "decoder_sparse_step", None) or 1
    return {i for i in range(config.num_hidden_layers) if i in only or (i + 1) % step != 0}


def reference_pruned(src, report):
    """The pruned model made in torch from the source model and what moex reported keeping."""
    model = transformers.AutoModelForCausalLM.from_pretrained(
        src, dtype=torch.float32, attn_implementation="eager")
    layers = report["kept_layers"]
    kept = {int(k): v for k, v in report["kept"].items()}
    source_experts = num_experts(model.config)
    config = copy.deepcopy(model.config)
    dense = dense_layers(model.config)
    config.num_hidden_layers = len(layers)
    if kept:
        for attr in ("num_local_experts", "num_experts"):
            if getattr(config, attr, None) is not None:
                setattr(config, attr, len(next(iter(kept.values()))))
    if getattr(config, "mlp_only_layers", None) is not None:
        config.mlp_only_layers = [j for j, i in enumerate(layers) if i in dense]
        config.decoder_sparse_step = 1
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in layers]
    state = {}
    for name, tensor in model.state_dict().items():
        m = re.match(r"model\.layers\.(\d+)\.(.*)", name)
        if not m:
            state[name] = tensor
            continue
        i, rest = int(m.group(1)), m.group(2)
        if i not in layers:
            continue
        prefix = "model.layers.%d." % layers.index(i)
        experts = kept.get(i)
        per_expert = re.match(r"(.*\.experts)\.(\d+)\.(.*)", rest)
        if experts is not None and per_expert:  # one module per expert: renumber the kept ones
            e = int(per_expert.group(2))
            if e in experts:
                state[prefix + "%s.%d.%s" % (per_expert.group(1), experts.index(e),
                                             per_expert.group(3))] = tensor
            continue
        router = re.search(r"(^|\.)gate\.weight$", rest) and "shared_expert" not in rest
        if experts is not None and (router or ".experts." in rest) and \
                tensor.shape[0] == source_experts:
            tensor = tensor[experts]  # router rows [E, d] or fused experts [E, ...]
        state[prefix + rest] = tensor
    ref = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    ref = ref.float().eval()
    result = ref.load_state_dict(state, strict=False)
    return ref, list(result.missing_keys), list(result.unexpected_keys)


def run_case(moex, work, case, fixture, flags, layers, experts):
    src = os.path.join(FIXTURES, fixture, "model")
    ids_file = os.path.join(FIXTURES, fixture, "fixture.safetensors")
    out = os.path.join(work, case)
    printed = subprocess.run(
        [moex, "prune", "--model", src, "--out", out, "--calibration", ids_file] + flags,
        check=True, capture_output=True, text=True).stdout
    report = json.loads(printed)
    logits_file = os.path.join(work, case + ".logits.safetensors")
    subprocess.run([moex, "eval", "--model", out, "--input-ids", ids_file, "--logits-out",
                    logits_file], check=True, capture_output=True, text=True)
    moex_logits = load_file(logits_file)["logits"]

    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        out, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    model = model.eval()
    ok = True

    def check(good, *what):
        nonlocal ok
        print(case, "OK " if good else "BAD", *what, flush=True)
        ok &= bool(good)

    check(not info["missing_keys"] and not info["unexpected_keys"],
          "weights: missing", info["missing_keys"], "unexpected", info["unexpected_keys"])
    check(model.config.num_hidden_layers == layers and num_experts(model.config) == experts,
          "config: layers", model.config.num_hidden_layers, "experts", num_experts(model.config),
          "expected", layers, experts)
    routers = [tuple(t.shape) for n, t in model.state_dict().items()
               if re.search(r"layers\.\d+\.(mlp|block_sparse_moe)\.gate\.weight$", n)]
    check(routers and all(shape[0] == experts for shape in routers), "router shapes", routers)
    params = sum(p.numel() for p in model.parameters())
    check(params == report["params_after"], "parameters: transformers", params, "moex",
          report["params_after"])
    ids = load_file(ids_file)["input_ids"].long()
    with torch.no_grad():
        hf_logits = model(input_ids=ids).logits.float()
    err = rel_l2(moex_logits, hf_logits)
    check(err < 1e-5, "logits rel L2 moex vs transformers:", err)

    ref, missing, unexpected = reference_pruned(src, report)
    # A tied head is one tensor under two names; anything else missing is a real gap.
    missing = [k for k in missing if not (k == "lm_head.weight" and ref.config.tie_word_embeddings)]
    check(not missing and not unexpected,
          "torch-pruned state dict: missing", missing, "unexpected", unexpected)
    with torch.no_grad():
        ref_logits = ref(input_ids=ids).logits.float()
    err = rel_l2(hf_logits, ref_logits)
    check(err < 1e-6, "logits rel L2 pruned dir vs pruned in torch:", err)
    return ok


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--moex", required=True, help="the moex binary")
    p.add_argument("--work", default=None, help="where the pruned directories go (default: temp)")
    args = p.parse_args()
    print("transformers", transformers.__version__, "torch", torch.__version__, flush=True)
    work = args.work or tempfile.mkdtemp(prefix="moex_pruned_hf_")
    os.makedirs(work, exist_ok=True)
    ok = True
    for case in CASES:
        try:
            ok &= run_case(args.moex, work, *case)
        except Exception as ex:  # a failed prune/eval/load is a mismatch, reported per case
            stderr = getattr(ex, "stderr", "") or ""
            print(case[0], "BAD", repr(ex), stderr.strip(), flush=True)
            ok = False
    print("ALL OK" if ok else "MISMATCH", flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
