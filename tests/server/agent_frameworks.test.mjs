// Agent frameworks nobody here wrote, against the real server with the
// trained default model: the Vercel AI SDK (`@ai-sdk/openai`, whose default
// model uses /v1/responses, and `@ai-sdk/openai-compatible` on chat
// completions) and LangChain JS (`@langchain/openai`).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { z } from 'zod';
import { generateText, streamText, generateObject, tool, stepCountIs } from 'ai';
import { createOpenAI } from '@ai-sdk/openai';
import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import { ChatOpenAI } from '@langchain/openai';
import { startServer } from './lib/server.mjs';
import { defaultServer, DEFAULT_NAME as M } from './lib/agent.mjs';

let srv, viaResponses, viaChat;
before(async () => {
  srv = await startServer(defaultServer);
  viaResponses = createOpenAI({ baseURL: srv.base, apiKey: 'unused' });
  viaChat = createOpenAICompatible({ name: 'metastate', baseURL: srv.base, apiKey: 'unused',
    supportsStructuredOutputs: true });
});
after(async () => { const e = await srv.stop(); assert.equal(e.code, 0, srv.stderr()); });

const Recipe = z.object({
  title: z.string().max(24),
  servings: z.number().int().min(1).max(12),
  vegan: z.boolean(),
  steps: z.array(z.string().max(16)).min(1).max(3),
});

const weather = tool({
  description: 'Current weather of a city',
  inputSchema: z.object({ city: z.string().max(16) }),
  execute: async ({ city }) => `It is 21 C in ${city}.`,
});

for (const [label, model] of [['@ai-sdk/openai (responses)', () => viaResponses(M)],
  ['@ai-sdk/openai-compatible (chat)', () => viaChat(M)]]) {
  test(`${label}: generateText and streamText`, async () => {
    const r = await generateText({ model: model(), prompt: 'Say hi.', maxOutputTokens: 10, temperature: 0 });
    assert.equal(typeof r.text, 'string');
    assert.ok(r.usage.inputTokens > 0);
    const s = streamText({ model: model(), prompt: 'Say hi.', maxOutputTokens: 10, temperature: 0 });
    let text = '';
    for await (const part of s.textStream) text += part;
    assert.equal(text, r.text);
    assert.ok(['stop', 'length'].includes(await s.finishReason));
  });

  test(`${label}: generateObject with a zod schema`, async () => {
    const r = await generateObject({ model: model(), schema: Recipe, prompt: 'A recipe as JSON.',
      maxOutputTokens: 200, seed: 2 });
    Recipe.parse(r.object);
  });

  test(`${label}: a two-step tool loop`, async () => {
    const r = await generateText({
      model: model(), tools: { weather }, toolChoice: 'required', maxOutputTokens: 60,
      prompt: 'What is the weather in Lima?', stopWhen: stepCountIs(2),
      prepareStep: ({ stepNumber }) => (stepNumber === 1 ? { toolChoice: 'none' } : {}),
    });
    assert.equal(r.steps.length, 2);
    const call = r.steps[0].toolCalls[0];
    assert.equal(call.toolName, 'weather');
    assert.equal(typeof call.input.city, 'string');
    assert.match(r.steps[0].toolResults[0].output, /21 C/);
    assert.equal(typeof r.steps[1].text, 'string');
  });
}

const llm = () => new ChatOpenAI({ model: M, apiKey: 'unused', configuration: { baseURL: srv.base },
  maxRetries: 0, maxTokens: 200, temperature: 1 });

test('LangChain withStructuredOutput: default method (json schema), jsonMode, functionCalling', async () => {
  const d = await llm().withStructuredOutput(Recipe, { name: 'recipe' }).invoke('A recipe.');
  Recipe.parse(d);
  // jsonMode sends only {"type":"json_object"}: the server never sees the schema, so
  // it can promise a JSON object, not conformance; with a plain JSON schema
  // LangChain parses without validating.
  const j = await llm().withStructuredOutput({ title: 'recipe', type: 'object',
    properties: { title: { type: 'string' } } }, { name: 'recipe', method: 'jsonMode' })
    .invoke('A recipe as JSON.');
  assert.equal(typeof j, 'object');
  assert.ok(j && !Array.isArray(j));
  const f = await llm().withStructuredOutput(Recipe, { name: 'recipe', method: 'functionCalling' })
    .invoke('A recipe.');
  Recipe.parse(f);
});

test('LangChain bindTools: tool_calls come back parsed', async () => {
  const m = llm().bindTools([{ type: 'function', function: { name: 'get_weather',
    description: 'weather', parameters: { type: 'object', properties: { city: { type: 'string' } },
      required: ['city'] } } }], { tool_choice: 'required' });
  const msg = await m.invoke('Weather in Bern?');
  assert.ok(msg.tool_calls.length >= 1);
  assert.equal(msg.tool_calls[0].name, 'get_weather');
  assert.equal(typeof msg.tool_calls[0].args.city, 'string');
});

test('LangChain logprobs reach response_metadata', async () => {
  const m = new ChatOpenAI({ model: M, apiKey: 'unused', configuration: { baseURL: srv.base },
    maxRetries: 0, maxTokens: 6, temperature: 0, logprobs: true, topLogprobs: 2 });
  const msg = await m.invoke('Hi');
  const lp = msg.response_metadata.logprobs;
  assert.ok(lp && lp.content.length >= 1, JSON.stringify(msg.response_metadata));
  assert.equal(lp.content[0].top_logprobs.length, 2);
});
