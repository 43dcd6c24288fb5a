// --weights: the server runs in every weight format, holds each in the size
// that format implies, writes what `metastate generate` writes in the same
// format, and refuses unknown formats.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { startServer, client, tinyModel, BIN, MODEL_NAME, SLOW } from './lib/server.mjs';

test('serves with f32, bf16 and int8 weights: sizes shrink, text matches generate', async () => {
  const bytes = {};
  for (const w of ['f32', 'bf16', 'int8']) {
    const srv = await startServer({ args: ['--weights', w] });
    try {
      const r = await client(srv).completions.create({ model: MODEL_NAME, prompt: 'Hello', max_tokens: 12,
        temperature: 0 });
      const m = /([\d.]+) MiB of weights/.exec(srv.stderr());
      assert.ok(m, srv.stderr());
      bytes[w] = Number(m[1]);
      // The same format through the CLI, greedy: the same text.
      const g = spawnSync(BIN, ['generate', '--model', tinyModel(1), '--weights', w, '--prompt', 'Hello',
        '-n', '12', '--temperature', '0'], { encoding: 'utf8', timeout: 120000 * SLOW });
      assert.equal(g.status, 0, g.stderr);
      assert.equal(r.choices[0].text, g.stdout.slice(0, -1), w);
    } finally {
      assert.equal((await srv.stop()).code, 0);
    }
  }
  assert.ok(bytes.f32 > bytes.bf16 && bytes.bf16 > bytes.int8, JSON.stringify(bytes));
});

test('an unknown --weights value is a usage error', () => {
  const r = spawnSync(BIN, ['serve', '--model', tinyModel(1), '--weights', 'fp4'], { encoding: 'utf8' });
  assert.equal(r.status, 2);
  assert.match(r.stderr, /--weights/);
});
