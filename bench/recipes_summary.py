#!/usr/bin/env python3
"""Summarises the runs of scripts/recipes_table1.sh: one JSON line per model.

For each run: total and active parameters (from the final checkpoint's safetensors header:
active = total minus the experts a token skips), training tokens and seconds, the last eval loss,
per-source valid perplexity and BLEU/chrF (moex eval --data), and the expert-load entropy (the
load of each MoE layer normalised to a distribution, its entropy over log E, averaged over the
layers and the last 10 logged steps; 1 = perfectly balanced).
    python3 bench/recipes_summary.py runs/recipes NAME...
"""
import json
import math
import os
import struct
import sys


def tensor_shapes(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def params(final_dir, config):
    shapes = {}
    for name in os.listdir(final_dir):
        if name.endswith(".safetensors"):
            shapes.update(tensor_shapes(os.path.join(final_dir, name)))
    total = sum(math.prod(s) for s in shapes.values())
    moe = config["model"].get("moe")
    skipped = 0
    if moe:
        k = moe.get("top_k", 1)
        # Expert tensors are [E, ...]: a token uses k of the E rows' worth.
        for name, s in shapes.items():
            if ".experts." in name:
                e = s[0]
                skipped += (e - k) * math.prod(s[1:])
    return total, total - skipped


def load_entropy(metrics_path):
    lines = [json.loads(l) for l in open(metrics_path) if '"expert_load"' in l]
    values = []
    for line in lines[-10:]:
        for layer in line["expert_load"].values():
            load = layer["load"]
            total = sum(load)
            if total == 0 or len(load) < 2:
                continue
            h = -sum(x / total * math.log(x / total) for x in load if x > 0)
            values.append(h / math.log(len(load)))
    return sum(values) / len(values) if values else None


def main():
    root, names = sys.argv[1], sys.argv[2:]
    for name in names:
        run = os.path.join(root, name)
        config = json.load(open(os.path.join("configs", "recipes", name + ".json")))
        total, active = params(os.path.join(run, "final"), config)
        t = config["training"]
        tokens = t["steps"] * t["micro_batch_size"] * t["grad_accum"] * config["data"]["seq_len"]
        metrics = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))]
        eval_loss = [m["eval_loss"] for m in metrics if "eval_loss" in m]
        seconds = float(open(os.path.join(root, name + ".seconds")).read().split()[-1])
        ev = json.load(open(os.path.join(root, name + ".eval.json")))
        print(json.dumps({"model": name, "params_total": total, "params_active": active,
                          "train_tokens": tokens, "train_seconds": seconds,
                          "final_eval_loss": eval_loss[-1] if eval_loss else None,
                          "expert_load_entropy": load_entropy(os.path.join(run, "metrics.jsonl")),
                          "eval": ev}))


if __name__ == "__main__":
    main()
