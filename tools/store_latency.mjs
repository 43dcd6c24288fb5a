// What the Redis session store adds to a turn, on loopback: one chat played
// turn by turn (a) on two replicas sharing a redis-server, alternating, so
// every turn takes the lease, loads the other replica's state and stores its
// own, and (b) on one server with the session in memory. Prints per-turn
// wall times, the store's own operation time (from /metrics) and the state's
// size. Not a test: timings on a shared machine are noisy.
//
//   node tools/store_latency.mjs BIN MODEL [TURNS]
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';

const [BIN, MODEL, TURNS = '8'] = process.argv.slice(2);
if (!BIN || !MODEL) { console.error('usage: node tools/store_latency.mjs BIN MODEL [TURNS]'); process.exit(2); }
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const procs = [];
process.on('exit', () => { for (const p of procs) try { p.kill('SIGKILL'); } catch {} });

const freePort = () => new Promise((res) => {
  const s = net.createServer(); s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => res(p)); });
});

async function serve(args) {
  const port = await freePort();
  const p = spawn(BIN, ['serve', '--model', MODEL, '--port', String(port), ...args],
    { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, OPENBLAS_NUM_THREADS: '1' } });
  procs.push(p);
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 1200; i++) {
    try { if ((await fetch(`${url}/health`)).status === 200) return url; } catch {}
    await sleep(100);
  }
  throw new Error('server did not start');
}

async function metric(url, name) {
  const t = await (await fetch(`${url}/metrics`)).text();
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(t);
  return m ? Number(m[1]) : 0;
}

const dir = mkdtempSync(join(tmpdir(), 'metastate-storelat-'));
const rport = await freePort();
const redis = spawn('redis-server', ['--port', String(rport), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
procs.push(redis);
await sleep(300);
const store = ['--state-store', `redis://127.0.0.1:${rport}/0`, '--parallel', '1'];
const A = await serve(store), B = await serve(store), C = await serve(['--parallel', '1']);

async function turn(url, messages, sid) {
  const t0 = performance.now();
  const r = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ model: MODEL.replace(/^.*\//, '').replace(/\.[^.]*$/, ''), messages, session_id: sid, max_tokens: 32, temperature: 0 }),
  });
  const j = await r.json();
  if (r.status !== 200) throw new Error(JSON.stringify(j));
  return { ms: performance.now() - t0, text: j.choices[0].message.content, usage: j.usage };
}

const n = Number(TURNS);
const shared = [], local = [];
let m1 = [], m2 = [];
for (let i = 0; i < n; i++) {
  m1.push({ role: 'user', content: `Question number ${i} about the weather and the sea?` });
  m2.push({ role: 'user', content: `Question number ${i} about the weather and the sea?` });
  const a = await turn(i % 2 ? B : A, m1, 'lat');
  const c = await turn(C, m2, 'lat');
  shared.push(a.ms); local.push(c.ms);
  m1.push({ role: 'assistant', content: a.text });
  m2.push({ role: 'assistant', content: c.text });
  console.log(`turn ${i + 1}: two replicas + redis ${a.ms.toFixed(1)} ms (cached ${a.usage.prompt_tokens_details.cached_tokens}/${a.usage.prompt_tokens}), one server ${c.ms.toFixed(1)} ms (cached ${c.usage.prompt_tokens_details.cached_tokens})`);
}
const sum = (x) => x.reduce((s, v) => s + v, 0);
const later = (x) => x.slice(1); // turn 1 has nothing to load
const opS = (await metric(A, 'metastate_store_operation_seconds_sum')) + (await metric(B, 'metastate_store_operation_seconds_sum'));
const ops = (await metric(A, 'metastate_store_operation_seconds_count')) + (await metric(B, 'metastate_store_operation_seconds_count'));
const misses = (await metric(A, 'metastate_store_misses_total')) + (await metric(B, 'metastate_store_misses_total'));
const rec = execFileSync('redis-cli', ['-p', String(rport), 'HSTRLEN', 'metastate:{lat}:state', 'r'], { encoding: 'utf8' }).trim();
console.log(`record size ${(Number(rec) / 1e6).toFixed(2)} MB; store loads (misses) ${misses} of ${n} turns`);
console.log(`mean turn (turns 2..${n}): two replicas + redis ${(sum(later(shared)) / (n - 1)).toFixed(1)} ms, one server ${(sum(later(local)) / (n - 1)).toFixed(1)} ms, difference ${((sum(later(shared)) - sum(later(local))) / (n - 1)).toFixed(1)} ms`);
console.log(`store operations: ${ops} taking ${(opS * 1000).toFixed(1)} ms in all = ${(opS * 1000 / n).toFixed(1)} ms per turn (lease + version, load on a miss, save, release)`);
process.exit(0);
