// --weights / --compute: the server runs in every weight format and compute
// mode, holds each format in the size it implies, writes what `metastate
// generate` writes with the same flags, and refuses unknown ones.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { startServer, client, tinyModel, BIN, MODEL_NAME, SLOW } from './lib/server.mjs';

test('serves with f32, bf16, int8 and q4 weights and bf16 compute: sizes shrink, text matches generate', async () => {
  const mib = {};
  for (const w of ['f32', 'bf16', 'int8', 'q4', 'bf16+bf16']) {
    const [weights, compute = 'f32'] = w.split('+');
    const srv = await startServer({ args: ['--weights', weights, '--compute', compute] });
    try {
      const r = await client(srv).completions.create({ model: MODEL_NAME, prompt: 'Hello', max_tokens: 12,
        temperature: 0 });
      const m = /([\d.]+) MiB of weights/.exec(srv.stderr());
      assert.ok(m, srv.stderr());
      mib[w] = Number(m[1]);
      // The same flags through the CLI, greedy: the same text.
      const g = spawnSync(BIN, ['generate', '--model', tinyModel(1), '--weights', weights, '--compute', compute,
        '--prompt', 'Hello', '-n', '12', '--temperature', '0'], { encoding: 'utf8', timeout: 120000 * SLOW });
      assert.equal(g.status, 0, g.stderr);
      assert.equal(r.choices[0].text, g.stdout.slice(0, -1), w);
    } finally {
      assert.equal((await srv.stop()).code, 0);
    }
  }
  assert.ok(mib.f32 > mib.bf16 && mib.bf16 > mib.int8 && mib.int8 > mib.q4, JSON.stringify(mib));
  assert.equal(mib['bf16+bf16'], mib.bf16);
});

test('an unknown --weights value is a usage error', () => {
  const r = spawnSync(BIN, ['serve', '--model', tinyModel(1), '--weights', 'fp4'], { encoding: 'utf8' });
  assert.equal(r.status, 2);
  assert.match(r.stderr, /--weights/);
  const c = spawnSync(BIN, ['serve', '--model', tinyModel(1), '--compute', 'fp8'], { encoding: 'utf8' });
  assert.equal(c.status, 2);
  assert.match(c.stderr, /--compute/);
});
