// Sessions survive a model expansion (Meta-State progressive scaling, SPEC
// 3.4): a server restarted on the expanded model continues a session saved
// under the parent and gives the same output as the parent would; a model
// that was not grown from the parent rejects the file.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { startServer, client, api, tmpDir, BIN } from './lib/server.mjs';

const NAME = 'ms';
const run = (args) => execFileSync(BIN, args, { stdio: ['ignore', 'ignore', 'pipe'], timeout: 120000 });

test('a session saved under the parent continues on the expanded model', async () => {
  const dir = tmpDir('expand');
  const parent = join(dir, 'parent.safetensors');
  const grown = join(dir, 'grown.safetensors');
  const foreign = join(dir, 'foreign.safetensors');
  run(['gen-model', '--preset', 'tiny', '--meta-state', '--seed', '3', '--out', parent]);
  run(['gen-model', '--preset', 'tiny', '--meta-state', '--seed', '4', '--out', foreign]);
  const serve = (model, stateDir) => startServer({ model, args: ['--model-name', NAME, '--state-dir', stateDir] });
  const base = { model: NAME, max_tokens: 8, temperature: 0 };

  // Turn 1 on the parent; SIGTERM writes the session to the state dir.
  const d0 = join(dir, 'state0');
  const messages = [{ role: 'user', content: 'Hello there' }];
  const s0 = await serve(parent, d0);
  try {
    const r1 = await client(s0).chat.completions.create({ ...base, messages, session_id: 'grow' });
    messages.push({ role: 'assistant', content: r1.choices[0].message.content },
      { role: 'user', content: 'And then?' });
  } finally {
    assert.equal((await s0.stop()).code, 0, s0.stderr());
  }
  const copies = {};
  for (const k of ['A', 'B', 'F']) {
    copies[k] = join(dir, `state${k}`);
    cpSync(d0, copies[k], { recursive: true });
  }
  // Grow the parent: FFN parameter tokens and zero-gain SSE heads.
  run(['expand', '--model', parent, '--out', grown, '--add-param-tokens', '4', '--sse-heads', '0:0+1']);

  const [sa, sb] = await Promise.all([serve(parent, copies.A), serve(grown, copies.B)]);
  try {
    const body = { ...base, messages, session_id: 'grow' };
    const [ra, rb] = await Promise.all([client(sa).chat.completions.create(body),
      client(sb).chat.completions.create(body)]);
    for (const r of [ra, rb]) {
      assert.ok(r.usage.prompt_tokens_details.cached_tokens > 0, JSON.stringify(r.usage));
      assert.equal(r.session_warning, undefined);
    }
    assert.equal(rb.usage.prompt_tokens_details.cached_tokens, ra.usage.prompt_tokens_details.cached_tokens);
    assert.equal(rb.choices[0].message.content, ra.choices[0].message.content);
  } finally {
    const [ea, eb] = await Promise.all([sa.stop(), sb.stop()]);
    assert.equal(ea.code, 0, sa.stderr());
    assert.equal(eb.code, 0, sb.stderr());
  }

  // Another model of the same shape (not an ancestor) refuses the file.
  const sf = await serve(foreign, copies.F);
  try {
    const r = await api(sf, 'POST', '/v1/chat/completions', { ...base, messages, session_id: 'grow' });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.usage.prompt_tokens_details.cached_tokens, 0);
    assert.match(r.json.session_warning, /another model|fingerprint/);
  } finally {
    assert.equal((await sf.stop()).code, 0, sf.stderr());
  }
});
