// resolve.mjs - loaded with `node --import` before the server tests: their
// packages ('openai', 'ai', '@langchain/openai', ...) come from this
// folder's node_modules instead of tests/server's, so the same test files
// run against the clients' current major versions.
import { isBuiltin, registerHooks } from 'node:module';

const tests = new URL('../server/', import.meta.url).href;
const here = new URL('package.json', import.meta.url).href;

registerHooks({
  resolve(specifier, context, next) {
    const bare = !isBuiltin(specifier) && !/^(\.{0,2}\/|[a-z]+:)/.test(specifier);
    const parent = context.parentURL || '';
    if (bare && parent.startsWith(tests) && !parent.includes('/node_modules/'))
      return next(specifier, { ...context, parentURL: here });
    return next(specifier, context);
  },
});
