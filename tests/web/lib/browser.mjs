// Starts Debian's chromium (no browser download) under puppeteer-core with a
// fresh profile, and records what a page reports: console errors, uncaught
// exceptions, CSP violations, failed requests and JavaScript dialogs.
import puppeteer from 'puppeteer-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

/** protocolTimeout bounds every call, a waitForFunction's whole wait included. */
export async function launch({ protocolTimeout = 120000 } = {}) {
  const profile = mkdtempSync(join(tmpdir(), 'metastate-chromium-'));
  const browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: false, // the flag is given below, as Debian's chromium takes it
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      `--user-data-dir=${profile}`],
    protocolTimeout,
    timeout: 60000,
  });
  const close = browser.close.bind(browser);
  browser.close = async () => {
    await close();
    rmSync(profile, { recursive: true, force: true });
  };
  return browser;
}

/** A new page with its problem log: page.problems = {console, errors, csp, failed, dialogs}. */
export async function newPage(browser, { width = 1280, height = 800, mobile = false } = {}) {
  const ctx = await browser.createBrowserContext();
  const page = await ctx.newPage();
  await page.setViewport({ width, height, isMobile: mobile, hasTouch: mobile, deviceScaleFactor: mobile ? 2 : 1 });
  const p = { console: [], errors: [], csp: [], failed: [], dialogs: [] };
  page.problems = p;
  page.on('console', (m) => { if (m.type() === 'error') p.console.push(m.text()); });
  page.on('pageerror', (e) => p.errors.push(String(e)));
  page.on('requestfailed', (r) => {
    // An aborted stream (the Stop button) is expected to fail.
    if (!/ERR_ABORTED/.test(r.failure()?.errorText || '')) p.failed.push(`${r.url()} ${r.failure()?.errorText}`);
  });
  page.on('dialog', async (d) => {
    p.dialogs.push(`${d.type()}: ${d.message()}`);
    if (d.type() === 'confirm') await d.accept(); else await d.dismiss();
  });
  await page.evaluateOnNewDocument(() => {
    window.__csp = [];
    document.addEventListener('securitypolicyviolation', (e) =>
      window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
  });
  page.cspViolations = async () => page.evaluate(() => window.__csp);
  page.closeAll = () => ctx.close();
  return page;
}
