// The settings' initial state (state tuning): the page lists the server's
// --init-state names and its replies start from the chosen one.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SLOW, api, startServer, tmpDir } from '../server/lib/server.mjs';
import { launch, newPage } from './lib/browser.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const MODEL = join(ROOT, 'models/default.safetensors');
const VOCAB = join(ROOT, 'models/bytes_vocab.txt');
const T = 120000 * SLOW;

/** Renames the tensors of an exported session state (state.<i>.att_kv, ...)
 * to a state-tuning file's (blocks.<i>.att.time_state, ...): same shapes. */
function stateTuningFile(exported, path) {
  const n = Number(exported.readBigUInt64LE(0));
  const header = JSON.parse(exported.subarray(8, 8 + n).toString('utf8'));
  const names = { att_kv: 'att.time_state', att_x_prev: 'att.ts_state', ffn_x_prev: 'ffn.ts_state' };
  const out = {};
  for (const [k, v] of Object.entries(header)) {
    const m = /^state\.(\d+)\.(\w+)$/.exec(k);
    if (m && names[m[2]]) out[`blocks.${m[1]}.${names[m[2]]}`] = v;
    else if (k === '__metadata__') out[k] = v;
  }
  let json = JSON.stringify(out);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(path, Buffer.concat([len, Buffer.from(json), exported.subarray(8 + n)]));
  return path;
}

let srv, browser;
before(async () => {
  // The initial state: what the default model remembers after a short chat.
  const donor = await startServer({ model: MODEL, args: ['--vocab', VOCAB] });
  const r = await api(donor, 'POST', '/v1/chat/completions', {
    model: 'default', session_id: 'donor', max_tokens: 20, temperature: 0,
    messages: [{ role: 'user', content: 'My name is Ada and I keep a lighthouse.' }] });
  assert.equal(r.status, 200, r.text);
  const st = await api(donor, 'GET', '/v1/sessions/donor/state');
  await donor.stop();
  const file = stateTuningFile(Buffer.from(st.bytes), join(tmpDir('web-init'), 'ada.safetensors'));
  srv = await startServer({ model: MODEL, args: ['--vocab', VOCAB, '--init-state', `ada=${file}`] });
  browser = await launch({ protocolTimeout: T + 10000 }); // longer than any single wait
});
after(async () => {
  await browser?.close();
  await srv?.stop();
});

test('the settings list the initial states; a reply starts from the chosen one', async () => {
  const page = await newPage(browser);
  page.setDefaultTimeout(T);
  await page.goto(srv.url + '/', { waitUntil: 'load' });
  await page.waitForFunction(() => document.getElementById('model-name').textContent === 'default');
  await page.click('#open-settings');
  await page.waitForSelector('#settings[open]');
  const options = await page.$$eval('#state-select option', (o) => o.map((x) => x.value));
  assert.deepEqual(options, ['', 'ada']);
  await page.select('#state-select', 'ada');
  await page.type('#settings-form [name="temperature"]', '0');
  await page.type('#settings-form [name="max_tokens"]', '40');
  await page.click('#settings-save');
  await page.waitForSelector('#settings:not([open])');
  await page.type('#input', 'What is my name?');
  await page.keyboard.press('Enter');
  await page.waitForSelector('.msg.assistant:not(.streaming) .stats');
  const shown = await page.$eval('.msg.assistant .bubble', (b) => b.textContent);
  const body = { model: 'default', temperature: 0, max_tokens: 40, messages: [{ role: 'user', content: 'What is my name?' }] };
  const withState = await api(srv, 'POST', '/v1/chat/completions', { ...body, state: 'ada' });
  const without = await api(srv, 'POST', '/v1/chat/completions', body);
  assert.equal(shown, withState.json.choices[0].message.content, 'the page reply started from "ada"');
  assert.notEqual(withState.json.choices[0].message.content, without.json.choices[0].message.content,
    'the state changes the reply (else this test could not tell)');
  assert.deepEqual(page.problems.console, []);
  await page.closeAll();
});
