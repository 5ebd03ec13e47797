// Server benchmark (not a test): K concurrent streaming clients against a running `moex serve`
// (or any OpenAI-compatible server), each sending requests back to back until N requests are
// done. Prints one JSON line: generated tokens/s over the run and time to first token p50/p99.
//   node bench/serve_bench.mjs URL MODEL [--clients K] [--requests N] [--max-tokens T] [--prompt P]
// Uses only fetch and the SSE framing, so it needs no npm package.
const args = process.argv.slice(2);
const [url, model] = args;
const opt = (name, fallback) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : fallback;
};
if (!url || !model) {
  console.error('usage: serve_bench.mjs URL MODEL [--clients K] [--requests N] [--max-tokens T] [--prompt P]');
  process.exit(2);
}
const clients = Number(opt('clients', 8));
const requests = Number(opt('requests', 64));
const maxTokens = Number(opt('max-tokens', 32));
const prompt = opt('prompt', 'The expert layer routes each token to');

const ttft = [];
let tokens = 0, errors = 0, issued = 0;

async function one(i) {
  const t0 = performance.now();
  const res = await fetch(`${url}/v1/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, prompt: `${prompt} ${i}`, max_tokens: maxTokens, temperature: 0,
                           stream: true, stream_options: { include_usage: true } }),
  });
  if (!res.ok) { errors += 1; await res.text(); return; }
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = '', first = true;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf('\n\n')) >= 0) {
      const event = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      if (!event.startsWith('data: ') || event === 'data: [DONE]') continue;
      const chunk = JSON.parse(event.slice(6));
      if (first && chunk.choices?.length) { ttft.push(performance.now() - t0); first = false; }
      if (chunk.usage) tokens += chunk.usage.completion_tokens;
    }
  }
}

const start = performance.now();
await Promise.all(Array.from({ length: clients }, async () => {
  while (issued < requests) await one(issued++);
}));
const seconds = (performance.now() - start) / 1000;
ttft.sort((a, b) => a - b);
const pct = (p) => ttft.length ? ttft[Math.min(ttft.length - 1, Math.floor(p * ttft.length))] : null;
console.log(JSON.stringify({
  bench: 'serve', url, clients, requests, max_tokens: maxTokens, errors,
  generated_tokens: tokens, seconds: Number(seconds.toFixed(3)),
  tokens_per_s: Number((tokens / seconds).toFixed(1)),
  ttft_p50_ms: pct(0.5) && Number(pct(0.5).toFixed(1)), ttft_p99_ms: pct(0.99) && Number(pct(0.99).toFixed(1)),
}));
