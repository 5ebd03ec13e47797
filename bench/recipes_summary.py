#!/usr/bin/env python3
"""Summarises the runs of scripts/recipes_table1.sh and scripts/recipes_tables234.sh: one JSON
line per model, or with --markdown one table row per model (docs/recipes.md's columns).

For each NAME under ROOT: the model directory is ROOT/NAME/final (moex train / distill / prune
output). Total and active parameters come from its model weights (model*.safetensors; the
optimizer state beside them is not counted): active = total minus the experts a token skips
(E - top_k of each MoE layer's experts, top_k from the directory's config.json). Training tokens
come from configs/recipes/NAME.json when there is one (none: a pruned model, not trained; "+"
when the run started from another model's weights), the seconds from ROOT/NAME.seconds,
per-source valid perplexity and BLEU/chrF from ROOT/NAME.eval.json (moex eval --data), decode
speed from ROOT/NAME.decode.jsonl (moex bench decode --json lines; the row shows the median
tokens/s of each batch size), and the expert-load entropy from ROOT/NAME/metrics.jsonl (the load
of each MoE layer normalised to a distribution, its entropy over log E, averaged over the layers
and the last 10 logged steps; 1 = perfectly balanced). "LM ppl" and "denoise ppl" are the
token-weighted perplexity over the sources of that task.
    python3 bench/recipes_summary.py [--markdown] runs/recipes NAME...
"""
import json
import math
import os
import statistics
import struct
import sys


def tensor_shapes(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def params(final_dir):
    shapes = {}
    for name in os.listdir(final_dir):
        # model.safetensors or model-0000i-of-0000n.safetensors; optimizer.safetensors holds
        # the AdamW moments, not parameters.
        if name.startswith("model") and name.endswith(".safetensors"):
            shapes.update(tensor_shapes(os.path.join(final_dir, name)))
    total = sum(math.prod(s) for s in shapes.values())
    model = json.load(open(os.path.join(final_dir, "config.json")))["moex_model"]
    moe = model.get("moe")
    skipped = 0
    if moe:
        k = moe.get("top_k", 1)
        # Expert tensors are [E, ...]: a token uses k of the E rows' worth.
        for name, s in shapes.items():
            if ".experts." in name:
                skipped += (s[0] - k) * math.prod(s[1:])
    return total, total - skipped


def load_entropy(metrics_path):
    if not os.path.exists(metrics_path):
        return None
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


def summary(root, name):
    run = os.path.join(root, name)
    total, active = params(os.path.join(run, "final"))
    out = {"model": name, "params_total": total, "params_active": active}
    config_path = os.path.join("configs", "recipes", name + ".json")
    if os.path.exists(config_path):
        config = json.load(open(config_path))
        t = config["training"]
        out["train_tokens"] = (t["steps"] * t["micro_batch_size"] * t["grad_accum"] *
                               config["data"]["seq_len"])
        # A run that starts from another model's weights: its tokens come on top of that one's.
        out["continues_from_teacher"] = bool(
            config.get("distill", {}).get("init_from_teacher_layers"))
    seconds = os.path.join(root, name + ".seconds")
    if os.path.exists(seconds):
        out["train_seconds"] = float(open(seconds).read().split()[-1])
    metrics_path = os.path.join(run, "metrics.jsonl")
    if os.path.exists(metrics_path):
        metrics = [json.loads(l) for l in open(metrics_path)]
        eval_loss = [m["eval_loss"] for m in metrics if "eval_loss" in m]
        out["final_eval_loss"] = eval_loss[-1] if eval_loss else None
    out["expert_load_entropy"] = load_entropy(metrics_path)
    decode = os.path.join(root, name + ".decode.jsonl")
    if os.path.exists(decode):
        out["decode"] = [json.loads(l) for l in open(decode) if l.startswith("{")]
    out["eval"] = json.load(open(os.path.join(root, name + ".eval.json")))
    return out


def ppl_of(sources, task):
    """Token-weighted perplexity over the sources of one task (None if there are none)."""
    picked = [s for s in sources if s["task"] == task]
    tokens = sum(s["tokens"] for s in picked)
    if not tokens:
        return None
    return math.exp(sum(s["loss"] * s["tokens"] for s in picked) / tokens)


def millions(n):
    return f"{n / 1e6:.2f} M"


def markdown_row(s):
    sources = {x["name"]: x for x in s["eval"]["sources"]}
    ppl = lambda n: f"{sources[n]['perplexity']:.0f}" if n in sources else "—"
    ppl1 = lambda n: f"{sources[n]['perplexity']:.1f}" if n in sources else "—"
    tr = sources.get("bible.en-es", {})
    cells = [s["model"], millions(s["params_total"]), millions(s["params_active"]),
             f"{s['eval']['perplexity']:.1f}", f"{ppl_of(s['eval']['sources'], 'lm'):.1f}",
             " / ".join(ppl("handbook." + l) for l in ("en", "es", "fr", "de", "it", "pt")),
             f"{ppl1('bible.en')} / {ppl1('bible.es')}", ppl1("bible.en-es"),
             f"{tr['bleu']:.2f} / {tr['chrf']:.1f}" if "bleu" in tr else "—"]
    denoise = ppl_of(s["eval"]["sources"], "denoise")
    cells.append(f"{denoise:.1f}" if denoise else "—")
    if "decode" in s:
        by_batch = {}
        for d in s["decode"]:
            by_batch.setdefault(d["batch"], []).append(d["tokens_per_s"])
        cells.append(" / ".join(f"{statistics.median(v):.0f}" for _, v in sorted(by_batch.items())))
    else:
        cells.append("—")
    ent = s["expert_load_entropy"]
    cells.append(f"{ent:.3f}" if ent is not None else "—")
    if "train_tokens" in s:
        more = "+" if s["continues_from_teacher"] else ""
        cells.append(f"{more}{s['train_tokens'] / 1e6:.2f} M")
    else:
        cells.append("0")
    cells.append(f"{s['train_seconds']:.0f} s" if "train_seconds" in s else "—")
    return cells


HEADER = ["model", "params total", "params active", "valid ppl (all sources)", "LM ppl",
          "handbook ppl en / es / fr / de / it / pt", "Bible ppl en / es", "en↔es ppl",
          "BLEU / chrF", "denoise ppl", "decode tok/s (batch 1 / 8)", "load entropy",
          "train tokens", "train time"]


def markdown_table(rows):
    """The table, without the columns that no row has a value in."""
    keep = [i for i in range(len(HEADER)) if any(r[i] != "—" for r in rows)]
    lines = [[HEADER[i] for i in keep], ["---"] * len(keep)] + [[r[i] for i in keep] for r in rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def main():
    args = sys.argv[1:]
    markdown = "--markdown" in args
    args = [a for a in args if a != "--markdown"]
    root, names = args[0], args[1:]
    summaries = [summary(root, name) for name in names]
    if markdown:
        print(markdown_table([markdown_row(s) for s in summaries]))
    else:
        for s in summaries:
            print(json.dumps(s))


if __name__ == "__main__":
    main()
