// lm-evaluation-harness's log-likelihood requests against /v1/completions:
// token-id prompts, echo, max_tokens 0, logprobs 1. The summed
// token_logprobs of the continuation must equal the log-likelihood computed
// from `metastate eval` logits.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, api } from './lib/server.mjs';
import { defaultServer, DEFAULT_NAME as M, byteIds, evalLogits, logSoftmaxAt } from './lib/agent.mjs';

let srv;
before(async () => { srv = await startServer(defaultServer); });
after(async () => { const e = await srv.stop(); assert.equal(e.code, 0, srv.stderr()); });

const context = byteIds('Q: What is the capital of France?\nA:');
const continuation = byteIds(' Paris');

test('loglikelihood request: echo + max_tokens 0 + logprobs 1 on token ids', async () => {
  const tokens = [...context, ...continuation];
  const r = await api(srv, 'POST', '/v1/completions', { model: M, prompt: tokens, echo: true,
    max_tokens: 0, logprobs: 1, temperature: 0 });
  assert.equal(r.status, 200, r.text);
  const c = r.json.choices[0];
  const lp = c.logprobs;
  assert.equal(c.text, 'Q: What is the capital of France?\nA: Paris');
  assert.equal(lp.tokens.length, tokens.length);
  assert.equal(lp.token_logprobs[0], null);
  assert.equal(lp.top_logprobs[0], null);
  assert.equal(lp.text_offset[0], 0);
  assert.equal(Object.keys(lp.top_logprobs[1]).length, 1);
  assert.equal(r.json.usage.completion_tokens, 0);
  const rows = evalLogits(tokens);
  let want = 0, got = 0;
  for (let i = context.length; i < tokens.length; i++) {
    const w = logSoftmaxAt(rows[i - 1], tokens[i]);
    assert.ok(Math.abs(lp.token_logprobs[i] - w) < 1e-5, `position ${i}: ${lp.token_logprobs[i]} vs ${w}`);
    want += w;
    got += lp.token_logprobs[i];
  }
  assert.ok(Math.abs(got - want) < 1e-4, `${got} vs ${want}`);
  // is_greedy as the harness computes it: the top token at each position
  for (let i = 1; i < tokens.length; i++) {
    const top = Object.entries(lp.top_logprobs[i])[0];
    let best = 0;
    for (let k = 1; k < rows[i - 1].length; k++) if (rows[i - 1][k] > rows[i - 1][best]) best = k;
    assert.equal(Buffer.from(top[0], 'latin1').length >= 0, true);
    assert.ok(Math.abs(top[1] - logSoftmaxAt(rows[i - 1], best)) < 1e-5);
  }
});

test('batched token-id prompts and echo with generation', async () => {
  const a = [...context], b = byteIds('Hello');
  const r = await api(srv, 'POST', '/v1/completions', { model: M, prompt: [a, b], echo: true,
    max_tokens: 0, logprobs: 0 });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.choices.length, 2);
  assert.equal(r.json.choices[1].text, 'Hello');
  assert.equal(r.json.choices[1].logprobs.tokens.length, 5);
  const g = await api(srv, 'POST', '/v1/completions', { model: M, prompt: 'Hello', echo: true,
    max_tokens: 3, logprobs: 1, temperature: 0 });
  assert.equal(g.status, 200, g.text);
  const c = g.json.choices[0];
  assert.ok(c.text.startsWith('Hello'));
  assert.equal(c.logprobs.tokens.length, 5 + 3);
  assert.equal(c.logprobs.tokens.join(''), c.text);
});

test('token ids outside the vocabulary: 400', async () => {
  const r = await api(srv, 'POST', '/v1/completions', { model: M, prompt: [1, 2, 999999], max_tokens: 1 });
  assert.equal(r.status, 400);
  assert.equal(r.json.error.param, 'prompt');
  assert.match(r.json.error.message, /999999/);
});
