// moex serve driven by the official `openai` npm client (an oracle nobody here wrote): model
// listing, completions and chat, streamed and whole, concurrent requests, seeds, stop strings,
// log-probabilities, logit_bias and penalties, tools, a
// client that disconnects mid-stream, malformed requests, metrics, a few seconds of concurrent
// streaming load (same answers, bounded memory), and a drain on SIGTERM.
//   node tests/serve/openai_client_test.mjs MOEX MODEL_DIR
// Exits non-zero on the first failed check. serve_client_test.sh makes the model and runs it.
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import { createInterface } from 'node:readline';
import OpenAI from 'openai';
import { zodFunction, zodResponseFormat } from 'openai/helpers/zod';
import { z } from 'zod';

const [moex, modelDir] = process.argv.slice(2);
if (!moex || !modelDir) {
  console.error('usage: openai_client_test.mjs MOEX MODEL_DIR');
  process.exit(2);
}

const server = spawn(moex, ['serve', '--model', modelDir, '--port', '0', '--max-batch', '4',
                            '--step-tokens', '24', '--block-size', '8',
                            '--max-context', '256'],
                     { stdio: ['ignore', 'pipe', 'inherit'] });
let exited = null;
const exitPromise = new Promise((resolve) => server.on('exit', (code, signal) => {
  exited = { code, signal };
  resolve(exited);
}));
// The server never outlives this script, whatever ends it (a failed check, a signal, a timeout).
const stopServer = () => { if (!exited) server.kill('SIGKILL'); };
process.on('exit', stopServer);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'])
  process.on(sig, () => { stopServer(); process.exit(1); });
const first = await new Promise((resolve, reject) => {
  createInterface({ input: server.stdout }).once('line', resolve);
  server.once('exit', () => reject(new Error('moex serve exited before listening')));
});
const { listening, model } = JSON.parse(first);
const client = new OpenAI({ baseURL: `${listening}/v1`, apiKey: 'unused', maxRetries: 0 });
let checks = 0;
const ok = (name) => { checks += 1; console.log(`ok ${checks} - ${name}`); };

async function raw(path, body, method = 'POST') {
  const res = await fetch(`${listening}${path}`, {
    method, headers: { 'content-type': 'application/json' },
    body: method === 'POST' ? body : undefined,
  });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* metrics are text */ }
  return { status: res.status, json, text, allow: res.headers.get('allow') };
}

async function metrics() {
  const { text } = await raw('/metrics', null, 'GET');
  const m = {};
  for (const line of text.split('\n'))
    if (line && !line.startsWith('#')) {
      const [k, v] = line.split(' ');
      m[k] = Number(v);
    }
  return m;
}

async function expectError(promise, status, fields = {}) {
  try {
    await promise;
  } catch (e) {
    assert.equal(e.status, status, `status of ${e.message}`);
    for (const [k, v] of Object.entries(fields)) assert.equal(e.error?.[k], v, `error.${k}`);
    assert.ok(e.error?.message, 'error.message is set');
    return e;
  }
  assert.fail(`expected an error with status ${status}`);
}

try {
  // ---- listing and health ----
  const models = await client.models.list();
  assert.deepEqual(models.data.map((m) => m.id), [model]);
  ok('models.list names the served model');
  assert.equal((await raw('/health', null, 'GET')).json.status, 'ok');
  ok('/health');

  // ---- completions ----
  const base = { model, max_tokens: 10, temperature: 0 };
  const greedy = await client.completions.create({ ...base, prompt: 'The server' });
  const g = greedy.choices[0];
  assert.equal(typeof g.text, 'string');
  assert.ok(['length', 'stop'].includes(g.finish_reason));
  assert.ok(greedy.usage.completion_tokens >= 1 && greedy.usage.completion_tokens <= 10);
  assert.ok(greedy.usage.prompt_tokens >= 1);
  assert.equal(greedy.usage.total_tokens, greedy.usage.prompt_tokens + greedy.usage.completion_tokens);
  const again = await client.completions.create({ ...base, prompt: 'The server' });
  assert.equal(again.choices[0].text, g.text);
  ok('completion: text, finish_reason, usage; greedy repeats');

  let streamed = '';
  let finish = null;
  for await (const chunk of await client.completions.create({ ...base, prompt: 'The server', stream: true })) {
    streamed += chunk.choices[0]?.text ?? '';
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  assert.equal(streamed, g.text);
  assert.equal(finish, g.finish_reason);
  ok('streamed completion equals the whole one');

  // ---- chat ----
  const messages = [{ role: 'system', content: 'You answer briefly.' }, { role: 'user', content: 'Hello there' }];
  const chat = await client.chat.completions.create({ model, messages, max_tokens: 8, temperature: 0 });
  assert.equal(chat.object, 'chat.completion');
  assert.equal(chat.choices[0].message.role, 'assistant');
  assert.equal(typeof chat.choices[0].message.content, 'string');
  let chatStreamed = '';
  let role = null;
  for await (const chunk of await client.chat.completions.create({ model, messages, max_tokens: 8, temperature: 0, stream: true, stream_options: { include_usage: true } })) {
    if (chunk.choices.length === 0) {
      assert.equal(chunk.usage.completion_tokens, chat.usage.completion_tokens);
      continue;
    }
    role = chunk.choices[0].delta?.role ?? role;
    chatStreamed += chunk.choices[0].delta?.content ?? '';
  }
  assert.equal(role, 'assistant');
  assert.equal(chatStreamed, chat.choices[0].message.content);
  ok('chat: whole and streamed agree, usage chunk');

  // ---- concurrency: each of several simultaneous requests equals its own run alone ----
  const prompts = ['A', 'The model', 'moex trains', 'Experts route', 'Tokens', 'GPU memory'];
  const alone = [];
  for (const p of prompts) alone.push((await client.completions.create({ ...base, prompt: p })).choices[0].text);
  const together = await Promise.all(prompts.map((p, i) => (i % 2
    ? client.completions.create({ ...base, prompt: p })
    : client.chat.completions.create({ model, messages: [{ role: 'user', content: p }], max_tokens: 6, temperature: 0 }))));
  for (let i = 0; i < prompts.length; i += 2) {
    const solo = await client.chat.completions.create({ model, messages: [{ role: 'user', content: prompts[i] }], max_tokens: 6, temperature: 0 });
    assert.equal(together[i].choices[0].message.content, solo.choices[0].message.content);
  }
  for (let i = 1; i < prompts.length; i += 2) assert.equal(together[i].choices[0].text, alone[i]);
  ok('concurrent requests give each request its own answer');

  // ---- sampling with a seed repeats; stop strings cut the text ----
  const sampled = { ...base, prompt: 'The server', temperature: 0.9, top_p: 0.95, seed: 1234 };
  assert.equal((await client.completions.create(sampled)).choices[0].text,
               (await client.completions.create(sampled)).choices[0].text);
  ok('seeded sampling repeats');
  const long = (await client.completions.create({ ...base, prompt: 'The server', max_tokens: 16 })).choices[0].text;
  // A stop string taken from the text itself (whatever this tiny model writes): the answer must
  // end right before its first occurrence.
  const stopAt = long.length >= 6 ? long.slice(4, 6) : null;
  if (stopAt) {
    const cut = await client.completions.create({ ...base, prompt: 'The server', max_tokens: 16, stop: [stopAt] });
    assert.equal(cut.choices[0].text, long.slice(0, long.indexOf(stopAt)));
    assert.equal(cut.choices[0].finish_reason, 'stop');
    let s = '';
    for await (const chunk of await client.completions.create({ ...base, prompt: 'The server', max_tokens: 16, stop: stopAt, stream: true }))
      s += chunk.choices[0]?.text ?? '';
    assert.equal(s, cut.choices[0].text);
    let stoppedUsage = null;
    for await (const chunk of await client.completions.create({ ...base, prompt: 'The server', max_tokens: 16, stop: stopAt, stream: true, stream_options: { include_usage: true } }))
      if (chunk.usage) stoppedUsage = chunk.usage;
    assert.deepEqual(stoppedUsage, cut.usage);  // tokens after the stop string are not counted
    ok('stop strings end the text before them, streamed too, with the same usage');
  } else {
    assert.fail(`the greedy continuation is too short to test stop strings: ${JSON.stringify(long)}`);
  }

  // ---- several choices: n per prompt and batched prompts, whole and streamed ----
  const alsoA = (await client.completions.create({ ...base, prompt: 'A' })).choices[0].text;
  const batch = await client.completions.create({ ...base, prompt: ['The server', 'A'], n: 2 });
  assert.deepEqual(batch.choices.map((c) => c.index), [0, 1, 2, 3]);
  assert.deepEqual(batch.choices.map((c) => c.text), [g.text, g.text, alsoA, alsoA]);
  const onePromptTokens = greedy.usage.prompt_tokens;
  const aPromptTokens = (await client.completions.create({ ...base, prompt: 'A', max_tokens: 1 })).usage.prompt_tokens;
  assert.equal(batch.usage.prompt_tokens, onePromptTokens + aPromptTokens);  // a prompt counts once, whatever n
  const perChoice = new Map();
  const finishes = new Map();
  let batchUsage = null;
  for await (const chunk of await client.completions.create({ ...base, prompt: ['The server', 'A'], n: 2, stream: true, stream_options: { include_usage: true } })) {
    if (chunk.usage) batchUsage = chunk.usage;
    for (const c of chunk.choices) {
      perChoice.set(c.index, (perChoice.get(c.index) ?? '') + (c.text ?? ''));
      if (c.finish_reason) finishes.set(c.index, c.finish_reason);
    }
  }
  assert.deepEqual([0, 1, 2, 3].map((i) => perChoice.get(i)), [g.text, g.text, alsoA, alsoA]);
  assert.equal(finishes.size, 4);
  assert.deepEqual(batchUsage, batch.usage);
  const seededTwo = await client.completions.create({ ...base, prompt: 'The server', temperature: 1, seed: 7, n: 2 });
  const seed7 = await client.completions.create({ ...base, prompt: 'The server', temperature: 1, seed: 7 });
  const seed8 = await client.completions.create({ ...base, prompt: 'The server', temperature: 1, seed: 8 });
  assert.deepEqual(seededTwo.choices.map((c) => c.text), [seed7.choices[0].text, seed8.choices[0].text]);
  const chatTwo = await client.chat.completions.create({ model, messages, max_tokens: 8, temperature: 0, n: 2 });
  assert.deepEqual(chatTwo.choices.map((c) => c.message.content), [chat.choices[0].message.content, chat.choices[0].message.content]);
  ok('n choices and batched prompts: each choice is its own run, streamed too; usage counts a prompt once');

  // vLLM's top_k: keeping one token is greedy whatever the temperature.
  const topOne = await client.completions.create({ ...base, prompt: 'The server', temperature: 1, top_k: 1, seed: 3 });
  assert.equal(topOne.choices[0].text, g.text);
  const echoed = await client.completions.create({ ...base, prompt: 'The server', echo: true });
  assert.equal(echoed.choices[0].text, 'The server' + g.text);
  ok('echo puts the prompt before the text');

  // Client defaults are accepted; asking for what moex does not build is a 400 naming the field.
  const defaults = await client.completions.create({ ...base, prompt: 'The server', frequency_penalty: 0, presence_penalty: 0, logit_bias: {}, logprobs: null, best_of: 1, suffix: null, user: 'u' });
  assert.equal(defaults.choices[0].text, g.text);
  const chatDefaults = await client.chat.completions.create({ model, messages, max_tokens: 8, temperature: 0, logprobs: false, response_format: { type: 'text' }, tools: [], max_completion_tokens: null });
  assert.equal(chatDefaults.choices[0].message.content, chat.choices[0].message.content);
  await expectError(client.completions.create({ ...base, prompt: 'x', best_of: 3 }), 400, { param: 'best_of' });
  // A misspelt field is refused, as OpenAI refuses it, and named with the field it misspells.
  const typo = await expectError(client.completions.create({ ...base, prompt: 'x', max_token: 2 }), 400, { param: 'max_token' });
  assert.match(typo.error.message, /did you mean 'max_tokens'/);
  const unbuilt = await expectError(client.chat.completions.create({ model, messages, response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'integer', minimum: 0 } } } }), 400, { param: 'response_format' });
  assert.match(unbuilt.error.message, /'minimum' is not supported/);
  const tools = [{ type: 'function', function: { name: 'f', parameters: { type: 'object', properties: {} } } }];
  await expectError(client.chat.completions.create({ model, messages, tools }), 400, { param: 'tools' });
  const noTools = await client.chat.completions.create({ model, messages, max_tokens: 8, temperature: 0, tools, tool_choice: 'none' });
  assert.equal(noTools.choices[0].message.content, chat.choices[0].message.content);
  // A null max_completion_tokens leaves max_tokens in force.
  const capped = await client.chat.completions.create({ model, messages, temperature: 0, max_tokens: 3, max_completion_tokens: null });
  assert.ok(capped.usage.completion_tokens <= 3, `${capped.usage.completion_tokens} tokens`);
  await expectError(client.chat.completions.create({ model, messages, max_completion_tokens: 0 }), 400, { param: 'max_completion_tokens' });
  const legacy = await client.chat.completions.create({ model, max_tokens: 4, messages: [...messages, { role: 'assistant', content: 'f()' }, { role: 'function', name: 'f', content: '1' }] });
  assert.equal(legacy.choices[0].message.role, 'assistant');
  ok('neutral values of unbuilt options accepted, others refused with the field named; legacy role');

  // ---- log-probabilities, logit_bias and penalties ----
  // Asking for log-probabilities changes nothing that is sampled; a greedy token is its
  // position's most likely one, so its log-probability is the largest of its alternatives.
  const withLp = await client.completions.create({ ...base, prompt: 'The server', logprobs: 3 });
  const lp = withLp.choices[0].logprobs;
  assert.equal(withLp.choices[0].text, g.text);
  assert.equal(lp.tokens.length, withLp.usage.completion_tokens);
  assert.deepEqual([lp.token_logprobs.length, lp.top_logprobs.length, lp.text_offset.length], Array(3).fill(lp.tokens.length));
  const near = (a, b, what) => assert.ok(Math.abs(a - b) < 1e-5, `${what}: ${a} vs ${b}`);
  for (let i = 0; i < lp.tokens.length; i += 1) {
    const alternatives = Object.values(lp.top_logprobs[i]);
    assert.ok(alternatives.length >= 1 && alternatives.length <= 3, `alternatives ${alternatives.length}`);
    near(Math.max(...alternatives), lp.token_logprobs[i], `token ${i} is the most likely`);
    assert.ok(alternatives.reduce((sum, x) => sum + Math.exp(x), 0) <= 1 + 1e-5, 'probabilities sum to at most 1');
    assert.equal(lp.text_offset[i], Buffer.byteLength(lp.tokens.slice(0, i).join('')), 'text_offset: bytes of the tokens before');
  }
  // Echo: the prompt's tokens first, the first with none (it has no context).
  const echoLp = await client.completions.create({ ...base, prompt: 'The server', echo: true, logprobs: 0 });
  const elp = echoLp.choices[0].logprobs;
  assert.equal(elp.tokens.length, echoLp.usage.prompt_tokens + echoLp.usage.completion_tokens);
  assert.equal(elp.token_logprobs[0], null);
  assert.equal(elp.top_logprobs[0], null);
  for (let i = 1; i < elp.tokens.length; i += 1) assert.ok(elp.token_logprobs[i] <= 0, `logprob ${i}`);
  // Each token's text sits at its text_offset in the echoed text (special tokens such as BOS are
  // not in the text and take no room).
  const echoedText = Buffer.from(echoLp.choices[0].text);
  elp.tokens.forEach((t, i) => {
    if (/^<[^>]*>$/.test(t) || t.includes('\ufffd')) return;
    const at = elp.text_offset[i];
    assert.equal(echoedText.subarray(at, at + Buffer.byteLength(t)).toString(), t, `token ${i} ${JSON.stringify(t)} at ${at}`);
  });
  assert.equal(elp.text_offset[0], 0);
  // Control tokens inside a prompt of ids (</s> between two words, each encoded alone by `moex
  // tokenize`, so the second starts with its '▁') add no text, and the token after one reads its
  // text after the last token that adds some, as the echoed text does ('▁' keeps its space):
  // every token's text sits at its offset, and the prompt's join to the echoed prompt.
  const idsOf = (text) => execFileSync(moex, ['tokenize', '--model', modelDir, '--text', text,
                                              '--no-special']).toString().trim().split(',').map(Number);
  const ctrlPrompt = [...idsOf('The'), 2, ...idsOf('server'), 1, ...idsOf('is here')];
  const ctrl = await client.completions.create({ ...base, prompt: ctrlPrompt, echo: true, logprobs: 0 });
  const clp = ctrl.choices[0].logprobs;
  const ctrlText = Buffer.from(ctrl.choices[0].text);
  assert.ok(ctrl.choices[0].text.startsWith('The server is here'), JSON.stringify(ctrl.choices[0].text));
  const promptTexts = [];
  clp.tokens.forEach((t, i) => {
    if (i < ctrlPrompt.length && ctrlPrompt[i] <= 2) return;  // the control tokens
    if (i >= ctrlPrompt.length && (/^<[^>]*>$/.test(t) || t.includes('\ufffd'))) return;  // as above
    const at = clp.text_offset[i];
    assert.equal(ctrlText.subarray(at, at + Buffer.byteLength(t)).toString(), t, `token ${i} ${JSON.stringify(t)} at ${at} after a control token`);
    if (i < ctrlPrompt.length) promptTexts.push(t);
  });
  assert.equal(promptTexts.join(''), 'The server is here', 'prompt token texts around control tokens');
  // The generated part is the request without echo's, token for token.
  const tail = elp.token_logprobs.slice(echoLp.usage.prompt_tokens);
  assert.equal(tail.length, lp.token_logprobs.length);
  tail.forEach((x, i) => near(x, lp.token_logprobs[i], `generated token ${i} with echo`));
  // Streamed: the chunks' entries put together are the whole answer's.
  const lpStream = await client.completions.create({ ...base, prompt: 'The server', logprobs: 3, stream: true });
  const lpChunks = { tokens: [], token_logprobs: [], text_offset: [] };
  for await (const chunk of lpStream)
    for (const c of chunk.choices)
      if (c.logprobs) for (const k of Object.keys(lpChunks)) lpChunks[k].push(...c.logprobs[k]);
  assert.deepEqual(lpChunks.tokens, lp.tokens);
  assert.deepEqual(lpChunks.text_offset, lp.text_offset);
  lpChunks.token_logprobs.forEach((x, i) => near(x, lp.token_logprobs[i], `streamed token ${i}`));
  // Chat: logprobs is a flag, top_logprobs the count; bytes are the token's UTF-8.
  const chatLp = await client.chat.completions.create({ model, messages, max_tokens: 8, temperature: 0, logprobs: true, top_logprobs: 2 });
  assert.equal(chatLp.choices[0].message.content, chat.choices[0].message.content);
  const content = chatLp.choices[0].logprobs.content;
  assert.equal(content.length, chatLp.usage.completion_tokens);
  for (const t of content) {
    assert.equal(t.top_logprobs.length, 2);
    near(t.top_logprobs[0].logprob, t.logprob, 'greedy chat token is the most likely');
    if (!t.token.includes('\ufffd')) assert.deepEqual(t.bytes, [...Buffer.from(t.token)]);
  }
  // The tokens' bytes, and their texts, add up to the answer (a run of spaces included).
  assert.equal(Buffer.from(content.flatMap((t) => t.bytes)).toString(), chatLp.choices[0].message.content);
  assert.equal(content.map((t) => t.token).join(''), chatLp.choices[0].message.content);
  const chatPlain = await client.chat.completions.create({ model, messages, max_tokens: 4, temperature: 0 });
  assert.equal(chatPlain.choices[0].logprobs, null);
  // A bias of +100 decides every token; log-probabilities stay the model's own.
  const forced = await client.completions.create({ ...base, prompt: 'The server', logit_bias: { 300: 100 }, logprobs: 1 });
  const forcedTokens = forced.choices[0].logprobs.tokens;
  assert.equal(forcedTokens.length, 10);
  assert.ok(forcedTokens.slice(1).every((t) => t === forcedTokens[1]), `forced tokens ${JSON.stringify(forcedTokens)}`);
  assert.ok(forced.choices[0].logprobs.token_logprobs.every((x) => x < Math.log(0.9)), 'raw log-probabilities, not the biased ones');
  // A token that holds part of a UTF-8 character reads U+FFFD as text, and its own byte as
  // "bytes" (biased towards this byte-fallback tokenizer's pieces for bytes 0x80 and up).
  const partialBias = Object.fromEntries(Array.from({ length: 60 }, (_, k) => [200 + k, 100]));
  const partial = await client.chat.completions.create({ model, messages, max_tokens: 12, temperature: 0, logit_bias: partialBias, logprobs: true, top_logprobs: 2 });
  const partialEntries = partial.choices[0].logprobs.content.filter((e) => e.token === '\uFFFD');
  assert.ok(partialEntries.length > 0, JSON.stringify(partial.choices[0].logprobs.content.map((e) => e.token)));
  for (const e of partialEntries) {
    assert.equal(e.bytes.length, 1, JSON.stringify(e));
    assert.ok(e.bytes[0] >= 0x80, JSON.stringify(e));
  }
  // Structured output: every whole answer matches the schema (enums, a boolean, a bounded list),
  // on both endpoints, streamed or not.
  const verdict = { type: 'object', properties: { answer: { enum: ['yes', 'no'] }, sure: { type: 'boolean' }, tags: { type: 'array', items: { enum: ['a', 'b'] }, maxItems: 2 } }, required: ['answer', 'sure'], additionalProperties: false };
  const schemaFormat = { type: 'json_schema', json_schema: { name: 'verdict', schema: verdict, strict: true } };
  const matchesVerdict = (text) => {
    const v = JSON.parse(text);
    assert.ok(['yes', 'no'].includes(v.answer) && typeof v.sure === 'boolean', text);
    assert.ok(Object.keys(v).every((k) => ['answer', 'sure', 'tags'].includes(k)), text);
    assert.ok(v.tags === undefined || (v.tags.length <= 2 && v.tags.every((t) => ['a', 'b'].includes(t))), text);
  };
  let wholeVerdicts = 0;
  for (let seed = 0; seed < 6; seed += 1) {
    const a = await client.chat.completions.create({ model, messages, max_tokens: 100, temperature: 1, seed, response_format: schemaFormat });
    const text = a.choices[0].message.content;
    if (a.choices[0].finish_reason === 'stop') {
      matchesVerdict(text);
      wholeVerdicts += 1;
    }
    const streamed = await client.chat.completions.create({ model, messages, max_tokens: 100, temperature: 1, seed, response_format: schemaFormat, stream: true });
    let streamedText = '';
    for await (const chunk of streamed) streamedText += chunk.choices[0]?.delta?.content ?? '';
    assert.equal(streamedText, text);
  }
  assert.ok(wholeVerdicts >= 4, `${wholeVerdicts} of 6 structured answers whole`);
  const completed = await client.completions.create({ ...base, prompt: 'Verdict:', max_tokens: 100, temperature: 0, response_format: schemaFormat });
  if (completed.choices[0].finish_reason === 'stop') matchesVerdict(completed.choices[0].text);
  ok(`json_schema: ${wholeVerdicts} of 6 sampled answers whole, each matching the schema; streamed the same`);
  // The client's own structured-output helper: a zod schema sent as OpenAI's strict json_schema
  // (nested objects, a reused one as a $ref into definitions, array bound, nullable enum, string
  // bound, integer), and the answer parsed and checked by zod.
  const Step = z.object({ action: z.enum(['go', 'stop']), count: z.number().int() });
  const Plan = z.object({ steps: z.array(Step).max(2), priority: z.enum(['low', 'high']).nullable(), note: z.string().max(3), done: z.boolean(), last: Step });
  assert.match(JSON.stringify(zodResponseFormat(Plan, 'plan').json_schema.schema), /"\$ref":"#\/definitions\//);
  // The served model is trained on this repository's docs, so how often its sampled plans fit in
  // the context's 195 free tokens moves whenever the docs change: 16 seeds, at least one whole.
  let parsedPlans = 0;
  for (let seed = 0; seed < 16; seed += 1) {
    try {
      const p = await client.beta.chat.completions.parse({ model, messages, max_tokens: 195, temperature: 1, seed, response_format: zodResponseFormat(Plan, 'plan') });
      assert.deepEqual(Plan.parse(JSON.parse(p.choices[0].message.content)), p.choices[0].message.parsed);
      parsedPlans += 1;
    } catch (e) {
      // The only way out is the token limit (then the client refuses to parse a cut answer).
      assert.equal(e.constructor.name, 'LengthFinishReasonError', String(e));
    }
  }
  assert.ok(parsedPlans >= 1, `${parsedPlans} of 16 zod plans parsed`);
  ok(`zodResponseFormat: ${parsedPlans} of 16 answers parsed and checked by zod, the rest cut by max_tokens`);
  // JSON mode: the answer is an object as far as it goes, and whole when it stopped.
  let wholeObjects = 0;
  for (let seed = 0; seed < 8; seed += 1) {
    const j = await client.chat.completions.create({ model, messages, max_tokens: 24, temperature: 1, seed, response_format: { type: 'json_object' } });
    const text = j.choices[0].message.content;
    assert.equal(text.trimStart()[0], '{', `JSON mode text ${JSON.stringify(text)}`);
    if (j.choices[0].finish_reason === 'stop') {
      assert.equal(typeof JSON.parse(text), 'object', text);
      wholeObjects += 1;
    } else {
      assert.equal(j.choices[0].finish_reason, 'length');
    }
  }
  const penalized = await client.completions.create({ ...base, prompt: 'The server', frequency_penalty: 2, presence_penalty: 2 });
  assert.equal(penalized.usage.completion_tokens, 10);
  await expectError(client.completions.create({ ...base, prompt: 'x', logprobs: 21 }), 400, { param: 'logprobs' });
  await expectError(client.completions.create({ ...base, prompt: 'x', frequency_penalty: 2.5 }), 400, { param: 'frequency_penalty' });
  await expectError(client.completions.create({ ...base, prompt: 'x', logit_bias: { 5: 101 } }), 400, { param: 'logit_bias' });
  await expectError(client.completions.create({ ...base, prompt: 'x', logit_bias: { 99999: 1 } }), 400, { param: 'logit_bias' });
  await expectError(client.chat.completions.create({ model, messages, top_logprobs: 2 }), 400, { param: 'top_logprobs' });
  ok(`log-probabilities (echo, streamed, chat), logit_bias and penalties, JSON mode (${wholeObjects} of 8 whole); bad values refused with the field named`);

  const retrieved = await client.models.retrieve(model);
  assert.equal(retrieved.id, model);
  await expectError(client.models.retrieve('no-such-model'), 404, { code: 'model_not_found' });
  const preflight = await fetch(`${listening}/v1/chat/completions`, { method: 'OPTIONS', headers: { Origin: 'http://example.com', 'Access-Control-Request-Method': 'POST', 'Access-Control-Request-Headers': 'authorization,content-type' } });
  assert.equal(preflight.status, 204);
  assert.equal(preflight.headers.get('access-control-allow-origin'), '*');
  assert.ok(preflight.headers.get('access-control-allow-methods').includes('POST'));
  assert.equal(preflight.headers.get('access-control-allow-headers'), 'authorization,content-type');
  const fromBrowser = await fetch(`${listening}/v1/models`, { headers: { Origin: 'http://example.com' } });
  assert.equal(fromBrowser.headers.get('access-control-allow-origin'), '*');
  ok('models.retrieve; CORS preflight and header');

  // ---- a client that leaves before its non-streaming answer: the request is cancelled ----
  // Before the stream's disconnect below, whose count may land late (its stream's release can
  // run after the engine has finished it); this one is counted before the engine can finish.
  // The socket closes right after the request is written, so the server finds the connection
  // closed before it submits the request (or, if the close comes later, at its first look with
  // the first tokens): far fewer than the 200 asked for. Waits for the disconnect's count and
  // an idle engine, not for the engine to finish the request, which may never have started.
  const beforeLeft = await metrics();
  await new Promise((resolve, reject) => {
    const body = JSON.stringify({ model, prompt: 'A', max_tokens: 200, ignore_eos: true });
    const { hostname, port } = new URL(listening);
    const sock = net.connect(Number(port), hostname, () => {
      sock.write(`POST /v1/completions HTTP/1.1\r\nHost: ${hostname}\r\n` +
                 `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}` +
                 `\r\n\r\n${body}`, () => { sock.destroy(); resolve(); });
    });
    sock.on('error', reject);
  });
  let m = await metrics();
  while (m.moex_running_requests > 0 || m.moex_queue_depth > 0 ||
         m.moex_kv_blocks_free !== m.moex_kv_blocks_total ||
         m.moex_client_disconnects_total <= beforeLeft.moex_client_disconnects_total)
    m = await metrics();
  const leftTokens = m.moex_generated_tokens_total - beforeLeft.moex_generated_tokens_total;
  assert.equal(m.moex_client_disconnects_total - beforeLeft.moex_client_disconnects_total, 1);
  assert.ok(leftTokens < 200, `tokens generated for a client that left: ${leftTokens}`);
  ok(`a client that leaves a non-streaming request has it cancelled (${leftTokens} of 200 tokens)`);

  // ---- a client that disconnects mid-stream: its sequence is freed ----
  const before = await metrics();
  const ac = new AbortController();
  const stream = await client.completions.create({ ...base, prompt: 'A', max_tokens: 200, stream: true }, { signal: ac.signal });
  try {
    for await (const _ of stream) { ac.abort(); }
  } catch { /* the abort surfaces as an error */ }
  // Until the engine has ended it (cancelled or run to its end) and given its blocks back; a
  // request that never ends keeps this loop going until ctest's timeout fails the test.
  m = await metrics();
  while (m.moex_running_requests > 0 || m.moex_kv_blocks_free !== m.moex_kv_blocks_total ||
         m.moex_requests_finished_total <= before.moex_requests_finished_total)
    m = await metrics();
  // Which comes first is a race on a busy machine: the server notices the closed connection
  // (the sequence is cancelled early and counted as a disconnect), or the small model has already
  // written all 200 tokens into the socket. Either way nothing of the request may be left.
  const generated = m.moex_generated_tokens_total - before.moex_generated_tokens_total;
  const noticed = m.moex_client_disconnects_total > before.moex_client_disconnects_total;
  assert.ok(noticed ? generated <= 200 : generated === 200,
            `disconnect noticed: ${noticed}, tokens generated for it: ${generated}`);
  ok(`a disconnected stream frees its sequence and KV blocks (noticed: ${noticed}, ${generated} tokens)`);

  // ---- malformed requests: 4xx in OpenAI's shape, and the server goes on ----
  let r = await raw('/v1/completions', '{not json');
  assert.equal(r.status, 400);
  assert.equal(r.json.error.type, 'invalid_request_error');
  r = await raw('/v1/chat/completions', JSON.stringify({ model, messages: 'hi' }));
  assert.equal(r.status, 400);
  assert.equal(r.json.error.param, 'messages');
  // The largest int64 max_tokens: prompt + max_tokens must not overflow past the context check.
  for (const path of ['/v1/completions', '/v1/chat/completions']) {
    const field = path.includes('chat') ? `"messages": [{"role": "user", "content": "x"}]` : `"prompt": "x"`;
    r = await raw(path, `{"model": "${model}", ${field}, "max_tokens": 9223372036854775807}`);
    assert.equal(r.status, 400, r.text);
    assert.equal(r.json.error.code, 'context_length_exceeded');
  }
  // stream_options: an object, only with stream, only the fields moex reads; tool_calls a list.
  for (const [extra, needle] of [
    ['"stream": true, "stream_options": "x"', 'must be an object'],
    ['"stream_options": {"include_usage": true}', "only allowed with 'stream': true"],
    ['"stream": true, "stream_options": {"include_usage": "yes"}', 'must be a boolean'],
    ['"stream": true, "stream_options": {"usage": true}', 'stream_options.usage'],
  ]) {
    r = await raw('/v1/completions', `{"model": "${model}", "prompt": "x", ${extra}}`);
    assert.equal(r.status, 400, r.text);
    assert.equal(r.json.error.param, 'stream_options');
    assert.ok(r.json.error.message.includes(needle), r.json.error.message);
  }
  r = await raw('/v1/chat/completions', JSON.stringify({ model, messages: [{ role: 'user', content: 'x' }, { role: 'assistant', content: 'y', tool_calls: 'oops' }] }));
  assert.equal(r.status, 400, r.text);
  assert.equal(r.json.error.param, 'messages[1].tool_calls');
  r = await raw('/v1/nope', '{}');
  assert.equal(r.status, 404);
  assert.ok(r.json.error.message.includes('/v1/nope'));
  r = await raw('/v1/completions', null, 'GET');
  assert.equal(r.status, 405);
  assert.equal(r.allow, 'POST');
  r = await raw('/v1/models', '{}', 'POST');
  assert.equal(r.status, 405);
  assert.ok(r.allow.startsWith('GET'));
  r = await raw('/v1/completions', `{"model": "${model}", "prompt": "x", "prompt": "y"}`);
  assert.equal(r.status, 400);
  assert.ok(r.json.error.message.includes('"prompt" appears twice'), r.json.error.message);
  // Two Content-Length headers that disagree (fetch would refuse to send them: a raw socket, ended
  // once the whole error body has come).
  const conflicting = await new Promise((resolve, reject) => {
    const body = '{"prompt": "x"}';
    const sock = net.connect(new URL(listening).port, new URL(listening).hostname, () =>
      sock.write(`POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n` +
               `Content-Length: ${body.length}\r\nContent-Length: 3\r\n\r\n${body}`));
    let answer = '';
    sock.on('data', (d) => {
      answer += d;
      const length = answer.match(/content-length: (\d+)\r\n/i);
      const head = answer.indexOf('\r\n\r\n');
      if (length && head >= 0 && answer.length >= head + 4 + Number(length[1])) {
        sock.destroy();
        resolve(answer);
      }
    });
    sock.on('end', () => resolve(answer));
    sock.on('error', reject);
  });
  assert.match(conflicting, /^HTTP\/1\.1 400/);
  assert.ok(conflicting.includes('conflicting message length'));
  await expectError(client.completions.create({ ...base, model: 'no-such-model', prompt: 'x' }), 404, { code: 'model_not_found' });
  await expectError(client.completions.create({ ...base, prompt: 'x', max_tokens: -1 }), 400, { param: 'max_tokens' });
  await expectError(client.completions.create({ ...base, prompt: 'x', max_tokens: 1e9 }), 400, { code: 'context_length_exceeded' });
  await expectError(client.completions.create({ ...base, prompt: 'word '.repeat(500) }), 400, { code: 'context_length_exceeded' });
  await expectError(client.completions.create({ ...base, prompt: 'x', temperature: 'hot' }), 400, { param: 'temperature' });
  await expectError(client.completions.create({ ...base, prompt: 'x', n: 200 }), 400, { param: 'n' });
  await expectError(client.completions.create({ ...base, prompt: Array(100).fill('x'), n: 2 }), 400, { param: 'prompt' });
  // A batch refused for its second prompt (an id past the vocabulary) starts nothing for its first.
  // The message names the request's field, not a server file.
  const outOfVocabulary = await expectError(client.completions.create({ ...base, prompt: [[1, 2], [99999999]], n: 2, max_tokens: 200 }), 400, { param: 'prompt' });
  assert.ok(outOfVocabulary.error.message.startsWith("'prompt' token 99999999 is outside the vocabulary"), outOfVocabulary.error.message);
  const afterRefusal = await metrics();
  assert.equal(afterRefusal.moex_running_requests + afterRefusal.moex_queue_depth, 0);
  // A prompt longer than the context, no max_tokens: the prompt is named, no negative count.
  const tooLong = await expectError(client.completions.create({ model, prompt: 'word '.repeat(500) }), 400, { code: 'context_length_exceeded', param: 'prompt' });
  assert.ok(!tooLong.error.message.includes('-'), tooLong.error.message);
  // Text far past what the context can hold is refused by its length, before tokenizing it.
  // One at a time: a request made before its turn could be refused before anything awaits it
  // (an unhandled rejection, which ends node).
  for (const huge of [
    () => client.completions.create({ ...base, prompt: 'abcdefg'.repeat(1000000) }),
    () => client.chat.completions.create({ model, messages: [{ role: 'user', content: 'abcdefg'.repeat(1000000) }] }),
  ]) {
    const e = await expectError(huge(), 400, { code: 'context_length_exceeded' });
    assert.ok(e.error.message.includes('bytes of text'), e.error.message);
  }
  await expectError(client.completions.create({ ...base, prompt: 'x', top_p: 0 }), 400, { param: 'top_p' });
  await expectError(client.chat.completions.create({ model, messages: [{ role: 'wizard', content: 'x' }] }), 400);
  assert.equal((await client.completions.create({ ...base, prompt: 'The server' })).choices[0].text, g.text);
  ok('malformed requests get 4xx errors in OpenAI shape; serving goes on');

  m = await metrics();
  for (const k of ['moex_requests_total', 'moex_request_errors_total', 'moex_generated_tokens_total',
                   'moex_queue_depth', 'moex_batch_size', 'moex_generated_tokens_per_second'])
    assert.ok(k in m, `/metrics has ${k}`);
  assert.ok(m.moex_request_errors_total >= 10);  // the rejected generation requests above
  ok('/metrics in Prometheus text');

  // ---- prefix caching: a repeated prompt takes its whole KV blocks (8 tokens) from the cache ----
  {
    const long = 'In the beginning the town had one road, one well and one bell. '.repeat(3);
    const before = (await metrics()).moex_prompt_tokens_cached_total;
    const first = await client.completions.create({ ...base, prompt: long });
    const again = await client.completions.create({ ...base, prompt: long });
    assert.equal(again.choices[0].text, first.choices[0].text);
    assert.equal(again.usage.prompt_tokens, first.usage.prompt_tokens);
    const cached = (await metrics()).moex_prompt_tokens_cached_total - before;
    assert.ok(cached >= 16 && cached % 8 === 0 && cached < first.usage.prompt_tokens,
              `prompt tokens from the cache: ${cached} of ${first.usage.prompt_tokens}`);
    // OpenAI's usage field for it: none the first time, the metric's count the second.
    assert.equal(first.usage.prompt_tokens_details.cached_tokens, 0);
    assert.equal(again.usage.prompt_tokens_details.cached_tokens, cached);
    ok(`prefix caching: the repeated prompt took ${cached} of its ${first.usage.prompt_tokens} tokens from the cache, same answer`);
  }

  // ---- load: 45 waves of 12 concurrent streaming clients, no error, no memory growth ----
  const rss = () => Number(readFileSync(`/proc/${server.pid}/status`, 'utf8').match(/VmRSS:\s+(\d+)/)[1]);
  const wave = () => Promise.all(Array.from({ length: 12 }, async (_, i) => {
    let text = '';
    for await (const chunk of await client.completions.create({ ...base, prompt: prompts[i % prompts.length], max_tokens: 12, stream: true }))
      text += chunk.choices[0]?.text ?? '';
    return text;
  }));
  // Memory is compared between wave 30 and wave 45, after the first waves have sized the arena
  // and the allocator's pools (AddressSanitizer's allocator takes ~27 waves to settle): a
  // per-request leak keeps growing past that point.
  const reference = await wave();
  const waves = 45;
  let rssAt30 = 0;
  const trace = [];
  for (let w = 1; w <= waves; ++w) {
    assert.deepEqual(await wave(), reference);
    trace.push(rss());
    if (w === 30) rssAt30 = rss();
  }
  const growthKiB = rss() - rssAt30;
  console.log(`# RSS (KiB) after each wave: ${trace.join(' ')}`);
  // Under AddressSanitizer the allocator's per-thread caches and quarantine keep growing RSS
  // slowly whatever the program does; there LeakSanitizer checks the server at exit instead
  // (a leak makes its exit status non-zero, which the SIGTERM check below asserts).
  if (!process.env.MOEX_SANITIZED)
    assert.ok(growthKiB < 8 * 1024, `server memory grew by ${growthKiB} KiB from wave 30 to ${waves}`);
  m = await metrics();
  assert.equal(m.moex_running_requests, 0);
  assert.equal(m.moex_kv_blocks_free, m.moex_kv_blocks_total);
  ok(`load: ${waves} waves of 12 concurrent streams, same answers, memory grew ${growthKiB} KiB over the last 15`);

  // ---- tools with a template that teaches them (Qwen2.5's, on a copy of the model) ----
  {
    const dir = mkdtempSync(join(tmpdir(), 'moex-tools-'));
    cpSync(modelDir, dir, { recursive: true });
    const configPath = join(dir, 'tokenizer_config.json');
    const tokConfig = existsSync(configPath) ? JSON.parse(readFileSync(configPath, 'utf8')) : {};
    tokConfig.chat_template = readFileSync(new URL('../fixtures/chat_templates/qwen2_5_instruct.jinja', import.meta.url), 'utf8');
    writeFileSync(configPath, JSON.stringify(tokConfig));
    // Two tools written in by the template take about 800 prompt tokens of the docs-trained
    // tokenizer (the count moves whenever the docs change), and a forced parallel call up to 230
    // more: 2048 leaves room. Past the model's trained length its RoPE positions are untrained, but
    // the calls' validity comes from the constrained decoding, which is what this part checks.
    const qwen = spawn(moex, ['serve', '--model', dir, '--port', '0', '--max-context', '2048'], { stdio: ['ignore', 'pipe', 'inherit'] });
    const qwenExit = new Promise((resolve) => qwen.on('exit', (code, signal) => resolve({ code, signal })));
    try {
      const line = await new Promise((resolve, reject) => {
        createInterface({ input: qwen.stdout }).once('line', resolve);
        qwen.once('exit', () => reject(new Error('the second moex serve exited before listening')));
      });
      const info = JSON.parse(line);
      const qc = new OpenAI({ baseURL: `${info.listening}/v1`, apiKey: 'unused', maxRetries: 0 });
      const weather = [{ type: 'function', function: { name: 'get_weather', description: 'The weather in a city', parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } } }];
      const ask = { model: info.model, messages: [{ role: 'user', content: 'Weather in Paris?' }], max_tokens: 12, temperature: 0 };
      const plain = await qc.chat.completions.create(ask);
      const offered = await qc.chat.completions.create({ ...ask, tools: weather });
      // The template writes the tools into the prompt.
      assert.ok(offered.usage.prompt_tokens > plain.usage.prompt_tokens + 20, `${offered.usage.prompt_tokens} vs ${plain.usage.prompt_tokens} prompt tokens`);
      const none = await qc.chat.completions.create({ ...ask, tools: weather, tool_choice: 'none' });
      assert.equal(none.usage.prompt_tokens, plain.usage.prompt_tokens);
      // Streamed, the same content and calls (the tiny model writes no call; unit tests read them).
      const msg = offered.choices[0].message;
      const stream = await qc.chat.completions.create({ ...ask, tools: weather, stream: true });
      let content = '';
      const calls = [];
      let finish = null;
      for await (const chunk of stream)
        for (const c of chunk.choices) {
          content += c.delta?.content ?? '';
          for (const t of c.delta?.tool_calls ?? []) calls[t.index] = { id: t.id, type: t.type, function: t.function };
          finish = c.finish_reason ?? finish;
        }
      assert.equal(content.trim(), (msg.content ?? '').trim());
      assert.deepEqual(calls, msg.tool_calls ?? []);
      assert.equal(finish, offered.choices[0].finish_reason);
      // A conversation that went through a call renders (the call's arguments arrive as JSON text).
      const followUp = await qc.chat.completions.create({ ...ask, tools: weather, messages: [...ask.messages,
        { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city": "Paris"}' } }] },
        { role: 'tool', tool_call_id: 'call_1', content: '18 C, sunny' }] });
      assert.ok(followUp.usage.prompt_tokens > offered.usage.prompt_tokens);
      // Forced calls: the answer is a call of the named tool (or of any, "required") whose
      // arguments match its parameters, streamed as the whole answer is.
      const two = [
        { type: 'function', function: { name: 'get_weather', parameters: { type: 'object', properties: { city: { enum: ['Paris', 'Rome'] }, metric: { type: 'boolean' } }, required: ['city'] } } },
        { type: 'function', function: { name: 'get_time', parameters: { type: 'object', properties: { zone: { enum: ['UTC', 'CET'] } }, required: ['zone'], additionalProperties: false } } },
      ];
      // A named function is called once; "required" may make parallel calls, each valid.
      let parallelCalls = 0;
      const checkCall = (message, names) => {
        assert.ok(message.tool_calls?.length >= 1, JSON.stringify(message));
        if (names.length === 1) assert.equal(message.tool_calls.length, 1, JSON.stringify(message));
        parallelCalls = Math.max(parallelCalls, message.tool_calls.length);
        for (const { function: call } of message.tool_calls) {
          assert.ok(names.includes(call.name), call.name);
          const args = JSON.parse(call.arguments);
          if (call.name === 'get_weather') assert.ok(['Paris', 'Rome'].includes(args.city), call.arguments);
          else assert.deepEqual(Object.keys(args), ['zone'], call.arguments);
        }
      };
      const forcedAsk = { ...ask, max_tokens: 160, tools: two };
      const named = await qc.chat.completions.create({ ...forcedAsk, tool_choice: { type: 'function', function: { name: 'get_time' } } });
      assert.equal(named.choices[0].finish_reason, 'tool_calls', JSON.stringify(named.choices[0]));
      checkCall(named.choices[0].message, ['get_time']);
      for (let seed = 0; seed < 3; seed += 1) {
        const any = await qc.chat.completions.create({ ...forcedAsk, max_tokens: 230, temperature: 1, seed, tool_choice: 'required' });
        assert.equal(any.choices[0].finish_reason, 'tool_calls', JSON.stringify(any.choices[0]));
        checkCall(any.choices[0].message, ['get_weather', 'get_time']);
      }
      const namedStream = await qc.chat.completions.create({ ...forcedAsk, tool_choice: { type: 'function', function: { name: 'get_time' } }, stream: true });
      const streamedCalls = [];
      for await (const chunk of namedStream)
        for (const t of chunk.choices[0]?.delta?.tool_calls ?? []) streamedCalls[t.index] = t.function;
      assert.deepEqual(streamedCalls, named.choices[0].message.tool_calls.map((t) => t.function));
      await expectError(qc.chat.completions.create({ ...ask, tools: two, tool_choice: { type: 'function', function: { name: 'nope' } } }), 400, { param: 'tool_choice' });
      // The client's zodFunction (strict tools) and its parser of the call's arguments.
      const lookup = zodFunction({ name: 'lookup', parameters: z.object({ table: z.enum(['users', 'orders']), limit: z.number().int().nullable() }) });
      const parsedCall = await qc.beta.chat.completions.parse({ ...ask, max_tokens: 160, tools: [lookup], tool_choice: 'required' });
      const parsedArgs = parsedCall.choices[0].message.tool_calls[0].function.parsed_arguments;
      assert.ok(['users', 'orders'].includes(parsedArgs.table), JSON.stringify(parsedArgs));
      const single = await qc.chat.completions.create({ ...forcedAsk, max_tokens: 230, temperature: 1, seed: 1, tool_choice: 'required', parallel_tool_calls: false });
      assert.equal(single.choices[0].message.tool_calls?.length, 1, JSON.stringify(single.choices[0]));
      ok(`tools: written into the prompt by the model's template, streamed like whole answers; forced calls match their tool's parameters (up to ${parallelCalls} parallel calls)`);
    } finally {
      qwen.kill('SIGTERM');
      await qwenExit;
      rmSync(dir, { recursive: true, force: true });
    }
  }

  // ---- SIGTERM drains: a request in flight still completes, then the process exits 0 ----
  const inflight = client.completions.create({ ...base, prompt: 'A', max_tokens: 30, stream: true });
  const iter = await inflight;
  let parts = 0;
  let ended = null;
  for await (const chunk of iter) {
    if (parts === 0) server.kill('SIGTERM');
    parts += 1;
    ended = chunk.choices[0]?.finish_reason ?? ended;
  }
  assert.ok(ended === 'length' || ended === 'stop', `the in-flight stream finished (${ended})`);
  const status = await exitPromise;
  assert.deepEqual(status, { code: 0, signal: null });
  ok('SIGTERM finishes the request in flight and exits 0');
  console.log(`all ${checks} checks passed`);
} catch (e) {
  console.error('FAIL:', e);
  if (!exited) server.kill('SIGKILL');
  process.exit(1);
}
