#!/usr/bin/env python3
"""The deepest medium-shape model (d=2048, 8 experts top-2, 4 x 2048 tokens) that HF + torch AdamW
trains on this GPU: transformers' MixtralForCausalLM in bf16 with gradient checkpointing and fused
AdamW (bf16 moments), the peer of moex's ZeRO-Offload measurement (docs/parallelism.md).

Bisects the layer count; each try is one `train_peers.py --layers L --checkpointing` process
(a fresh CUDA context, so an out-of-memory try leaves nothing behind). Prints one JSON line per
try, then {"largest": ...}.

  python3 bench/peers/largest_peer.py [--low 16] [--high 80] [--timeout 150]
"""
import argparse
import json
import os
import subprocess
import sys


def fits(layers, timeout):
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_peers.py")
    cmd = [sys.executable, script, "--shape", "medium", "--mode", "eager", "--layers", str(layers),
           "--checkpointing", "--iters", "1", "--warmup", "1"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout
    except subprocess.TimeoutExpired:
        return None
    rows = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    return rows[0] if rows else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--low", type=int, default=16, help="a depth known to fit")
    ap.add_argument("--high", type=int, default=80, help="a depth known not to fit")
    ap.add_argument("--timeout", type=int, default=150, help="seconds a try may take")
    a = ap.parse_args()
    low, high, best = a.low, a.high, None
    while high - low > 1:
        mid = (low + high) // 2
        row = fits(mid, a.timeout)
        ok = row is not None and "error" not in row
        print(json.dumps(dict(layers=mid, fits=ok, row=row)), flush=True)
        if ok:
            low, best = mid, row
        else:
            high = mid
    print(json.dumps(dict(largest=best)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
