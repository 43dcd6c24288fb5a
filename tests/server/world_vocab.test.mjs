// With the RWKV World vocabulary (when $METASTATE_SHARED/vocab has it):
// multi-byte tokens, sessions over a chat, and UTF-8-safe streaming.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { startServer, client, api, SHARED, MODEL_NAME, referenceSkip } from './lib/server.mjs';

const VOCAB = join(SHARED, 'vocab', 'rwkv_vocab_v20230424.txt');
const skip = referenceSkip(VOCAB);

test('World vocab: chat sessions match the full conversation; streams never split a character', { skip }, async () => {
  const srv = await startServer({ args: ['--vocab', VOCAB] });
  try {
    const oa = client(srv);
    const turns = ['你好，请介绍一下你自己。', 'Ça va? Écris une phrase.', 'Thanks 🙂'];
    const msgs = [], full = [];
    for (const [i, u] of turns.entries()) {
      msgs.push({ role: 'user', content: u });
      const r = await oa.chat.completions.create({ model: MODEL_NAME, messages: msgs, max_tokens: 10, temperature: 0, session_id: 'world-1' });
      const ref = await oa.chat.completions.create({ model: MODEL_NAME, messages: msgs, max_tokens: 10, temperature: 0 });
      assert.equal(r.choices[0].message.content, ref.choices[0].message.content);
      if (i > 0) assert.ok(r.usage.prompt_tokens_details.cached_tokens > 0);
      assert.ok(r.usage.prompt_tokens < Buffer.byteLength(JSON.stringify(msgs)), 'multi-byte tokens expected');
      msgs.push({ role: 'assistant', content: r.choices[0].message.content });
      full.push(r);
    }
    const s = await api(srv, 'POST', '/v1/completions', { model: MODEL_NAME, prompt: '日本語の文章：', max_tokens: 40,
      temperature: 1, top_p: 1, seed: 3, stream: true });
    assert.equal(s.status, 200);
    for (const ev of Buffer.from(s.bytes).toString('latin1').split('\n\n').filter(Boolean))
      new TextDecoder('utf-8', { fatal: true }).decode(Buffer.from(ev, 'latin1'));
  } finally {
    assert.equal((await srv.stop()).code, 0, srv.stderr());
  }
});
