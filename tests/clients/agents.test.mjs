// The OpenAI Agents SDK (@openai/agents, which needs the current openai major)
// against the real server on the trained default model. An agent with tools
// and a typed answer (outputType) sends both, tools and a response format,
// every turn: a tool round, then the answer, must come back as a call and
// then a document of the answer's schema, streamed or not. On the Responses
// API (the SDK's default): a required tool call ends the run with the tool's
// output, a typed answer parses, a streamed reply matches the whole one.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { z } from 'zod';
import { Agent, run, tool, setDefaultOpenAIClient, setTracingDisabled, setOpenAIAPI } from '@openai/agents';
import { startServer, client } from '../server/lib/server.mjs';
import { defaultServer, DEFAULT_NAME as M, byteIds } from '../server/lib/agent.mjs';

let srv;
before(async () => {
  srv = await startServer(defaultServer);
  setTracingDisabled(true); // the SDK would export traces to api.openai.com
  setDefaultOpenAIClient(client(srv));
});
after(async () => { const e = await srv.stop(); assert.equal(e.code, 0, srv.stderr()); });

function weatherAgent(calls, settings, extra = {}) {
  const weather = tool({
    name: 'get_weather', description: 'Current weather of a city',
    parameters: z.object({ city: z.string().max(12) }),
    execute: async ({ city }) => { calls.push(city); return `sunny in ${city}`; },
  });
  return new Agent({ name: 'weather', instructions: 'Be brief.', model: M, tools: [weather],
    modelSettings: { maxTokens: 120, temperature: 0, parallelToolCalls: false, ...settings }, ...extra });
}

const Answer = z.object({ answer: z.string().max(40) });

for (const stream of [false, true]) {
  test(`chat completions${stream ? ', streamed' : ''}: a tool round, then a typed answer (tools and outputType every turn)`, async () => {
    setOpenAIAPI('chat_completions');
    const calls = [];
    // The first turn asks for a call (the SDK then resets tool_choice to
    // auto). 'C', which starts " Call: ", is banned: the first turn's grammar
    // allows nothing else, so it still calls; on auto the reply must then be
    // the answer, which free text (what the server once decoded there) is not.
    const agent = weatherAgent(calls, { toolChoice: 'required',
      providerData: { logit_bias: { [byteIds('C')[0]]: -100 } } }, { outputType: Answer });
    const r = await run(agent, 'Weather in Paris?', { maxTurns: 3, stream });
    if (stream) {
      for await (const ev of r) void ev;
      await r.completed;
    }
    assert.equal(calls.length, 1);
    assert.deepEqual(r.newItems.map((i) => i.type), ['tool_call_item', 'tool_call_output_item', 'message_output_item']);
    assert.equal(typeof Answer.parse(r.finalOutput).answer, 'string');
  });
}

test('responses: a required call (stop_on_first_tool), a typed answer, a streamed reply', async () => {
  setOpenAIAPI('responses');
  const calls = [];
  const r = await run(weatherAgent(calls, { toolChoice: 'required' }, { toolUseBehavior: 'stop_on_first_tool' }),
    'Weather in Paris?');
  assert.equal(calls.length, 1);
  assert.equal(r.finalOutput, `sunny in ${calls[0]}`);

  const typed = await run(new Agent({ name: 'typed', instructions: 'Be brief.', model: M, outputType: Answer,
    modelSettings: { maxTokens: 120, temperature: 0 } }), 'Answer in JSON.');
  assert.equal(typeof Answer.parse(typed.finalOutput).answer, 'string');

  // Greedy, the default model ends this reply after 95 bytes (an incomplete
  // response is an error to the SDK).
  const plain = new Agent({ name: 'plain', instructions: 'Be brief.', model: M,
    modelSettings: { maxTokens: 400, temperature: 0 } });
  const whole = await run(plain, 'Say hello.');
  const s = await run(plain, 'Say hello.', { stream: true });
  let text = '';
  for await (const t of s.toTextStream()) text += t;
  await s.completed;
  assert.ok(whole.finalOutput.length > 0);
  assert.equal(text, whole.finalOutput);
  assert.equal(s.finalOutput, whole.finalOutput);
});
