// bench_http.mjs - serving benchmark through the real server: aggregate
// generation speed with 1, 4, 8 and 16 concurrent streaming sessions (the
// best of ROUNDS rounds each), time to first token at 8, a running stream's
// longest wait while 8 long prompts arrive, and the 10th turn of a
// conversation with and without a session.
// Usage: node tools/bench_http.mjs BIN MODEL WEIGHTS LABEL
// Prints a `HTTP key=value ...` line for tools/bench.sh.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [bin, model, weights, label] = process.argv.slice(2);
const GEN = 128; // streams of 128 tokens, as llama-server comparisons use
// Best of three, as `metastate bench` takes the best of five: on these shared
// 2-core machines one stream's 128 tokens took 0.69-1.10 s in four runs in a
// row (0.1B bf16), eight streams' 1.68-1.72 s, so one run of each put the
// 8-vs-1 ratio anywhere from 3.2x to 5.2x. The sizes take turns within every
// round, so a neighbour's burst slows one round of all of them.
const ROUNDS = 3;
const SIZES = [1, 4, 8, 16]; // concurrent streams
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function start() {
  const dir = mkdtempSync(join(tmpdir(), 'ms-bench-'));
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = 30000 + Math.floor(Math.random() * 20000);
    const proc = spawn(bin, ['serve', '--model', model, '--weights', weights, '--host', '127.0.0.1',
      '--port', String(port), '--parallel', '16', '--state-dir', dir, '--model-name', 'bench'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    proc.stderr.on('data', (d) => { err += d; });
    const url = `http://127.0.0.1:${port}`;
    for (let i = 0; i < 600; i++) {
      if (proc.exitCode !== null) break;
      try { if ((await fetch(`${url}/health`)).ok) return { proc, url, dir }; } catch {}
      await sleep(100);
    }
    proc.kill('SIGKILL');
    if (!/address|bind/i.test(err)) throw new Error(`server did not start: ${err}`);
  }
  throw new Error('no free port');
}

/** One streaming completion; resolves {tokens, ttft, total} (seconds). */
async function stream(url, body) {
  const t0 = performance.now();
  const r = await fetch(`${url}/v1/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'bench', stream: true, stream_options: { include_usage: true }, ...body }),
  });
  if (!r.ok) throw new Error(`HTTP ${r.status}: ${await r.text()}`);
  let ttft = null, tokens = 0, buf = '';
  const dec = new TextDecoder();
  for await (const chunk of r.body) {
    buf += dec.decode(chunk, { stream: true });
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const ev = buf.slice(0, i); buf = buf.slice(i + 2);
      if (!ev.startsWith('data: ') || ev === 'data: [DONE]') continue;
      const j = JSON.parse(ev.slice(6));
      if (j.choices?.[0]?.text && ttft === null) ttft = (performance.now() - t0) / 1000;
      if (j.usage) tokens = j.usage.completion_tokens;
    }
  }
  return { tokens, ttft, total: (performance.now() - t0) / 1000 };
}

/** n streams at once, each a new session; the sessions are deleted after
 * the timing, so every round starts on the same pool (no spills). */
async function concurrent(url, n, round) {
  const ids = Array.from({ length: n }, (_, i) => `bench-${round}-${n}-${i}`);
  const t0 = performance.now();
  const res = await Promise.all(ids.map((id, i) => stream(url, {
    prompt: `Session ${i}: the quick brown fox jumps over the lazy dog.`, max_tokens: GEN,
    temperature: 1, top_p: 1, presence_penalty: 0, frequency_penalty: 0, seed: i,
    logit_bias: { 0: -100 }, session_id: id,
  })));
  const wall = (performance.now() - t0) / 1000;
  const toks = res.reduce((a, r) => a + r.tokens, 0);
  for (const id of ids) {
    const d = await fetch(`${url}/v1/sessions/${id}`, { method: 'DELETE' });
    if (!d.ok) throw new Error(`DELETE session ${id}: HTTP ${d.status}: ${await d.text()}`);
  }
  return { tps: toks / wall, ttft: res.reduce((a, r) => a + r.ttft, 0) / n };
}

/** A running stream while 8 prompts of 512 tokens arrive at once: its
 * longest gap between tokens, in ms and in token times of one stream alone
 * (tokMs), and the prompts' mean TTFT. Each scheduler step runs one
 * --prefill-chunk of prompt tokens in all, so the gap is about one chunk's
 * compute, not eight. */
async function burst(url, tokMs) {
  const gaps = [];
  const stop = new AbortController();
  // Byte-level vocabulary (no --vocab): id b + 1 is byte b. Bytes 0x80-0xff
  // are banned, so every token is a whole character and arrives as an event
  // of its own: a random byte that starts or continues a UTF-8 sequence is
  // held back until the character is whole, and while the prompts ran, two
  // or three such tokens in a row read as a gap of two or three steps.
  const bias = { 0: -100 };
  for (let id = 0x80 + 1; id <= 0xff + 1; id++) bias[id] = -100;
  const running = (async () => {
    const r = await fetch(`${url}/v1/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'bench', stream: true, prompt: 'A running stream.', max_tokens: 100000,
        temperature: 1, seed: 1, logit_bias: bias }),
      signal: stop.signal,
    });
    let last = null;
    try {
      for await (const _ of r.body) {
        const t = performance.now();
        if (last !== null) gaps.push(t - last);
        last = t;
      }
    } catch {}
  });
  const done = running();
  for (let i = 0; gaps.length < 16; i++) {
    if (i > 6000) throw new Error('the running stream sent no tokens in 60 s');
    await sleep(10);
  }
  const from = gaps.length;
  // Byte-level vocabulary without --vocab: one token per byte.
  const res = await Promise.all(Array.from({ length: 8 }, (_, i) => stream(url, {
    prompt: `${i} ${'x'.repeat(510)}`, max_tokens: 1, temperature: 0, logit_bias: { 0: -100 } })));
  await sleep(50);
  stop.abort();
  await done;
  const longest = Math.max(...gaps.slice(from));
  return { longest, ratio: longest / tokMs, ttft: res.reduce((a, r) => a + r.ttft, 0) / res.length };
}

/** TTFT of the 10th turn of a chat, with and without a session. */
async function tenthTurn(url) {
  const text = 'Tell me about recurrent neural networks and how their state carries context. ';
  let history = '';
  let withS = 0, without = 0;
  for (let turn = 1; turn <= 10; turn++) {
    history += `User: ${text.repeat(2)}\n\nAssistant:`;
    const body = { prompt: history, max_tokens: 16, temperature: 0, logit_bias: { 0: -100 } };
    const a = await stream(url, { ...body, session_id: 'conv' });
    if (turn === 10) {
      withS = a.ttft;
      without = (await stream(url, body)).ttft;
    }
    // Continue the conversation with what the session holds: re-send the
    // prompt plus a fixed reply, so both runs see the same text.
    history += ` I see.\n\n`;
  }
  return { withS, without, tokens: history.length };
}

const srv = await start();
try {
  await stream(srv.url, { prompt: 'warm up', max_tokens: 4 });
  const runs = Object.fromEntries(SIZES.map((n) => [n, []]));
  for (let round = 0; round < ROUNDS; round++)
    for (const n of SIZES) runs[n].push(await concurrent(srv.url, n, round));
  const out = {};
  const best = {};
  for (const n of SIZES) {
    best[n] = runs[n].reduce((a, r) => (r.tps > a.tps ? r : a));
    out[`agg${n}`] = best[n].tps.toFixed(1);
    out[`rounds${n}`] = runs[n].map((r) => r.tps.toFixed(1)).join('/'); // the spread, for the log
  }
  out.ttft8 = best[8].ttft.toFixed(3); // of the best round of eight
  const b = await burst(srv.url, 1000 / Number(out.agg1));
  out.burst_gap_ms = b.longest.toFixed(1);
  out.burst_gap_ratio = b.ratio.toFixed(1);
  out.burst_ttft = b.ttft.toFixed(3);
  const t = await tenthTurn(srv.url);
  out.turn10_session = t.withS.toFixed(3);
  out.turn10_full = t.without.toFixed(3);
  out.turn10_chars = t.tokens;
  console.log(`HTTP label=${label} ` + Object.entries(out).map(([k, v]) => `${k}=${v}`).join(' '));
} finally {
  srv.proc.kill('SIGTERM');
  await new Promise((r) => srv.proc.on('exit', r));
  rmSync(srv.dir, { recursive: true, force: true });
}
