#!/usr/bin/env python3
"""Server benchmark (not a test): K concurrent streaming clients against a running `moex serve`
(or any OpenAI-compatible server), each sending requests back to back until N requests are done.
Prints one JSON line: generated tokens/s over the run and time to first token p50/p99.

  python3 bench/serve_bench.py URL MODEL [--clients K] [--requests N] [--max-tokens T] [--prompt P]
                                          [--shared-prefix-words W]

--shared-prefix-words W puts the same W-word passage before every prompt, as a system prompt or
a shared document would (what a server's prefix cache serves).

Python's standard library only (http.client, threads), so it runs wherever python3 does.
"""
import argparse
import http.client
import json
import threading
import time
import urllib.parse


def one(url, model, prompt, max_tokens, stats, lock):
    """One streamed completion; records its time to first token and its generated tokens."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens,
                       "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}})
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"content-type": "application/json"})
    res = conn.getresponse()
    if res.status != 200:
        res.read()
        with lock:
            stats["errors"] += 1
        return
    first, buf = True, b""
    while True:
        data = res.read1(65536)
        if not data:
            break
        buf += data
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            if not event.startswith(b"data: ") or event == b"data: [DONE]":
                continue
            chunk = json.loads(event[6:])
            with lock:
                if first and chunk.get("choices"):
                    stats["ttft"].append((time.perf_counter() - t0) * 1000.0)
                    first = False
                if chunk.get("usage"):
                    stats["tokens"] += chunk["usage"]["completion_tokens"]
    conn.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("url")
    ap.add_argument("model")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--prompt", default="The expert layer routes each token to")
    ap.add_argument("--shared-prefix-words", type=int, default=0)
    a = ap.parse_args()
    words = ("the river ran past the old mill and the town kept its bell in the square where "
             "traders met each morning").split()
    prefix = " ".join(words[i % len(words)] for i in range(a.shared_prefix_words))
    prompt = f"{prefix} {a.prompt}" if prefix else a.prompt
    stats = {"ttft": [], "tokens": 0, "errors": 0, "issued": 0}
    lock = threading.Lock()

    def client():
        while True:
            with lock:
                if stats["issued"] >= a.requests:
                    return
                i = stats["issued"]
                stats["issued"] += 1
            one(a.url, a.model, f"{prompt} {i}", a.max_tokens, stats, lock)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    ttft = sorted(stats["ttft"])

    def pct(p):
        return round(ttft[min(len(ttft) - 1, int(p * len(ttft)))], 1) if ttft else None

    print(json.dumps({"bench": "serve", "url": a.url, "clients": a.clients,
                      "requests": a.requests, "max_tokens": a.max_tokens,
                      "shared_prefix_words": a.shared_prefix_words,
                      "errors": stats["errors"], "generated_tokens": stats["tokens"],
                      "seconds": round(seconds, 3),
                      "tokens_per_s": round(stats["tokens"] / seconds, 1),
                      "ttft_p50_ms": pct(0.5), "ttft_p99_ms": pct(0.99)}))


if __name__ == "__main__":
    main()
