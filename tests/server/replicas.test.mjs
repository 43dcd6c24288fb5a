// Several replicas sharing one --state-dir (the deployment in deploy/): a
// session served by one replica continues on another, and back, always from
// the newest state: every replica writes sessions behind each request and
// reloads one whose file another replica rewrote. Stored Responses API
// records are files there too: a chain continues on another replica and
// after a restart.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmdirSync, rmSync, writeFileSync, utimesSync } from 'node:fs';
import { join } from 'node:path';
import { startServer, client, api, metrics, tmpDir, asciiBias, MODEL_NAME, sleep } from './lib/server.mjs';

const dir = tmpDir('replicas');
/** Matches the directory's path: no reply may show it. */
const dirPath = new RegExp(dir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
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

test('stored responses are files beside the sessions: a chain moves between replicas and outlives a restart', async () => {
  const a = await startServer({ args: ['--state-dir', dir] });
  const b = await startServer({ args: ['--state-dir', dir] });
  const one = await startServer(); // records in memory: the reference
  servers.push(b, one);
  const base = { model: MODEL_NAME, max_output_tokens: 6, temperature: 0 };
  const r1 = await client(a).responses.create({ ...base, input: 'Hello there' });
  assert.ok(existsSync(join(dir, `${r1.id}.response`)), 'the record is written before the reply');
  const o1 = await client(one).responses.create({ ...base, input: 'Hello there' });
  await written(r1.id); // the chain's session (named after its first response), written behind
  const r2 = await client(b).responses.create({ ...base, input: 'What is up', previous_response_id: r1.id });
  const o2 = await client(one).responses.create({ ...base, input: 'What is up', previous_response_id: o1.id });
  assert.equal(r2.output_text, o2.output_text);
  assert.ok(r2.usage.input_tokens_details.cached_tokens > 0, 'B continued the session A wrote');
  assert.equal(r2.usage.input_tokens_details.cached_tokens, o2.usage.input_tokens_details.cached_tokens);
  const stored = JSON.parse(readFileSync(join(dir, `${r2.id}.response`), 'utf8'));
  assert.equal(stored.session, r1.id);
  // A restarts: it still has both.
  assert.equal((await a.stop()).code, 0, a.stderr());
  const a2 = await startServer({ args: ['--state-dir', dir] });
  servers.push(a2);
  const { output_text: _t, ...back } = await client(a2).responses.retrieve(r2.id);
  const { output_text: _u, ...sent } = r2;
  assert.deepEqual(back, sent);
  assert.deepEqual(await client(a2).responses.delete(r2.id), { id: r2.id, object: 'response.deleted', deleted: true });
  assert.ok(!existsSync(join(dir, `${r2.id}.response`)));
  await assert.rejects(client(b).responses.retrieve(r2.id), (e) => e.status === 404);
  // Broken files are a 500 that names the id, not the path; a FIFO does not hang the server.
  writeFileSync(join(dir, 'resp_broken.response'), '{"session": "x"');
  execFileSync('mkfifo', [join(dir, 'resp_fifo.response')]);
  mkdirSync(join(dir, 'resp_dir.response'));
  for (const id of ['resp_broken', 'resp_fifo', 'resp_dir']) {
    const g = await api(a2, 'GET', `/v1/responses/${id}`);
    assert.equal(g.status, 500, g.text);
    assert.match(g.json.error.message, new RegExp(`'${id}' could not be read`));
    assert.doesNotMatch(g.text, dirPath);
  }
  // A record that is there but will not go (here a directory) is the store's failure, not a 404.
  const d = await api(a2, 'DELETE', '/v1/responses/resp_dir');
  assert.equal(d.status, 500, d.text);
  assert.equal(d.json.error.type, 'server_error');
  assert.match(d.json.error.message, /'resp_dir' could not be deleted/);
  assert.doesNotMatch(d.text, dirPath);
  assert.ok(existsSync(join(dir, 'resp_dir.response')));
  // Ids that are not file names are unknown, not paths.
  assert.equal((await api(a2, 'GET', '/v1/responses/..%2F..%2Fetc%2Fpasswd')).status, 404);
  // Records older than 30 days go when the next one is stored (a new server's first).
  writeFileSync(join(dir, 'resp_old.response'), readFileSync(join(dir, `${r1.id}.response`)));
  const old = (Date.now() - 31 * 86400e3) / 1000;
  utimesSync(join(dir, 'resp_old.response'), old, old);
  const c = await startServer({ args: ['--state-dir', dir] });
  servers.push(c);
  assert.equal((await api(c, 'GET', '/v1/responses/resp_old')).status, 200, 'readable until expired');
  await client(c).responses.create({ ...base, input: 'New' });
  assert.ok(!existsSync(join(dir, 'resp_old.response')), 'expired');
  assert.ok(existsSync(join(dir, `${r1.id}.response`)), 'recent records stay');
});

test('a session whose file will not go is not deleted: an error, and it stays', async () => {
  const a = await startServer({ args: ['--state-dir', dir] });
  servers.push(a);
  const r = await api(a, 'POST', '/v1/completions', { model: MODEL_NAME, prompt: 'Hi', max_tokens: 2, session_id: 'stuck' });
  assert.equal(r.status, 200, r.text);
  await written('stuck');
  const file = join(dir, 'stuck.state');
  rmSync(file);
  mkdirSync(file); // unlink(2) refuses a directory, as it would a file on a read-only mount
  const d = await api(a, 'DELETE', '/v1/sessions/stuck');
  assert.equal(d.status, 500, d.text);
  assert.equal(d.json.error.type, 'server_error');
  assert.match(d.json.error.message, /'stuck' could not be deleted/);
  assert.doesNotMatch(d.text, dirPath);
  assert.match(a.stderr(), /session 'stuck': its file will not go/);
  assert.equal((await api(a, 'GET', '/v1/sessions/stuck')).status, 200, 'still listed');
  rmdirSync(file);
  assert.equal((await api(a, 'DELETE', '/v1/sessions/stuck')).status, 200);
  assert.equal((await api(a, 'GET', '/v1/sessions/stuck')).status, 404);
});

test('an import over a session whose file will not go fails and changes nothing', async () => {
  const a = await startServer({ args: ['--state-dir', dir] });
  servers.push(a);
  const r = await api(a, 'POST', '/v1/completions', { model: MODEL_NAME, prompt: 'Hello there', max_tokens: 2,
    session_id: 'stuck2' });
  assert.equal(r.status, 200, r.text);
  await written('stuck2');
  const before = (await api(a, 'GET', '/v1/sessions/stuck2')).json;
  assert.ok(before.tokens > 0);
  const state = await api(a, 'GET', '/v1/sessions/stuck2/state');
  assert.equal(state.status, 200);
  const file = join(dir, 'stuck2.state');
  const kept = readFileSync(file);
  rmSync(file);
  mkdirSync(file); // unlink(2) refuses a directory: the replaced state's file would stay
  const put2 = (srv) => api(srv, 'PUT', '/v1/sessions/stuck2/state', state.bytes,
    { 'Content-Type': 'application/octet-stream' });
  const imp = await put2(a);
  assert.equal(imp.status, 500, imp.text);
  assert.equal(imp.json.error.type, 'server_error');
  assert.match(imp.json.error.message, /'stuck2' could not be imported \(its old file will not go: Is a directory\); it is as it was/);
  assert.doesNotMatch(imp.text, dirPath);
  assert.deepEqual((await api(a, 'GET', '/v1/sessions/stuck2')).json, before, 'the session as it was');
  rmdirSync(file);
  writeFileSync(file, kept);
  const ok = await put2(a);
  assert.equal(ok.status, 200, ok.text);
  assert.equal(ok.json.tokens, 0, 'imported: no history');
  // What a restart finds is the imported state, not the old file's.
  assert.equal((await a.stop()).code, 0, a.stderr());
  servers.splice(servers.indexOf(a), 1);
  const b = await startServer({ args: ['--state-dir', dir] });
  servers.push(b);
  assert.equal((await api(b, 'GET', '/v1/sessions/stuck2')).json.tokens, 0);
  // Over a session that is only on disk: it stays there when its file will not go, and an
  // import moves it into memory.
  const m0 = await metrics(b), info = (await api(b, 'GET', '/v1/sessions/stuck2')).json;
  const kept2 = readFileSync(file);
  rmSync(file);
  mkdirSync(file);
  assert.equal((await put2(b)).status, 500);
  const mFail = await metrics(b);
  assert.equal(mFail.metastate_sessions_on_disk, m0.metastate_sessions_on_disk);
  assert.equal(mFail.metastate_sessions_in_memory, m0.metastate_sessions_in_memory);
  assert.deepEqual((await api(b, 'GET', '/v1/sessions/stuck2')).json, info);
  rmdirSync(file);
  writeFileSync(file, kept2);
  assert.equal((await put2(b)).status, 200);
  const m1 = await metrics(b);
  assert.equal(m1.metastate_sessions_on_disk, m0.metastate_sessions_on_disk - 1);
  assert.equal(m1.metastate_sessions_in_memory, m0.metastate_sessions_in_memory + 1);
});
