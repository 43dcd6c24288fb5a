// Several replicas sharing one --state-dir (the deployment in deploy/): a
// session served by one replica continues on another, and back, always from
// the newest state: every replica writes sessions behind each request and
// reloads one whose file another replica rewrote.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { startServer, client, tmpDir, asciiBias, MODEL_NAME, sleep } from './lib/server.mjs';

const dir = tmpDir('replicas');
const servers = [];
after(async () => { for (const s of servers) assert.equal((await s.stop()).code, 0, s.stderr()); });

const TURNS = ['First question here', 'A second one', 'And a third'];

async function turn(c, messages, sid) {
  const body = { model: MODEL_NAME, messages, max_tokens: 6, temperature: 0, logit_bias: asciiBias() };
  if (sid) body.session_id = sid;
  const r = await c.chat.completions.create(body);
  return { text: r.choices[0].message.content, cached: r.usage.prompt_tokens_details.cached_tokens };
}

/** Waits until the write-behind has put the session's file in place. */
async function written(sid) {
  for (let i = 0; i < 200 && !existsSync(join(dir, `${sid}.state`)); i++) await sleep(50);
  assert.ok(existsSync(join(dir, `${sid}.state`)), 'session file written behind the request');
  await sleep(100); // let the rename land before the other replica stats it
}

test('a session moves between replicas through the shared directory', async () => {
  const a = await startServer({ args: ['--state-dir', dir] });
  const b = await startServer({ args: ['--state-dir', dir] });
  servers.push(a, b);
  const ca = client(a), cb = client(b);
  const order = [ca, cb, ca];
  const withS = [], plain = [];
  let msgs = [], ref = [];
  for (let i = 0; i < TURNS.length; i++) {
    msgs.push({ role: 'user', content: TURNS[i] });
    const r = await turn(order[i], msgs, 'roaming');
    withS.push(r);
    msgs.push({ role: 'assistant', content: r.text });
    await written('roaming');
    // The same conversation, in full, without a session, for comparison.
    ref.push({ role: 'user', content: TURNS[i] });
    const p = await turn(ca, ref, null);
    plain.push(p.text);
    ref.push({ role: 'assistant', content: p.text });
  }
  assert.deepEqual(withS.map((r) => r.text), plain);
  assert.equal(withS[0].cached, 0);
  // Turn 2 on replica B found A's file; turn 3 back on A found B's newer one.
  assert.ok(withS[1].cached > 0, JSON.stringify(withS));
  assert.ok(withS[2].cached > withS[1].cached, JSON.stringify(withS));
});
