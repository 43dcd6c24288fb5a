// Session operations racing the write-behind of a session (--state-dir):
// right after a request its file is being written on a worker thread; an
// export or DELETE arriving then waits for that write instead of failing,
// a deleted session stays deleted (no write in flight brings its file back),
// and only a session in use by a running request answers 409 session_busy.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { startServer, client, api, tmpDir, MODEL_NAME, sleep } from './lib/server.mjs';

test('export and DELETE right after a request succeed; deleted sessions stay deleted', async () => {
  const dir = tmpDir('race');
  const s = await startServer({ args: ['--state-dir', dir] });
  try {
    const oa = client(s);
    const N = 20;
    for (let i = 0; i < N; i++) {
      const sid = `race-${i}`;
      await oa.completions.create({ model: MODEL_NAME, prompt: 'race', max_tokens: 2, session_id: sid });
      const ex = await api(s, 'GET', `/v1/sessions/${sid}/state`); // races the write-behind
      assert.equal(ex.status, 200, ex.text);
      assert.ok(ex.bytes.length > 8);
      await oa.completions.create({ model: MODEL_NAME, prompt: 'race on', max_tokens: 2, session_id: sid });
      const del = await api(s, 'DELETE', `/v1/sessions/${sid}`); // and again
      assert.equal(del.status, 200, del.text);
    }
    await sleep(300); // anything still queued behind the last request has run by now
    for (let i = 0; i < N; i++) {
      const sid = `race-${i}`;
      assert.equal((await api(s, 'GET', `/v1/sessions/${sid}`)).status, 404, sid);
      assert.equal(existsSync(join(dir, `${sid}.state`)), false, sid);
    }
  } finally {
    assert.equal((await s.stop()).code, 0, s.stderr());
  }
});

test('DELETE and export of a session a running request holds: 409 session_busy', async () => {
  const s = await startServer({ args: ['--state-dir', tmpDir('busy')] });
  try {
    const ac = new AbortController();
    const rd = await fetch(`${s.base}/completions`, {
      method: 'POST', signal: ac.signal, headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ model: MODEL_NAME, prompt: 'p', max_tokens: 100000, stream: true,
        logit_bias: { 0: -100 }, session_id: 'held' }),
    }).then(async (r) => { const b = r.body.getReader(); await b.read(); return b; });
    for (const [m, path] of [['DELETE', '/v1/sessions/held'], ['GET', '/v1/sessions/held/state']]) {
      const r = await api(s, m, path);
      assert.equal(r.status, 409, `${m} ${r.text}`);
      assert.equal(r.json.error.code, 'session_busy');
    }
    ac.abort();
    await rd.cancel().catch(() => {});
  } finally {
    assert.equal((await s.stop()).code, 0, s.stderr());
  }
});
