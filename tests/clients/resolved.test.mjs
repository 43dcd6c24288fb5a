// The premise of this lane: the server tests' imports reach this folder's
// packages (through resolve.mjs), not tests/server's older majors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { VERSION } from 'openai/version';
import pkg from './package.json' with { type: 'json' };
import { client } from '../server/lib/server.mjs';

test("the server tests' openai is this folder's current major", () => {
  assert.equal(VERSION, pkg.dependencies.openai);
  const oa = client({ base: 'http://127.0.0.1:9/v1' });
  assert.ok(oa instanceof OpenAI, 'tests/server/lib/server.mjs did not import tests/clients\' openai');
});
