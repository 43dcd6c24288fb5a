// --metrics-port: /metrics without the API key on a second port (for
// Prometheus annotation scraping, deploy/kubernetes.yaml), nothing else
// there; the main port keeps every route but /health behind the key.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { spawnSync } from 'node:child_process';
import { startServer, BIN, tinyModel } from './lib/server.mjs';

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
  });
}

test('--metrics-port serves /metrics without the key, and only /metrics', async () => {
  const mp = await freePort();
  const srv = await startServer({ args: ['--api-key', 'sekrit', '--metrics-port', String(mp)] });
  try {
    const m = await fetch(`http://127.0.0.1:${mp}/metrics`);
    assert.equal(m.status, 200);
    assert.match(await m.text(), /metastate_model_loaded 1/);
    assert.equal((await fetch(`http://127.0.0.1:${mp}/v1/models`)).status, 404);
    assert.equal((await fetch(`http://127.0.0.1:${mp}/health`)).status, 404);
    assert.equal((await fetch(`${srv.url}/metrics`)).status, 401, 'the main port still wants the key');
    const ok = await fetch(`${srv.url}/metrics`, { headers: { Authorization: 'Bearer sekrit' } });
    assert.equal(ok.status, 200);
  } finally {
    assert.equal((await srv.stop()).code, 0, srv.stderr());
  }
});

test('--metrics-port equal to --port, or --state-dir with --state-store, is refused with a message', () => {
  const run = (...a) => spawnSync(BIN, ['serve', '--model', tinyModel(1), ...a], { encoding: 'utf8', timeout: 60000 });
  const r = run('--port', '18080', '--metrics-port', '18080');
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /--metrics-port must differ/);
  const r2 = run('--state-dir', '/tmp/x', '--state-store', 'redis://127.0.0.1:1');
  assert.notEqual(r2.status, 0);
  assert.match(r2.stderr, /choose one/);
});
