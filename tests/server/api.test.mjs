// The OpenAI surface through the official `openai` SDK: models, completions,
// chat, streaming with usage, stop strings, seeds, errors and auth.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { startServer, client, api, asciiBias, MODEL_NAME } from './lib/server.mjs';

let srv, oa;
before(async () => { srv = await startServer(); oa = client(srv); });
after(async () => { const e = await srv.stop(); assert.equal(e.code, 0, srv.stderr()); });

test('GET /v1/models lists the served model', async () => {
  const page = await oa.models.list();
  assert.deepEqual(page.data.map((m) => m.id), [MODEL_NAME]);
  assert.equal(page.data[0].object, 'model');
  const one = await oa.models.retrieve(MODEL_NAME);
  assert.equal(one.id, MODEL_NAME);
});

test('completion: response shape, usage, finish_reason length', async () => {
  const r = await oa.completions.create({ model: MODEL_NAME, prompt: 'Hello', max_tokens: 6, temperature: 0 });
  assert.match(r.id, /^cmpl-/);
  assert.equal(r.object, 'text_completion');
  assert.equal(typeof r.created, 'number');
  assert.equal(r.model, MODEL_NAME);
  assert.equal(r.choices.length, 1);
  assert.equal(r.choices[0].index, 0);
  assert.equal(typeof r.choices[0].text, 'string');
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.equal(r.usage.prompt_tokens, 5); // byte-level tokenizer: one token per byte
  assert.equal(r.usage.completion_tokens, 6);
  assert.equal(r.usage.total_tokens, 11);
  assert.equal(r.usage.prompt_tokens_details.cached_tokens, 0);
});

test('completion: prompt array and n give indexed choices; greedy choices agree', async () => {
  const r = await oa.completions.create({ model: MODEL_NAME, prompt: ['ab', 'cd'], n: 2, max_tokens: 4,
    temperature: 0, logit_bias: asciiBias() });
  assert.deepEqual(r.choices.map((c) => c.index), [0, 1, 2, 3]);
  assert.equal(r.choices[0].text, r.choices[1].text);
  assert.equal(r.choices[2].text, r.choices[3].text);
  const single = await oa.completions.create({ model: MODEL_NAME, prompt: 'cd', max_tokens: 4, temperature: 0,
    logit_bias: asciiBias() });
  assert.equal(single.choices[0].text, r.choices[2].text);
  assert.equal(r.usage.prompt_tokens, 4);
});

test('chat completion: shape and role', async () => {
  const r = await oa.chat.completions.create({ model: MODEL_NAME, max_tokens: 5, temperature: 0,
    messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hi' }] });
  assert.match(r.id, /^chatcmpl-/);
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(typeof r.choices[0].message.content, 'string');
  assert.ok(['stop', 'length'].includes(r.choices[0].finish_reason));
  // "System: Be brief.\n\nUser: Hi\n\nAssistant:" in bytes
  assert.equal(r.usage.prompt_tokens, 'System: Be brief.\n\nUser: Hi\n\nAssistant:'.length);
});

test('chat streaming: role first, content, finish, usage chunk, [DONE]; same text as non-streaming', async () => {
  const req = { model: MODEL_NAME, max_tokens: 12, temperature: 0, logit_bias: asciiBias(),
    messages: [{ role: 'user', content: 'Tell me a story' }] };
  const whole = await oa.chat.completions.create(req);
  const stream = await oa.chat.completions.create({ ...req, stream: true, stream_options: { include_usage: true } });
  const chunks = [];
  for await (const c of stream) chunks.push(c);
  assert.equal(chunks[0].choices[0].delta.role, 'assistant');
  const ids = new Set(chunks.map((c) => c.id));
  assert.equal(ids.size, 1);
  const content = chunks.filter((c) => c.choices.length).map((c) => c.choices[0].delta.content || '').join('');
  assert.equal(content, whole.choices[0].message.content);
  const withChoices = chunks.filter((c) => c.choices.length);
  assert.equal(withChoices.at(-1).choices[0].finish_reason, whole.choices[0].finish_reason);
  for (const c of withChoices.slice(0, -1)) assert.equal(c.choices[0].finish_reason, null);
  const last = chunks.at(-1);
  assert.deepEqual(last.choices, []);
  assert.equal(last.usage.completion_tokens, whole.usage.completion_tokens);
  assert.equal(last.usage.prompt_tokens, whole.usage.prompt_tokens);
});

test('completion streaming: raw SSE framing ends with [DONE], text matches', async () => {
  const body = { model: MODEL_NAME, prompt: 'Once', max_tokens: 8, temperature: 0 };
  const whole = await api(srv, 'POST', '/v1/completions', body);
  const r = await api(srv, 'POST', '/v1/completions', { ...body, stream: true });
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type'), /text\/event-stream/);
  const events = r.text.split('\n\n').filter(Boolean);
  assert.equal(events.at(-1), 'data: [DONE]');
  let text = '';
  for (const ev of events.slice(0, -1)) {
    assert.ok(ev.startsWith('data: '), ev);
    const j = JSON.parse(ev.slice(6));
    assert.equal(j.object, 'text_completion');
    assert.ok(!('usage' in j) || j.usage === null);
    text += j.choices[0].text;
  }
  assert.equal(text, whole.json.choices[0].text);
  // Every event's bytes are valid UTF-8 on their own: no character split across chunks.
  for (const ev of r.bytes.toString().split('\n\n')) new TextDecoder('utf-8', { fatal: true }).decode(Buffer.from(ev));
});

test('stop strings cut the text and give finish_reason stop', async () => {
  const base = { model: MODEL_NAME, prompt: 'Say', max_tokens: 16, temperature: 0, logit_bias: asciiBias() };
  const full = (await oa.completions.create(base)).choices[0].text;
  assert.ok(full.length >= 6, full);
  const stop = full.slice(3, 5);
  const cut = await oa.completions.create({ ...base, stop: [stop] });
  assert.equal(cut.choices[0].finish_reason, 'stop');
  assert.equal(cut.choices[0].text, full.slice(0, full.indexOf(stop)));
  const s = await oa.completions.create({ ...base, stop, stream: true });
  let text = '', fin = null;
  for await (const c of s) { text += c.choices[0]?.text || ''; fin = c.choices[0]?.finish_reason || fin; }
  assert.equal(text, cut.choices[0].text);
  assert.equal(fin, 'stop');
});

test('seed makes sampling reproducible', async () => {
  const req = { model: MODEL_NAME, prompt: 'x', max_tokens: 8, temperature: 1, top_p: 1, seed: 42 };
  const a = await oa.completions.create(req);
  const b = await oa.completions.create(req);
  assert.equal(a.choices[0].text, b.choices[0].text);
});

test('extensions top_k, penalty_decay and user are accepted; unknown fields ignored', async () => {
  const r = await api(srv, 'POST', '/v1/completions', { model: MODEL_NAME, prompt: 'x', max_tokens: 2,
    top_k: 5, penalty_decay: 0.99, user: 'u1', frequency_penalty: 0.5, presence_penalty: 0.1, something_new: [1] });
  assert.equal(r.status, 200, r.text);
});

// OpenAI parameters the server knows but does not implement: a 400 naming the
// parameter, never a 200 that ignored it; their do-nothing forms, and the
// parameters that never change a reply, pass.
test('parameters the server lacks are a 400 naming them; their empty forms pass', async () => {
  const chat = { model: MODEL_NAME, messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 };
  const fn = { name: 'f', parameters: { type: 'object', properties: {} } };
  const refused = [
    ['completions', { suffix: ' world' }, 'suffix', 'unsupported_parameter'],
    ['completions', { best_of: 3 }, 'best_of', 'unsupported_value'],
    ['completions', { best_of: 1, n: 2 }, 'best_of', null],
    ['chat', { functions: [fn] }, 'functions', 'unsupported_parameter'],
    ['chat', { function_call: 'auto' }, 'function_call', 'unsupported_parameter'],
    ['chat', { modalities: ['text', 'audio'] }, 'modalities', 'unsupported_parameter'],
    ['chat', { audio: { voice: 'alloy', format: 'wav' } }, 'audio', 'unsupported_parameter'],
    ['chat', { reasoning_effort: 'low' }, 'reasoning_effort', 'unsupported_parameter'],
    ['chat', { verbosity: 'low' }, 'verbosity', 'unsupported_parameter'],
    ['chat', { web_search_options: {} }, 'web_search_options', 'unsupported_parameter'],
    ['chat', { store: true }, 'store', 'unsupported_parameter'],
    ['chat', { metadata: 'x' }, 'metadata', null],
    ['chat', { prompt_cache_retention: 24 }, 'prompt_cache_retention', null],
    ['responses', { background: true }, 'background', 'unsupported_parameter'],
    ['responses', { reasoning: { effort: 'high' } }, 'reasoning', 'unsupported_parameter'],
    ['responses', { top_logprobs: 21 }, 'top_logprobs', null],
    ['responses', { include: [3] }, 'include', null],
    ['responses', { conversation: 'conv_1' }, 'conversation', 'unsupported_parameter'],
    ['responses', { truncation: 'middle' }, 'truncation', null],
    ['responses', { text: { verbosity: 'high' } }, 'text.verbosity', 'unsupported_parameter'],
    ['responses', { stream: 'yes' }, 'stream', null],
  ];
  const create = (kind, extra) => kind === 'completions'
    ? oa.completions.create({ model: MODEL_NAME, prompt: 'x', max_tokens: 2, ...extra })
    : kind === 'chat' ? oa.chat.completions.create({ ...chat, ...extra })
      : oa.responses.create({ model: MODEL_NAME, input: 'hi', max_output_tokens: 2, ...extra });
  for (const [kind, extra, param, code] of refused)
    await assert.rejects(create(kind, extra), (e) => {
      assert.ok(e instanceof OpenAI.BadRequestError, `${kind} ${param}: ${e}`);
      assert.equal(e.param, param);
      assert.equal(e.code, code, e.message);
      assert.match(e.message, new RegExp(param.replace('.', '\\.')));
      return true;
    }, `${kind} ${JSON.stringify(extra)}`);

  const accepted = [
    ['completions', { suffix: '', best_of: 2, n: 2 }],
    ['chat', { modalities: ['text'], store: false, audio: null, functions: null, metadata: { a: 'b' },
      service_tier: 'auto', prompt_cache_key: 'k', prompt_cache_retention: '24h', safety_identifier: 'u',
      prediction: { type: 'content', content: 'hi' } }],
    ['responses', { background: false, reasoning: { effort: null }, include: ['reasoning.encrypted_content'],
      top_logprobs: 0, truncation: 'auto', max_tool_calls: 2, metadata: { a: 'b' },
      prompt_cache_retention: 'in_memory' }],
  ];
  for (const [kind, extra] of accepted) {
    const r = await create(kind, extra);
    assert.ok(r.id, `${kind} ${JSON.stringify(extra)}`);
  }
});

test('responses: store false keeps no copy to continue from; the reply says so', async () => {
  const kept = await oa.responses.create({ model: MODEL_NAME, input: 'hi', max_output_tokens: 2 });
  assert.equal(kept.store, true);
  const gone = await oa.responses.create({ model: MODEL_NAME, input: 'hi', max_output_tokens: 2,
    store: false, truncation: 'auto' });
  assert.equal(gone.store, false);
  assert.equal(gone.truncation, 'auto');
  await oa.responses.create({ model: MODEL_NAME, input: 'more', max_output_tokens: 2,
    previous_response_id: kept.id });
  await assert.rejects(oa.responses.create({ model: MODEL_NAME, input: 'more', max_output_tokens: 2,
    previous_response_id: gone.id }), (e) => e.status === 404 && e.param === 'previous_response_id');
});

test('errors: unknown model 404, bad type 400 with param, SDK error classes', async () => {
  await assert.rejects(oa.completions.create({ model: 'nope', prompt: 'x' }), (e) => {
    assert.ok(e instanceof OpenAI.NotFoundError);
    assert.equal(e.status, 404);
    assert.equal(e.code, 'model_not_found');
    return true;
  });
  await assert.rejects(oa.chat.completions.create({ model: MODEL_NAME, messages: 'hi' }), (e) => {
    assert.ok(e instanceof OpenAI.BadRequestError);
    assert.equal(e.param, 'messages');
    return true;
  });
  await assert.rejects(oa.completions.create({ model: MODEL_NAME, prompt: 'x', temperature: 'hot' }),
    (e) => e.status === 400 && e.param === 'temperature' && e.type === 'invalid_request_error');
  await assert.rejects(oa.completions.create({ model: MODEL_NAME, prompt: 'x', logit_bias: { 9999999: 1 } }),
    (e) => e.status === 400 && e.param === 'logit_bias');
  const r = await api(srv, 'GET', '/v1/nothing');
  assert.equal(r.status, 404);
  assert.deepEqual(Object.keys(r.json.error).sort(), ['code', 'message', 'param', 'type']);
  const m = await api(srv, 'POST', '/v1/models', {});
  assert.equal(m.status, 405);
  assert.match(m.headers.get('allow'), /GET/);
});

test('max_completion_tokens is honoured exactly (the cap: limits.test.mjs)', async () => {
  // Only letters can be drawn (no "\n\n", no end-of-text): the limit alone ends the reply.
  const r = await oa.chat.completions.create({ model: MODEL_NAME, max_completion_tokens: 3, temperature: 0,
    logit_bias: asciiBias(), messages: [{ role: 'user', content: 'x' }] });
  assert.equal(r.usage.completion_tokens, 3);
  assert.equal(r.choices[0].finish_reason, 'length');
});

test('--api-key: Bearer required except /health; CORS only for listed origins', async () => {
  const s2 = await startServer({ args: ['--api-key', 'sekret', '--cors-origin', 'http://ui.example'] });
  try {
    await assert.rejects(client(s2).models.list(), (e) => e instanceof OpenAI.AuthenticationError &&
      e.status === 401 && e.code === 'invalid_api_key');
    const ok = await client(s2, { apiKey: 'sekret' }).completions.create({ model: MODEL_NAME, prompt: 'a', max_tokens: 1 });
    assert.equal(ok.choices.length, 1);
    assert.equal((await api(s2, 'GET', '/health')).status, 200);
    assert.equal((await api(s2, 'GET', '/metrics')).status, 401);
    const pre = await api(s2, 'OPTIONS', '/v1/chat/completions', undefined,
      { Origin: 'http://ui.example', 'Access-Control-Request-Method': 'POST' });
    assert.equal(pre.status, 204);
    assert.equal(pre.headers.get('access-control-allow-origin'), 'http://ui.example');
    const good = await api(s2, 'GET', '/v1/models', undefined, { Origin: 'http://ui.example', Authorization: 'Bearer sekret' });
    assert.equal(good.headers.get('access-control-allow-origin'), 'http://ui.example');
    const bad = await api(s2, 'GET', '/v1/models', undefined, { Origin: 'http://evil.example', Authorization: 'Bearer sekret' });
    assert.equal(bad.status, 200);
    assert.equal(bad.headers.get('access-control-allow-origin'), null);
  } finally {
    assert.equal((await s2.stop()).code, 0, s2.stderr());
  }
});

test('env variables configure the server; --help documents every flag', async () => {
  const { execFileSync } = await import('node:child_process');
  const { BIN } = await import('./lib/server.mjs');
  const help = execFileSync(BIN, ['serve', '--help']).toString();
  for (const f of ['--model', '--vocab', '--host', '--port', '--state-dir', '--pool-mb', '--api-key', '--cors-origin'])
    assert.ok(help.includes(f), f);
  assert.match(help, /METASTATE_POOL_MB/);
  const s3 = await startServer({ env: { METASTATE_API_KEY: 'envkey' } });
  try {
    assert.equal((await api(s3, 'GET', '/v1/models')).status, 401);
    assert.equal((await api(s3, 'GET', '/v1/models', undefined, { Authorization: 'Bearer envkey' })).status, 200);
  } finally {
    assert.equal((await s3.stop()).code, 0, s3.stderr());
  }
});

test('a model that cannot be loaded: clear message, exit status 1; bad flags: status 2', async () => {
  const { spawnSync } = await import('node:child_process');
  const { BIN, tmpDir } = await import('./lib/server.mjs');
  const { writeFileSync } = await import('node:fs');
  const bad = `${tmpDir('bad')}/broken.safetensors`;
  writeFileSync(bad, 'this is not a model');
  const r = spawnSync(BIN, ['serve', '--model', bad, '--port', String(20000 + Math.floor(Math.random() * 40000))],
    { timeout: 60000, encoding: 'utf8' });
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, /cannot load model: .*broken\.safetensors/);
  const u = spawnSync(BIN, ['serve', '--port', '99999999', '--model', bad], { timeout: 10000, encoding: 'utf8' });
  assert.equal(u.status, 2);
  assert.match(u.stderr, /--port/);
});
