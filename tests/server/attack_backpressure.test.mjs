// SSE backpressure (issue 9, bug 8): a client that stops reading its stream
// must not make the server buffer without bound. Its sequence pauses while
// the unsent output exceeds --stream-backlog-kb, the pause shows in /metrics,
// and the stream resumes, complete and in order, once the client reads again.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { startServer, metrics, rssKiB, sleep, SLOW } from './lib/server.mjs';

const servers = [];
after(async () => { for (const s of servers) assert.equal((await s.stop()).code, 0, s.stderr()); });

async function until(fn, ms, what) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

test('a stream whose client stops reading pauses, is counted, and resumes intact', async () => {
  const MAX = 3000;
  // A long model name makes every event long (each one echoes it), so the
  // bound is reached after fewer tokens.
  const name = 'm'.repeat(300);
  const srv = await startServer({ args: ['--stream-backlog-kb', '64', '--max-tokens-cap', String(MAX),
    '--idle-timeout', '120', '--model-name', name] });
  servers.push(srv);
  const body = JSON.stringify({ model: name, prompt: 'Go on and on', max_tokens: MAX, stream: true,
    logit_bias: { 0: -100 } });
  const sock = net.connect(srv.port, '127.0.0.1');
  let got = Buffer.alloc(0);
  sock.on('data', (d) => { got = Buffer.concat([got, d]); });
  await new Promise((r) => sock.on('connect', r));
  sock.write(`POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n` +
    `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
  await until(() => got.length > 0, 30000 * SLOW, 'the stream to start');
  sock.pause(); // stop reading: the kernel buffers fill, then the server's
  const rss0 = rssKiB(srv.proc.pid);
  await until(async () => (await metrics(srv)).metastate_streams_paused === 1, 60000 * SLOW, 'the pause');
  const m1 = await metrics(srv);
  assert.ok(m1.metastate_stream_pauses_total >= 1);
  await sleep(1000);
  const m2 = await metrics(srv);
  assert.equal(m2.metastate_streams_paused, 1, 'still paused while the client does not read');
  assert.equal(m2.metastate_active_sequences, 1);
  assert.ok(rssKiB(srv.proc.pid) - rss0 < 32 * 1024, 'server memory grew while paused');
  sock.resume();
  await until(() => got.includes('data: [DONE]'), 120000 * SLOW, 'the end of the stream');
  sock.destroy();
  const text = got.toString('latin1');
  const events = text.split('\n\n').filter((e) => e.includes('data: {'));
  let n = 0;
  for (const e of events) {
    const j = JSON.parse(e.slice(e.indexOf('data: ') + 6));
    assert.equal(j.choices[0].index, 0);
    n++;
  }
  // One event per token (whole UTF-8 characters may join bytes) plus the finish event.
  assert.ok(n > MAX / 4, `only ${n} events for ${MAX} tokens`);
  assert.match(text, /"finish_reason":"length"/);
  const m3 = await until(async () => { const m = await metrics(srv); return m.metastate_active_sequences === 0 && m; },
    10000 * SLOW, 'the sequence to end');
  assert.equal(m3.metastate_streams_paused, 0);
});
