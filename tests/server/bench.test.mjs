// `metastate bench`: the figures it prints are ratios to limits it measures
// in the same process (cli/bench_limits.c), so the RESULT line must hold the
// limits and the ratios must follow from them; bad arguments fail cleanly.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { tinyModel, BIN, SLOW } from './lib/server.mjs';

function bench(args) {
  return spawnSync(BIN, ['bench', ...args], { encoding: 'utf8', timeout: 300000 * SLOW });
}

function result(stdout) {
  const line = stdout.split('\n').find((l) => l.startsWith('RESULT '));
  assert.ok(line, `no RESULT line in:\n${stdout}`);
  return Object.fromEntries(line.slice(7).split(' ').map((kv) => kv.split('=')));
}

const cpuFlags = (() => {
  try {
    const m = readFileSync('/proc/cpuinfo', 'utf8').match(/^flags\s*:(.*)$/m);
    return new Set(m ? m[1].trim().split(/\s+/) : []);
  } catch { return new Set(); }
})();

test('bench measures bandwidth, sgemm and FMA peaks and divides by them', () => {
  const r = bench(['--model', tinyModel(1), '--weights', 'q4', '--threads', '1', '--prompt', '32',
    '--gen', '16', '--batch-steps', '2', '--label', 'tiny']);
  assert.equal(r.status, 0, r.stderr);
  const k = result(r.stdout);
  const num = (key) => { const v = Number(k[key]); assert.ok(Number.isFinite(v), `${key}=${k[key]}`); return v; };
  assert.equal(k.label, 'tiny');
  assert.ok(num('bw_gbs') > 0.1, `bandwidth ${k.bw_gbs}`);
  assert.ok(num('sgemm_gflops') > 0, `sgemm ${k.sgemm_gflops}`);
  // Generation efficiency is the bytes a token moves over the measured bandwidth.
  const bytes = (num('read_mb') + num('state_rw_mb')) * 1048576;
  const expect = (bytes * num('gen_tps')) / (num('bw_gbs') * 1e9);
  assert.ok(Math.abs(num('gen_eff') - expect) <= 0.02 * expect + 0.002,
    `gen_eff ${k.gen_eff}, from its own figures ${expect.toFixed(3)}`);
  if (process.arch === 'x64' && (cpuFlags.has('avx512f') || (cpuFlags.has('avx2') && cpuFlags.has('fma')))) {
    assert.ok(num('fma_gflops') > 0, `FMA peak ${k.fma_gflops}`);
    assert.match(r.stdout, /% of FMA peak \d+ GFLOP\/s\)/);
    // Both prefill ratios divide the same FLOP rate by their own peak.
    const a = num('prefill_eff') * num('sgemm_gflops'), b = num('prefill_eff_fma') * num('fma_gflops');
    assert.ok(Math.abs(a - b) <= 0.05 * Math.max(a, b) + 0.001 * num('fma_gflops'),
      `prefill FLOP rate ${a} against the sgemm peak, ${b} against the FMA peak`);
  } else {
    assert.equal(num('fma_gflops'), 0);
  }
  assert.ok(num('step8_ms') > 0 && num('step1_ms') > 0);
});

test('bench rejects unknown formats and missing models with a message', () => {
  const bad = bench(['--model', tinyModel(1), '--weights', 'q5']);
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /usage: metastate bench/);
  const missing = bench(['--model', '/nonexistent/model.safetensors', '--batch-steps', '0']);
  assert.equal(missing.status, 1);
  assert.match(missing.stderr, /nonexistent\/model\.safetensors/);
  assert.doesNotMatch(missing.stdout, /RESULT/);
});
