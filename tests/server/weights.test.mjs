// --weights / --compute: the server runs in every weight format and compute
// mode, and refuses unknown ones.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { startServer, client, tinyModel, BIN, MODEL_NAME } from './lib/server.mjs';

test('serves with f32, bf16, int8 and q4 weights and bf16 compute', async () => {
  const texts = {};
  for (const w of ['f32', 'bf16', 'int8', 'q4', 'bf16+bf16']) {
    const [weights, compute = 'f32'] = w.split('+');
    const srv = await startServer({ args: ['--weights', weights, '--compute', compute] });
    try {
      const r = await client(srv).completions.create({ model: MODEL_NAME, prompt: 'Hello', max_tokens: 4,
        temperature: 0, logit_bias: { 0: -100 } });
      assert.equal(r.usage.completion_tokens, 4, w);
      texts[w] = r.choices[0].text;
    } finally {
      assert.equal((await srv.stop()).code, 0);
    }
  }
  assert.equal(Object.keys(texts).length, 5);
});

test('an unknown --weights value is a usage error', () => {
  const r = spawnSync(BIN, ['serve', '--model', tinyModel(1), '--weights', 'fp4'], { encoding: 'utf8' });
  assert.equal(r.status, 2);
  assert.match(r.stderr, /--weights/);
  const c = spawnSync(BIN, ['serve', '--model', tinyModel(1), '--compute', 'fp8'], { encoding: 'utf8' });
  assert.equal(c.status, 2);
  assert.match(c.stderr, /--compute/);
});
