// Helpers for the agent-feature tests: the trained default model with its
// byte vocabulary, and `metastate eval` logits as the reference for
// log-probabilities.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BIN, tmpDir } from './server.mjs';

const here = dirname(fileURLToPath(import.meta.url));
export const ROOT = resolve(here, '../../..');
export const DEFAULT_MODEL = join(ROOT, 'models/default.safetensors');
export const BYTES_VOCAB = join(ROOT, 'models/bytes_vocab.txt');
export const DEFAULT_NAME = 'default';
export const defaultServer = { model: DEFAULT_MODEL, args: ['--vocab', BYTES_VOCAB] };

/** Token ids of text under the byte vocabulary (id = byte + 1). */
export function byteIds(text) {
  return [...Buffer.from(text, 'utf8')].map((b) => b + 1);
}

/** `metastate eval` logits for tokens: an array of Float32Array rows (T x V). */
export function evalLogits(tokens, model = DEFAULT_MODEL) {
  const out = join(tmpDir('eval'), 'out.safetensors');
  execFileSync(BIN, ['eval', '--model', model, '--tokens', tokens.join(','), '--out', out],
    { stdio: ['ignore', 'ignore', 'pipe'], timeout: 120000 });
  const buf = readFileSync(out);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  const t = header.logits;
  const [T, V] = t.shape;
  const base = 8 + n + t.data_offsets[0];
  const all = new Float32Array(buf.buffer.slice(buf.byteOffset + base, buf.byteOffset + base + T * V * 4));
  const rows = [];
  for (let i = 0; i < T; i++) rows.push(all.subarray(i * V, (i + 1) * V));
  return rows;
}

/** log-softmax of row at id, in double precision. */
export function logSoftmaxAt(row, id) {
  let m = -Infinity;
  for (const x of row) if (x > m) m = x;
  let s = 0;
  for (const x of row) s += Math.exp(x - m);
  return row[id] - m - Math.log(s);
}

/** Collects an SSE stream of a fetch Response into parsed events [{event, data}]. */
export async function sseEvents(res) {
  const text = await res.text();
  const out = [];
  for (const block of text.split('\n\n')) {
    if (!block.trim()) continue;
    let event = null, data = '';
    for (const line of block.split('\n')) {
      if (line.startsWith('event: ')) event = line.slice(7);
      else if (line.startsWith('data: ')) data += line.slice(6);
    }
    out.push({ event, data: data === '[DONE]' ? data : JSON.parse(data) });
  }
  return out;
}
