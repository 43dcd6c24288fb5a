// Agent features through the official `openai` SDK on the trained default
// model (byte vocabulary): structured output (parse with zod), tools round
// trip with a role "tool" reply, streamed tool-call deltas, logprobs shapes
// and values against `metastate eval`, x-request-id, and the Responses API
// (plain, streamed, cut at max_output_tokens, logprobs, previous_response_id
// with cached tokens, retrieve and delete, input items, text.format, function
// tools, 400 for built-in tools).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { z } from 'zod';
import { zodResponseFormat, zodTextFormat } from 'openai/helpers/zod';
import { startServer, client, api } from './lib/server.mjs';
import { defaultServer, DEFAULT_NAME as M, byteIds, evalLogits, logSoftmaxAt, sseEvents } from './lib/agent.mjs';

let srv, oa;
before(async () => { srv = await startServer(defaultServer); oa = client(srv); });
after(async () => { const e = await srv.stop(); assert.equal(e.code, 0, srv.stderr()); });

const Person = z.object({
  name: z.string().max(20),
  age: z.number().int().min(0).max(120),
  tags: z.array(z.string().max(8)).max(3),
  mood: z.enum(['happy', 'sad', 'neutral']),
  nickname: z.string().nullable(),
});

const weatherTool = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Current weather of a city',
    parameters: { type: 'object', properties: { city: { type: 'string', maxLength: 20 } },
      required: ['city'], additionalProperties: false },
  },
};
const timeTool = {
  type: 'function',
  function: {
    name: 'get_time',
    description: 'Current time in a time zone',
    parameters: { type: 'object', properties: { zone: { type: 'string', maxLength: 10 },
      hours24: { type: 'boolean' } }, required: ['zone', 'hours24'], additionalProperties: false },
  },
};

test('chat.completions.parse with a zod schema: always valid and conforming', async () => {
  for (const seed of [1, 2, 3]) {
    const r = await oa.chat.completions.parse({
      model: M, seed, temperature: 1, max_tokens: 160,
      messages: [{ role: 'user', content: 'Describe a person as JSON.' }],
      response_format: zodResponseFormat(Person, 'person'),
    });
    const msg = r.choices[0].message;
    assert.ok(msg.parsed, `seed ${seed}: not parsed: ${msg.content}`);
    Person.parse(msg.parsed);
    assert.equal(r.choices[0].finish_reason, 'stop');
  }
});

test('json_object: the reply is a JSON object, also when max_tokens forces it short', async () => {
  for (const max_tokens of [12, 64]) {
    const r = await oa.chat.completions.create({
      model: M, seed: 5, max_tokens, response_format: { type: 'json_object' },
      messages: [{ role: 'user', content: 'Reply in JSON.' }],
    });
    const v = JSON.parse(r.choices[0].message.content);
    assert.equal(typeof v, 'object');
    assert.ok(v && !Array.isArray(v));
    assert.ok(r.usage.completion_tokens <= max_tokens);
  }
});

test('strict schema with an unsupported keyword: 400 naming it', async () => {
  await assert.rejects(oa.chat.completions.create({
    model: M, messages: [{ role: 'user', content: 'x' }],
    response_format: { type: 'json_schema', json_schema: { name: 'x', strict: true,
      schema: { type: 'object', properties: { a: { type: 'string', pattern: '^a' } }, required: ['a'],
        additionalProperties: false } } },
  }), (e) => e.status === 400 && /'pattern'/.test(e.message));
});

test('tools: required call, then a role "tool" reply closes the loop', async () => {
  const messages = [{ role: 'user', content: 'What is the weather in Paris?' }];
  const r1 = await oa.chat.completions.create({ model: M, seed: 3, messages, tools: [weatherTool],
    tool_choice: 'required', max_tokens: 80 });
  const c1 = r1.choices[0];
  assert.equal(c1.finish_reason, 'tool_calls');
  assert.equal(c1.message.content, null);
  assert.ok(c1.message.tool_calls.length >= 1);
  const call = c1.message.tool_calls[0];
  assert.match(call.id, /^call_/);
  assert.equal(call.type, 'function');
  assert.equal(call.function.name, 'get_weather');
  const args = JSON.parse(call.function.arguments);
  assert.equal(typeof args.city, 'string');
  messages.push(c1.message);
  messages.push({ role: 'tool', tool_call_id: call.id, content: '22 C and sunny' });
  const r2 = await oa.chat.completions.create({ model: M, seed: 3, messages, tools: [weatherTool],
    tool_choice: 'none', max_tokens: 20 });
  assert.equal(typeof r2.choices[0].message.content, 'string');
  assert.ok(['stop', 'length'].includes(r2.choices[0].finish_reason));
  // the documented template (docs/API.md), without the tool list under tool_choice "none"
  const prompt = 'User: What is the weather in Paris?\n\nAssistant: Call: ' +
    JSON.stringify([{ name: 'get_weather', arguments: args }]) +
    '\n\nTool: get_weather -> 22 C and sunny\n\nAssistant:';
  assert.equal(r2.usage.prompt_tokens, Buffer.byteLength(prompt));
});

test('tools: a named tool_choice calls that function; parallel_tool_calls false gives one call', async () => {
  const r = await oa.chat.completions.create({ model: M, seed: 9, max_tokens: 80,
    messages: [{ role: 'user', content: 'Time in Tokyo?' }], tools: [weatherTool, timeTool],
    tool_choice: { type: 'function', function: { name: 'get_time' } }, parallel_tool_calls: false });
  const calls = r.choices[0].message.tool_calls;
  assert.equal(calls.length, 1);
  assert.equal(calls[0].function.name, 'get_time');
  const a = JSON.parse(calls[0].function.arguments);
  assert.equal(typeof a.zone, 'string');
  assert.equal(typeof a.hours24, 'boolean');
});

test('tools: allowed_tools (chat and Responses forms) calls only the listed functions', async () => {
  for (const seed of [1, 2, 3]) {
    const r = await oa.chat.completions.create({ model: M, seed, max_tokens: 120,
      messages: [{ role: 'user', content: 'Weather in Rome?' }], tools: [weatherTool, timeTool],
      tool_choice: { type: 'allowed_tools', allowed_tools: { mode: 'required',
        tools: [{ type: 'function', function: { name: 'get_time' } }] } } });
    const calls = r.choices[0].message.tool_calls;
    assert.ok(calls?.length >= 1, JSON.stringify(r.choices[0]));
    assert.deepEqual([...new Set(calls.map((c) => c.function.name))], ['get_time']);
  }
  const t = await oa.responses.create({ model: M, max_output_tokens: 120, input: 'Weather in Rome?',
    tools: [weatherTool, timeTool].map(({ function: f }) => ({ type: 'function', ...f })),
    tool_choice: { type: 'allowed_tools', mode: 'required', tools: [{ type: 'function', name: 'get_time' }] } });
  const names = t.output.filter((o) => o.type === 'function_call').map((o) => o.name);
  assert.ok(names.length >= 1 && names.every((n) => n === 'get_time'), JSON.stringify(t.output));
  await assert.rejects(oa.chat.completions.create({ model: M, messages: [{ role: 'user', content: 'x' }],
    tools: [weatherTool], tool_choice: { type: 'allowed_tools', allowed_tools: { mode: 'required',
      tools: [{ type: 'function', function: { name: 'nope' } }] } } }),
  (e) => e.status === 400 && e.param === 'tool_choice' && /no function named 'nope'/.test(e.message));
});

test('tools: streamed tool-call deltas add up to the non-streamed call', async () => {
  const req = { model: M, seed: 4, max_tokens: 80, tools: [weatherTool], tool_choice: 'required',
    messages: [{ role: 'user', content: 'Weather in Rome?' }] };
  const whole = await oa.chat.completions.create(req);
  const stream = await oa.chat.completions.create({ ...req, stream: true });
  const calls = [];
  let finish = null, content = '';
  for await (const ch of stream) {
    const c = ch.choices[0];
    if (!c) continue;
    if (c.delta.content) content += c.delta.content;
    for (const d of c.delta.tool_calls || []) {
      if (!calls[d.index]) {
        assert.match(d.id, /^call_/);
        assert.equal(d.type, 'function');
        calls[d.index] = { name: d.function.name, arguments: d.function.arguments || '' };
      } else {
        calls[d.index].arguments += d.function.arguments || '';
      }
    }
    if (c.finish_reason) finish = c.finish_reason;
  }
  assert.equal(finish, 'tool_calls');
  assert.equal(content, '');
  assert.deepEqual(calls, whole.choices[0].message.tool_calls.map((t) =>
    ({ name: t.function.name, arguments: t.function.arguments })));
});

test('chat logprobs: shapes, and values equal the log-softmax of `metastate eval` logits', async () => {
  const r = await oa.chat.completions.create({ model: M, max_tokens: 8, temperature: 0,
    presence_penalty: 0, frequency_penalty: 0, logprobs: true, top_logprobs: 3,
    messages: [{ role: 'user', content: 'Hi' }] });
  const lp = r.choices[0].logprobs.content;
  assert.equal(lp.length, r.usage.completion_tokens);
  const prompt = byteIds('User: Hi\n\nAssistant:');
  const gen = lp.map((e) => e.bytes[0] + 1);
  for (const e of lp) {
    assert.equal(typeof e.token, 'string');
    assert.equal(e.bytes.length, 1);
    assert.ok(e.logprob <= 0);
    assert.equal(e.top_logprobs.length, 3);
    assert.ok(e.top_logprobs[0].logprob >= e.top_logprobs[1].logprob);
    // greedy without penalties: the chosen token is the most likely one
    assert.deepEqual(e.top_logprobs[0].bytes, e.bytes);
  }
  const rows = evalLogits([...prompt, ...gen]);
  for (let i = 0; i < gen.length; i++) {
    const want = logSoftmaxAt(rows[prompt.length - 1 + i], gen[i]);
    assert.ok(Math.abs(lp[i].logprob - want) < 1e-5, `token ${i}: ${lp[i].logprob} vs ${want}`);
  }
  // the text is the tokens after the one leading space the template puts back
  assert.equal(lp.map((e) => e.token).join('').replace(/^ /, ''), r.choices[0].message.content);
});

test('chat logprobs streamed: same entries as non-streamed', async () => {
  const req = { model: M, max_tokens: 8, temperature: 0, logprobs: true, top_logprobs: 2,
    messages: [{ role: 'user', content: 'Hello there' }] };
  const whole = await oa.chat.completions.create(req);
  const stream = await oa.chat.completions.create({ ...req, stream: true });
  const got = [];
  for await (const ch of stream) for (const e of ch.choices[0]?.logprobs?.content || []) got.push(e);
  assert.deepEqual(got, whole.choices[0].logprobs.content);
});

test('completions logprobs: tokens, token_logprobs, top_logprobs, text_offset', async () => {
  const r = await oa.completions.create({ model: M, prompt: 'Hello', max_tokens: 5, temperature: 0,
    logprobs: 2 });
  const l = r.choices[0].logprobs;
  assert.equal(l.tokens.length, 5);
  assert.equal(l.tokens.join(''), r.choices[0].text);
  assert.equal(l.token_logprobs.length, 5);
  assert.equal(Object.keys(l.top_logprobs[0]).length, 2);
  assert.equal(l.text_offset[0], 5);
});

test('x-request-id: echoed when sent, generated otherwise, visible to the SDK', async () => {
  const a = await api(srv, 'GET', '/v1/models', undefined, { 'X-Request-ID': 'req-abc-123' });
  assert.equal(a.headers.get('x-request-id'), 'req-abc-123');
  const b = await api(srv, 'POST', '/v1/chat/completions', { model: 'nope', messages: [] });
  assert.equal(b.status, 400);
  assert.match(b.headers.get('x-request-id') || '', /^req_[0-9a-f]{16,}$/);
  const { data, response } = await oa.models.list().withResponse();
  assert.ok(data);
  assert.ok(response.headers.get('x-request-id'));
});

test('responses.create: text input, instructions, usage; streamed events add up', async () => {
  const req = { model: M, input: 'Say hello.', instructions: 'You are brief.', max_output_tokens: 12,
    temperature: 0 };
  const r = await oa.responses.create(req);
  assert.match(r.id, /^resp_/);
  assert.equal(r.object, 'response');
  assert.ok(['completed', 'incomplete'].includes(r.status));
  assert.equal(typeof r.output_text, 'string');
  assert.equal(r.output[0].type, 'message');
  assert.equal(r.output[0].content[0].type, 'output_text');
  assert.ok(r.usage.input_tokens > 0);
  assert.ok(r.usage.output_tokens > 0);
  const stream = await oa.responses.create({ ...req, stream: true });
  const types = [];
  let delta = '', done = null;
  for await (const ev of stream) {
    types.push(ev.type);
    if (ev.type === 'response.output_text.delta') delta += ev.delta;
    if (ev.type === 'response.completed' || ev.type === 'response.incomplete') done = ev.response;
  }
  assert.equal(types[0], 'response.created');
  assert.ok(types.includes('response.output_item.added'));
  assert.ok(types.includes('response.output_text.done'));
  assert.equal(delta, r.output_text);
  assert.equal(done.output[0].content[0].text, r.output_text);
});

test('responses: a reply cut at max_output_tokens is incomplete, its message item too; completed_at only when completed', async () => {
  // Greedy, the default model ends this reply after 95 bytes.
  const req = { model: M, input: 'Say hello.', instructions: 'Be brief.', temperature: 0 };
  const cut = await oa.responses.create({ ...req, max_output_tokens: 1 }); // chat replies end on "\n\n": 2 bytes
  assert.equal(cut.status, 'incomplete');
  assert.deepEqual(cut.incomplete_details, { reason: 'max_output_tokens' });
  assert.equal(cut.output[0].status, 'incomplete');
  assert.equal(cut.completed_at, null);
  const stream = await oa.responses.create({ ...req, max_output_tokens: 1, stream: true });
  const last = {};
  for await (const ev of stream) last[ev.type] = ev;
  assert.equal(last['response.output_item.done'].item.status, 'incomplete');
  assert.equal(last['response.incomplete'].response.output[0].status, 'incomplete');
  assert.equal(last['response.completed'], undefined);
  const whole = await oa.responses.create({ ...req, max_output_tokens: 400 });
  assert.equal(whole.status, 'completed', 'the default model did not end its reply within 400 bytes');
  assert.equal(whole.incomplete_details, null);
  assert.equal(whole.output[0].status, 'completed');
  assert.ok(Number.isInteger(whole.completed_at) && whole.completed_at >= whole.created_at,
    `completed_at ${whole.completed_at}, created_at ${whole.created_at}`);
});

test('responses: include message.output_text.logprobs gives chat\'s entries, whole and streamed', async () => {
  const req = { model: M, input: 'Say hi.', max_output_tokens: 6, temperature: 0 };
  const chat = await oa.chat.completions.create({ model: M, messages: [{ role: 'user', content: 'Say hi.' }],
    max_tokens: 6, temperature: 0, logprobs: true, top_logprobs: 2 });
  const want = chat.choices[0].logprobs.content;
  assert.equal(want.length, 6);
  const r = await oa.responses.create({ ...req, include: ['message.output_text.logprobs'], top_logprobs: 2 });
  assert.deepEqual(r.output[0].content[0].logprobs, want);
  const stream = await oa.responses.create({ ...req, include: ['message.output_text.logprobs'], top_logprobs: 2,
    stream: true });
  const deltas = [];
  let done = null;
  for await (const ev of stream) {
    if (ev.type === 'response.output_text.delta') deltas.push(...ev.logprobs);
    if (ev.type === 'response.output_text.done') done = ev.logprobs;
  }
  assert.deepEqual(deltas, want);
  assert.deepEqual(done, want);
  const none = await oa.responses.create({ ...req, top_logprobs: 2 }); // include did not ask: none, as OpenAI
  assert.deepEqual(none.output[0].content[0].logprobs, []);
});

test('responses: message-list input and previous_response_id continue with cached tokens', async () => {
  const r1 = await oa.responses.create({ model: M, max_output_tokens: 10, temperature: 0,
    input: [{ role: 'user', content: [{ type: 'input_text', text: 'My name is Ann.' }] }] });
  const r2 = await oa.responses.create({ model: M, max_output_tokens: 10, temperature: 0,
    previous_response_id: r1.id, input: 'What is my name?' });
  assert.equal(r2.previous_response_id, r1.id);
  assert.ok(r2.usage.input_tokens_details.cached_tokens > 0, JSON.stringify(r2.usage));
  assert.ok(r2.usage.input_tokens > r1.usage.input_tokens);
  await assert.rejects(oa.responses.create({ model: M, previous_response_id: 'resp_unknown', input: 'x' }),
    (e) => e.status === 404 || e.status === 400);
});

test('responses: retrieve gives the stored response (streamed ones too); delete forgets it', async () => {
  const r = await oa.responses.create({ model: M, input: 'Say hello.', max_output_tokens: 8, temperature: 0 });
  const got = await oa.responses.retrieve(r.id);
  assert.deepEqual(got, r);
  const stream = await oa.responses.create({ model: M, input: 'Say hi.', max_output_tokens: 8, stream: true });
  let done = null;
  for await (const ev of stream) if (ev.type === 'response.completed' || ev.type === 'response.incomplete') done = ev.response;
  const { output_text: text, ...again } = await oa.responses.retrieve(done.id); // the SDK adds output_text
  assert.deepEqual(again, done);
  assert.equal(text, done.output[0].content[0].text);
  const del = await api(srv, 'DELETE', `/v1/responses/${r.id}`);
  assert.equal(del.status, 200);
  assert.deepEqual(del.json, { id: r.id, object: 'response.deleted', deleted: true });
  await oa.responses.delete(done.id); // the SDK's call
  for (const id of [r.id, done.id])
    await assert.rejects(oa.responses.retrieve(id), (e) => e.status === 404 && e.code === 'not_found');
  await assert.rejects(oa.responses.create({ model: M, input: 'more', previous_response_id: r.id }),
    (e) => e.status === 404 && e.param === 'previous_response_id');
  await assert.rejects(oa.responses.delete(r.id), (e) => e.status === 404);
  const unkept = await oa.responses.create({ model: M, input: 'hi', max_output_tokens: 2, store: false });
  await assert.rejects(oa.responses.retrieve(unkept.id), (e) => e.status === 404);
  const replay = await api(srv, 'GET', `/v1/responses/${unkept.id}?stream=true`);
  assert.equal(replay.status, 400);
  assert.equal(replay.json.error.param, 'stream');
});

test('responses: inputItems.list pages through what the request sent, newest first; chains list only their own input; cancel is a 400', async () => {
  const input = [
    { role: 'user', content: 'What is the weather in Oslo?' },
    { type: 'message', role: 'assistant', content: [{ type: 'output_text', text: 'Let me look.' }] },
    { type: 'function_call', call_id: 'call_1', name: 'get_weather', arguments: '{"city":"Oslo"}' },
    { type: 'function_call_output', call_id: 'call_1', output: 'rain, 4 C' },
    { type: 'message', role: 'user', id: 'msg_client', content: [{ type: 'input_text', text: 'And tomorrow?' }] },
  ];
  const r = await oa.responses.create({ model: M, input, max_output_tokens: 4, temperature: 0 });
  // The SDK's auto-pagination: pages of two, each asked for after the last id of the one before.
  const seen = [];
  for await (const item of oa.responses.inputItems.list(r.id, { limit: 2 })) seen.push(item);
  assert.equal(seen.length, input.length);
  const asc = (await oa.responses.inputItems.list(r.id, { order: 'asc', limit: 100 })).data;
  assert.deepEqual(asc, [...seen].reverse());
  assert.equal(new Set(asc.map((i) => i.id)).size, input.length, 'ids are unique');
  assert.ok(asc.every((i) => i.status === 'completed'));
  assert.equal(asc[4].id, 'msg_client', 'a client\'s id is kept');
  assert.match(asc[0].id, /^msg_/);
  assert.match(asc[2].id, /^fc_/);
  // What was sent, as items (a string content as one text part).
  assert.deepEqual(asc.map((i) => i.type), ['message', 'message', 'function_call', 'function_call_output', 'message']);
  assert.deepEqual(asc[0].content, [{ type: 'input_text', text: input[0].content }]);
  assert.equal(asc[1].content[0].text, 'Let me look.');
  assert.deepEqual([asc[2].call_id, asc[2].name, asc[2].arguments], ['call_1', 'get_weather', '{"city":"Oslo"}']);
  assert.deepEqual([asc[3].call_id, asc[3].output], ['call_1', 'rain, 4 C']);
  assert.deepEqual(asc[4].content, input[4].content);
  // The list object itself, and the cursors both ways.
  const page = await api(srv, 'GET', `/v1/responses/${r.id}/input_items?limit=2&order=asc&after=${asc[0].id}`);
  assert.equal(page.status, 200, page.text);
  assert.deepEqual(page.json, { object: 'list', data: asc.slice(1, 3), first_id: asc[1].id, last_id: asc[2].id, has_more: true });
  const before = await api(srv, 'GET', `/v1/responses/${r.id}/input_items?before=${asc[1].id}`);
  assert.deepEqual(before.json.data, asc.slice(2).reverse(), 'newest first, down to the one before');
  // A continuation lists its own input, not the chain's (a stream's record too).
  const stream = await oa.responses.create({ model: M, input: 'Thanks!', previous_response_id: r.id,
    max_output_tokens: 4, stream: true });
  let done = null;
  for await (const ev of stream) if (ev.type === 'response.completed' || ev.type === 'response.incomplete') done = ev.response;
  const own = (await oa.responses.inputItems.list(done.id)).data;
  assert.equal(own.length, 1);
  assert.deepEqual([own[0].role, own[0].content], ['user', [{ type: 'input_text', text: 'Thanks!' }]]);
  // Bad queries are 400s naming the parameter; unknown, unkept and deleted responses 404s.
  for (const [q, param] of [['limit=0', 'limit'], ['limit=101', 'limit'], ['limit=x', 'limit'], ['order=up', 'order'],
    ['after=msg_nowhere', 'after'], ['include=message.input_image.image_url', 'include']]) {
    const b = await api(srv, 'GET', `/v1/responses/${r.id}/input_items?${q}`);
    assert.equal(b.status, 400, q);
    assert.equal(b.json.error.param, param, q);
  }
  await assert.rejects(oa.responses.inputItems.list('resp_unknown'), (e) => e.status === 404);
  const unkept = await oa.responses.create({ model: M, input: 'hi', max_output_tokens: 2, store: false });
  await assert.rejects(oa.responses.inputItems.list(unkept.id), (e) => e.status === 404);
  // Nothing runs in the background, so nothing can be cancelled: a 400 that says so, 404 if unknown.
  await assert.rejects(oa.responses.cancel(r.id), (e) => e.status === 400 && /background/.test(e.message));
  await assert.rejects(oa.responses.cancel('resp_unknown'), (e) => e.status === 404);
  await oa.responses.delete(r.id);
  await assert.rejects(oa.responses.inputItems.list(r.id), (e) => e.status === 404);
  assert.equal((await api(srv, 'POST', `/v1/responses/${done.id}/input_items`, {})).status, 405);
});

test('responses: text.format json_schema (responses.parse with zod) and function tools', async () => {
  const r = await oa.responses.parse({ model: M, max_output_tokens: 160, input: 'A person as JSON.',
    text: { format: zodTextFormat(Person, 'person') } });
  Person.parse(r.output_parsed);
  const t = await oa.responses.create({ model: M, max_output_tokens: 80, input: 'Weather in Oslo?',
    tools: [{ type: 'function', name: 'get_weather', description: 'weather',
      parameters: weatherTool.function.parameters, strict: true }], tool_choice: 'required' });
  const fc = t.output.find((o) => o.type === 'function_call');
  assert.ok(fc, JSON.stringify(t.output));
  assert.equal(fc.name, 'get_weather');
  assert.match(fc.call_id, /^call_/);
  assert.equal(typeof JSON.parse(fc.arguments).city, 'string');
  // the function's output goes back as an input item
  const t2 = await oa.responses.create({ model: M, max_output_tokens: 10, previous_response_id: t.id,
    input: [{ type: 'function_call_output', call_id: fc.call_id, output: '3 C, rain' }] });
  assert.equal(typeof t2.output_text, 'string');
});

test('responses: built-in tools are a clear 400', async () => {
  await assert.rejects(oa.responses.create({ model: M, input: 'x', tools: [{ type: 'web_search_preview' }] }),
    (e) => e.status === 400 && /built-in/.test(e.message));
});

test('responses: a function_call_output given as text parts reaches the model like its string', async () => {
  const call = { type: 'function_call', call_id: 'call_1', name: 'get_weather', arguments: '{"city":"Oslo"}' };
  const ask = (output) => oa.responses.create({ model: M, max_output_tokens: 1, temperature: 0,
    input: [{ role: 'user', content: 'Weather in Oslo?' }, call, { type: 'function_call_output', call_id: 'call_1', output }] });
  const asString = await ask('3 C, rain');
  const asParts = await ask([{ type: 'input_text', text: '3 C, rain' }]);
  const longer = await ask('3 C, rain, wind'); // byte vocabulary: one token per byte
  assert.equal(asParts.usage.input_tokens, asString.usage.input_tokens);
  assert.equal(longer.usage.input_tokens, asString.usage.input_tokens + ', wind'.length);
  await assert.rejects(ask([{ type: 'input_image', image_url: 'data:image/png;base64,AAAA' }]),
    (e) => e.status === 400 && e.param === 'input' && /only text/.test(e.message));
});
