// `metastate generate` and `metastate serve` share one runtime (model,
// vocabulary, sampler tables) and one prefill procedure: the same prompt,
// seed and sampling parameters give the same text from both.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServer, client, tinyModel, BIN, MODEL_NAME, SLOW } from './lib/server.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const trained = { model: `${root}/models/default.safetensors`, vocab: `${root}/models/bytes_vocab.txt` };

// Longer than one 128-token prefill chunk (byte-level: one token per byte),
// so the chunked path and the lone last token are both exercised.
const PROMPT = 'The old lighthouse keeper wrote in his log every evening, and on the last page he ' +
  'had written a single line about the sea, the wind and the long winter that was coming to the coast.';

const SAMPLING = { temperature: 1.0, top_p: 0.9, presence_penalty: 0.3, frequency_penalty: 0.1 };

function generate(model, vocab, seed, n) {
  const args = ['generate', '--model', model, '--prompt', PROMPT, '-n', String(n), '--seed', String(seed),
    '--temperature', String(SAMPLING.temperature), '--top-p', String(SAMPLING.top_p), '--top-k', '0',
    '--presence-penalty', String(SAMPLING.presence_penalty),
    '--frequency-penalty', String(SAMPLING.frequency_penalty)];
  if (vocab) args.push('--vocab', vocab);
  const r = spawnSync(BIN, args, { encoding: 'utf8', timeout: 120000 * SLOW });
  assert.equal(r.status, 0, r.stderr);
  assert.ok(r.stdout.endsWith('\n'));
  return r.stdout.slice(0, -1); // generate ends its output with one newline
}

for (const [label, model, vocab, name] of [
  ['trained default model', trained.model, trained.vocab, 'default'],
  ['random tiny model', null, null, MODEL_NAME],
]) {
  test(`generate and /v1/completions write the same text for the same seed (${label})`, async () => {
    const path = model || tinyModel(1);
    const args = vocab ? ['--vocab', vocab, '--model-name', name] : ['--model-name', name];
    const srv = await startServer({ model: path, args });
    try {
      for (const seed of [3, 41]) {
        const want = generate(path, vocab, seed, 40);
        const r = await client(srv).completions.create({ model: name, prompt: PROMPT, max_tokens: 40, seed,
          ...SAMPLING });
        assert.equal(r.choices[0].text, want, `seed ${seed}`);
        assert.ok(want.length > 0);
      }
    } finally {
      assert.equal((await srv.stop()).code, 0, srv.stderr());
    }
  });
}
