// Test helpers: build a tiny model once, start/stop real `metastate serve`
// processes on free loopback ports, and talk to them with raw HTTP.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, existsSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import net from 'node:net';
import { after } from 'node:test';
import OpenAI from 'openai';

const here = dirname(fileURLToPath(import.meta.url));
export const BIN = process.env.METASTATE_BIN || resolve(here, '../../../build/metastate');
export const SHARED = process.env.METASTATE_SHARED || resolve(here, '../../../../shared');
// A test that needs third-party reference data (../shared) skips without it,
// with a reason that starts with the category tests/summary.sh counts; under
// METASTATE_REQUIRE_REFERENCE=1 (CI) the missing file is an error instead.
export function referenceSkip(path) {
  if (existsSync(path)) return false;
  const r = process.env.METASTATE_REQUIRE_REFERENCE;
  if (r && r !== '0') throw new Error(`${path} missing and METASTATE_REQUIRE_REFERENCE=1`);
  return `../shared not present; ${path} missing (set METASTATE_SHARED)`;
}
export const IS_ASAN = /\/asan\//.test(BIN);
// Generous time budgets: the ASan build is several times slower.
export const SLOW = IS_ASAN ? 4 : 1;

const live = new Set();
// Every temporary directory a test file makes goes when its process ends: a
// full run makes hundreds (tiny models are 67 MB each) and filled the disk.
const made = new Set();
process.on('exit', () => {
  for (const p of live) try { p.kill('SIGKILL'); } catch {}
  if (!process.env.METASTATE_KEEP_TMP) for (const d of made) try { rmSync(d, { recursive: true, force: true }); } catch {}
});

// A test that fails before it stops a server of its own leaves it running,
// and the child and its pipes would keep this process alive for ever: the
// run hung instead of reporting the failure. After a file's tests (this hook
// runs before the file's own), servers no longer hold the process, so it
// ends once the file's hooks are done and the exit handler kills what is left.
after(() => {
  for (const p of live) {
    p.unref();
    p.stdout?.unref?.();
    p.stderr?.unref?.();
  }
});

/** A fresh directory under the system's temp dir, removed at exit (unless METASTATE_KEEP_TMP is set). */
export function tmpDir(tag = 'ms') {
  const d = mkdtempSync(join(tmpdir(), `metastate-${tag}-`));
  made.add(d);
  return d;
}

let modelCache = new Map();
/** Path of a generated tiny model (2 layers, C 128, V 65536), made once per seed. */
export function tinyModel(seed = 1) {
  if (modelCache.has(seed)) return modelCache.get(seed);
  const dir = tmpDir('model');
  const out = join(dir, 'tiny.safetensors');
  execFileSync(BIN, ['gen-model', '--preset', 'tiny', '--seed', String(seed), '--out', out],
    { stdio: ['ignore', 'ignore', 'pipe'], timeout: 120000 });
  modelCache.set(seed, out);
  return out;
}

export const MODEL_NAME = 'tiny';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Starts a server; resolves once /health says ok. opts.args are extra flags,
 * opts.env extra environment, opts.model a model path (default tiny seed 1).
 */
export async function startServer(opts = {}) {
  const model = opts.model || tinyModel(1);
  for (let attempt = 0; attempt < 8; attempt++) {
    const port = 20000 + Math.floor(Math.random() * 40000);
    const args = ['serve', '--model', model, '--host', '127.0.0.1', '--port', String(port),
      ...(opts.args || [])];
    // opts.prefix: a command that runs the server, e.g. ['unshare', '--pid', ...].
    const cmd = opts.prefix ? [...opts.prefix, BIN, ...args] : [BIN, ...args];
    const proc = spawn(cmd[0], cmd.slice(1), {
      env: { ...process.env, OPENBLAS_NUM_THREADS: '1', ...(opts.env || {}) },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    live.add(proc);
    let stderr = '', stdout = '';
    proc.stderr.on('data', (d) => { stderr += d; });
    proc.stdout.on('data', (d) => { stdout += d; });
    const exited = new Promise((r) => proc.on('exit', (code, sig) => { live.delete(proc); r({ code, sig }); }));
    let exitInfo = null;
    exited.then((e) => { exitInfo = e; });
    const url = `http://127.0.0.1:${port}`;
    const deadline = Date.now() + 60000 * SLOW;
    let ok = false;
    while (Date.now() < deadline && !exitInfo) {
      try {
        const r = await fetch(`${url}/health`, { signal: AbortSignal.timeout(2000) });
        if (r.status === 200) { ok = true; break; }
      } catch {}
      await sleep(50);
    }
    if (ok) {
      return {
        url, port, proc, model,
        base: `${url}/v1`,
        stderr: () => stderr,
        stdout: () => stdout,
        /** Resolves to the server's stderr once it matches re (its pipe can
         * lag behind the HTTP reply); rejects with the text after timeoutMs. */
        async logged(re, timeoutMs = 5000 * SLOW) {
          for (const end = Date.now() + timeoutMs; !re.test(stderr) && Date.now() < end;) await sleep(20);
          if (!re.test(stderr)) throw new Error(`stderr never matched ${re}:\n${stderr}`);
          return stderr;
        },
        exited,
        /** Sends sig and resolves to {code, sig} (SIGKILL after timeoutMs). */
        async stop(sig = 'SIGTERM', timeoutMs = 60000 * SLOW) {
          if (exitInfo) return exitInfo;
          proc.kill(sig);
          const t = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
          const e = await exited;
          clearTimeout(t);
          return e;
        },
      };
    }
    if (!exitInfo) { proc.kill('SIGKILL'); await exited; }
    if (!/cannot listen/.test(stderr)) throw new Error(`server did not start:\n${stderr}`);
  }
  throw new Error('no free port found');
}

/** An SDK client for srv (no retries: tests want to see every status). */
export function client(srv, extra = {}) {
  return new OpenAI({ baseURL: srv.base, apiKey: extra.apiKey || 'unused', maxRetries: 0,
    timeout: 120000 * SLOW, ...extra });
}

/** fetch() with a JSON body; returns {status, headers, json, text}. */
export async function api(srv, method, path, body, headers = {}) {
  const init = { method, headers: { ...headers } };
  if (body !== undefined) {
    init.body = typeof body === 'string' || body instanceof Uint8Array ? body : JSON.stringify(body);
    if (!init.headers['Content-Type']) init.headers['Content-Type'] = 'application/json';
  }
  init.signal = AbortSignal.timeout(120000 * SLOW);
  const r = await fetch(srv.url + path, init);
  const buf = new Uint8Array(await r.arrayBuffer());
  const text = new TextDecoder().decode(buf);
  let json = null;
  try { json = JSON.parse(text); } catch {}
  return { status: r.status, headers: r.headers, json, text, bytes: buf };
}

/**
 * Raw TCP exchange: writes `data` (string or Buffer, or an array of
 * [delayMs, chunk] steps) and collects the reply until the server closes or
 * timeoutMs passes. Resolves {text, closed}.
 */
export function raw(port, data, timeoutMs = 10000) {
  return new Promise((resolvePromise) => {
    const s = net.connect(port, '127.0.0.1');
    let out = Buffer.alloc(0), done = false;
    const finish = (closed) => {
      if (done) return; done = true; clearTimeout(t); s.destroy();
      resolvePromise({ text: out.toString('latin1'), closed });
    };
    const t = setTimeout(() => finish(false), timeoutMs);
    s.on('data', (d) => { out = Buffer.concat([out, d]); });
    s.on('close', () => finish(true));
    s.on('error', () => finish(true));
    s.on('connect', async () => {
      if (!Array.isArray(data)) { s.write(data); return; }
      for (const [delay, chunk] of data) {
        await sleep(delay);
        if (done) return;
        s.write(chunk);
      }
    });
  });
}

/** Parses Prometheus text into {name{labels}: value}. */
export async function metrics(srv) {
  const r = await api(srv, 'GET', '/metrics');
  const m = {};
  for (const line of r.text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    m[line.slice(0, i)] = Number(line.slice(i + 1));
  }
  return m;
}

/** VmRSS of pid in KiB. */
export function rssKiB(pid) {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(s)[1]);
}

/** logit_bias that restricts a byte-level model to lowercase letters and space,
 * so greedy replies are clean ASCII (token id = byte + 1). */
export function asciiBias() {
  const b = {};
  for (let c = 97; c <= 122; c++) b[String(c + 1)] = 100;
  b[String(32 + 1)] = 100;
  return b;
}

export { sleep, existsSync };
