// End-to-end test of the browser SDK (/sdk.js, /sdk.mjs) from a publisher
// page on another origin, in Debian's Chromium driven by playwright-core.
//
//   ADTRACK_URL=http://127.0.0.1:8080 node e2e/sdk.test.mjs
//
// The test serves the publisher pages itself, from 127.0.0.1 on other ports
// than adtrack's (other origins). With ADTRACK_STRICT_URL (an adtrack
// started with CORS_ORIGINS=http://127.0.0.1:$SDK_PAGE_PORT) it also checks
// a page whose origin is not listed; e2e/run.sh starts both.
// Prints one line per check and "N passed, M failed"; exits non-zero on any
// failure.

import http from 'node:http';
import { chromium } from 'playwright-core';
import { drained } from './funnel.mjs';

const BASE = (process.env.ADTRACK_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const STRICT = (process.env.ADTRACK_STRICT_URL || '').replace(/\/+$/, '');
const PAGE_PORT = Number(process.env.SDK_PAGE_PORT || 0);
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const RUN = Date.now().toString(36);
// adtrack's ADMIN_TOKEN (e2e/run.sh sets it): /admin/queue tells when
// every accepted event is stored and counted.
const ADMIN_TOKEN = process.env.ADMIN_TOKEN || '';

// ------------------------------------------------------------ tiny runner

const results = [];

async function check(name, fn) {
  const started = Date.now();
  try {
    await fn();
    results.push({ name, ok: true });
    console.log(`  ok    ${name} (${Date.now() - started} ms)`);
  } catch (err) {
    results.push({ name, ok: false });
    const detail = String((err && err.message) || err).split('\n').slice(0, 6).join('\n        ');
    console.log(`  FAIL  ${name}\n        ${detail}`);
  }
}

function assert(condition, message) {
  if (!condition) throw new Error(message);
}

async function eventually(fn, { timeout = 15_000, interval = 200, message = 'condition not met' } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`${message} within ${timeout} ms (last: ${JSON.stringify(last)})`);
    await new Promise((resolve) => setTimeout(resolve, interval));
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** adtrack's figures for adId, all time. */
async function counts(adId, base = BASE) {
  const res = await fetch(`${base}/ads/analytics?adId=${encodeURIComponent(adId)}&timeframe=all`);
  assert(res.ok, `analytics for ${adId} answered ${res.status}`);
  const body = await res.json();
  return { impressions: body.impressions, clicks: body.totalClicks };
}

async function expectCounts(adId, want) {
  let got;
  await eventually(async () => {
    got = await counts(adId);
    return got.impressions === want.impressions && got.clicks === want.clicks;
  }, { message: `${adId}: want ${JSON.stringify(want)}, have ${JSON.stringify(got)}` }).catch((e) => {
    throw new Error(`${e.message}; last ${JSON.stringify(got)}`);
  });
  // Exact: once adtrack's pipeline has drained (the pages' queues are
  // empty or closed before this is called), nothing more is on its way, so
  // the figures must still be the wanted ones (a retry counted twice
  // would show here).
  await drained(BASE, ADMIN_TOKEN);
  got = await counts(adId);
  assert(got.impressions === want.impressions && got.clicks === want.clicks,
    `${adId}: want ${JSON.stringify(want)}, then have ${JSON.stringify(got)}`);
}

// ------------------------------------------------ the publisher's website

/** A publisher page that loads the SDK from `base` as a classic script or a module. */
function pageHtml(base, kind) {
  const load = kind === 'module'
    ? `<script type="module">
import adtrack, { track } from '${base}/sdk.mjs';
window.sdk = adtrack; window.namedTrack = track; window.sdkReady = true;
</script>`
    : `<script src="${base}/sdk.js"></script><script>window.sdk = window.adtrack; window.sdkReady = !!window.adtrack;</script>`;
  return `<!doctype html><html><head><meta charset="utf-8"><title>publisher</title></head>
<body><h1>A publisher's page</h1>${load}
<div style="height:3000px"></div><div id="ad" style="width:300px;height:250px;background:#c33">ad</div>
<div style="height:3000px"></div></body></html>`;
}

function publisher(port) {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    if (url.pathname !== '/page') {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
    res.end(pageHtml(url.searchParams.get('base'), url.searchParams.get('kind')));
  });
  return new Promise((resolve) => server.listen(port, '127.0.0.1', () => resolve(server)));
}

// ------------------------------------------------------------------- test

async function main() {
  const site = await publisher(PAGE_PORT);
  const other = await publisher(0);
  const SITE = `http://127.0.0.1:${site.address().port}`;
  const OTHER = `http://127.0.0.1:${other.address().port}`;
  console.log(`adtrack SDK test: pages on ${SITE} and ${OTHER}, adtrack at ${BASE}${STRICT ? ` and ${STRICT} (CORS_ORIGINS=${SITE})` : ''}`);

  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic',
      '--no-first-run', '--disable-component-update', '--disable-sync'],
  });
  const pageErrors = [];
  async function open(context, { base = BASE, kind = 'classic', origin = SITE, init = {} } = {}) {
    const page = await context.newPage();
    page.on('pageerror', (err) => pageErrors.push(err.message));
    await page.goto(`${origin}/page?kind=${kind}&base=${encodeURIComponent(base)}`);
    await page.waitForFunction(() => window.sdkReady === true);
    await page.evaluate(([endpoint, init]) => window.sdk.init({ endpoint, ...init }), [base, init]);
    return page;
  }
  const pending = (page) => page.evaluate(() => window.sdk.pending().length);
  const trackMany = (page, adId, impressions, clicks) =>
    page.evaluate(([adId, i, c]) => {
      for (let n = 0; n < i; n++) window.sdk.track('impression', { adId });
      for (let n = 0; n < c; n++) window.sdk.track('click', { adId, videoPlaybackTime: 1.5 });
    }, [adId, impressions, clicks]);

  const context = await browser.newContext();

  await check('the SDK loads cross-origin as a module and its JSON batches pass the preflight', async () => {
    const adId = `sdk-module-${RUN}`;
    const page = await open(context, { kind: 'module' });
    const answer = page.waitForResponse((r) => r.url() === `${BASE}/events/batch` && r.request().method() === 'POST');
    await trackMany(page, adId, 3, 2);
    await page.evaluate((adId) => window.namedTrack('impression', { adId }), adId);
    const res = await answer;
    assert(res.status() === 202, `batch answered ${res.status()}`);
    const headers = await res.request().allHeaders();
    assert(headers['content-type'] === 'application/json', `sent as ${headers['content-type']}`);
    assert((await res.headerValue('access-control-allow-origin')) === SITE, 'no Access-Control-Allow-Origin for the page');
    await eventually(async () => (await pending(page)) === 0, { message: 'queue drained' });
    await expectCounts(adId, { impressions: 4, clicks: 2 });
    await page.close();
  });

  await check('a gzip batch from the page (CompressionStream) is accepted', async () => {
    const adId = `sdk-gzip-${RUN}`;
    const page = await open(context);
    const status = await page.evaluate(async ([base, adId]) => {
      const events = Array.from({ length: 20 }, () => ({ type: 'impression', adId, eventId: crypto.randomUUID() }));
      const body = new Blob([JSON.stringify({ events })]).stream().pipeThrough(new CompressionStream('gzip'));
      const res = await fetch(`${base}/events/batch`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'Content-Encoding': 'gzip' },
        body: await new Response(body).blob(),
      });
      return `${res.status} ${(await res.json()).accepted}`;
    }, [BASE, adId]);
    assert(status === '202 20', `gzip batch answered ${status}`);
    await expectCounts(adId, { impressions: 20, clicks: 0 });
    await page.close();
  });

  await check('offline, then online: every event counted once', async () => {
    const adId = `sdk-offline-${RUN}`;
    const page = await open(context, { init: { flushInterval: 100 } });
    await context.setOffline(true);
    await trackMany(page, adId, 5, 3);
    await sleep(1500); // at least one failed send, now backing off
    assert((await pending(page)) === 8, `${await pending(page)} events queued while offline`);
    await context.setOffline(false);
    await eventually(async () => (await pending(page)) === 0, { message: 'queue drained after going online' });
    await expectCounts(adId, { impressions: 5, clicks: 3 });
    await page.close();
  });

  await check('events queued before a reload are sent by the next page load', async () => {
    const adId = `sdk-reload-${RUN}`;
    const page = await open(context, { init: { flushInterval: 100 } });
    // The network to adtrack fails (beacons too) until the page has reloaded.
    await context.route(`${BASE}/events/batch`, (route) => route.abort('internetdisconnected'));
    await trackMany(page, adId, 4, 1);
    await sleep(500);
    const stored = await page.evaluate(() =>
      Object.keys(localStorage).filter((k) => k.startsWith('adtrack:queue:'))
        .reduce((n, k) => n + JSON.parse(localStorage.getItem(k)).length, 0));
    assert(stored === 5, `${stored} events in localStorage`);
    await page.reload();
    await page.waitForFunction(() => window.sdkReady === true);
    await page.evaluate((endpoint) => window.sdk.init({ endpoint }), BASE);
    assert((await pending(page)) === 5, `${await pending(page)} events adopted after the reload`);
    await context.unroute(`${BASE}/events/batch`);
    await eventually(async () => (await pending(page)) === 0, { message: 'queue drained after the reload' });
    await expectCounts(adId, { impressions: 4, clicks: 1 });
    await page.close();
  });

  await check('a 503 is retried after its Retry-After with the same eventIds; a 400 drops the batch', async () => {
    const adId = `sdk-retry-${RUN}`;
    const page = await open(context, { init: { flushInterval: 100 } });
    const errors = [];
    page.on('console', (msg) => msg.type() === 'error' && errors.push(msg.text()));
    const sent = [];
    let answer = { status: 503, headers: { 'Retry-After': '2' } };
    await context.route(`${BASE}/events/batch`, (route) => {
      const request = route.request();
      if (request.method() !== 'POST') return route.continue();
      sent.push({ at: Date.now(), ids: JSON.parse(request.postData()).events.map((e) => e.eventId).join() });
      const fake = answer;
      answer = null; // once
      if (!fake) return route.continue();
      return route.fulfill({
        status: fake.status,
        contentType: 'application/json',
        headers: { 'Access-Control-Allow-Origin': SITE, 'Access-Control-Expose-Headers': 'Retry-After', ...fake.headers },
        body: '{"error":"unavailable","message":"faked by the test"}',
      });
    });
    await trackMany(page, adId, 2, 1);
    await eventually(async () => (await pending(page)) === 0, { message: 'queue drained after the 503' });
    assert(sent.length === 2, `${sent.length} requests`);
    assert(sent[0].ids === sent[1].ids, 'the retry carried other eventIds');
    const waited = sent[1].at - sent[0].at;
    assert(waited >= 1900 && waited < 4000, `retried after ${waited} ms, not Retry-After's 2 s`);
    await expectCounts(adId, { impressions: 2, clicks: 1 });

    answer = { status: 400, headers: {} };
    await page.evaluate((adId) => window.sdk.track('impression', { adId }), adId);
    await eventually(async () => (await pending(page)) === 0, { message: 'the refused batch dropped' });
    await context.unroute(`${BASE}/events/batch`);
    assert(errors.some((e) => /dropped: HTTP 400/.test(e)), `console: ${errors.join(' | ')}`);
    await expectCounts(adId, { impressions: 2, clicks: 1 });
    await page.close();
  });

  await check('a page closed mid-batch delivers the rest by beacon', async () => {
    const adId = `sdk-close-${RUN}`;
    const ctx = await browser.newContext(); // its own storage: nothing adopts these later
    const page = await open(ctx, { init: { batchSize: 5, flushInterval: 60_000 } });
    await trackMany(page, adId, 6, 2); // one batch of 5 goes at once, 3 wait
    await page.close({ runBeforeUnload: true });
    await expectCounts(adId, { impressions: 6, clicks: 2 });
    await ctx.close();
  });

  await check('viewability: an impression after 1 s at least half in view, once', async () => {
    const adId = `sdk-view-${RUN}`;
    const page = await open(context);
    await page.evaluate((adId) => window.sdk.viewable(document.getElementById('ad'), { adId }), adId);
    await sleep(1500); // below the fold: nothing
    assert((await page.evaluate(() => window.sdk.pending().length)) === 0, 'an impression before the ad was seen');
    await page.evaluate(() => document.getElementById('ad').scrollIntoView({ block: 'center' }));
    await sleep(400); // seen too briefly
    await page.evaluate(() => window.scrollTo(0, 0));
    await sleep(1200);
    assert((await counts(adId)).impressions === 0, 'an impression after 0.4 s in view');
    await page.evaluate(() => document.getElementById('ad').scrollIntoView({ block: 'center' }));
    await sleep(1500);
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.evaluate(() => document.getElementById('ad').scrollIntoView({ block: 'center' }));
    await sleep(1500);
    await expectCounts(adId, { impressions: 1, clicks: 0 });
    await page.close();
  });

  if (STRICT) {
    await check('a page whose origin is not listed is blocked by the browser and keeps its events (its beacon still lands)', async () => {
      const adId = `sdk-strict-${RUN}`;
      const ctx = await browser.newContext();
      // The listed origin works against the strict instance...
      const listed = await open(ctx, { base: STRICT, origin: SITE, init: { flushInterval: 100 } });
      await trackMany(listed, adId, 1, 0);
      await eventually(async () => (await pending(listed)) === 0, { message: 'listed page drained' });
      await expectCounts(adId, { impressions: 1, clicks: 0 });
      // ...another origin loads the SDK (it is public) but its batches fail.
      const page = await open(ctx, { base: STRICT, origin: OTHER, init: { flushInterval: 100 } });
      const failed = page.waitForEvent('requestfailed', (r) => r.url() === `${STRICT}/events/batch`);
      await trackMany(page, adId, 2, 1);
      const request = await failed;
      assert(/CORS|ERR_FAILED/i.test(request.failure().errorText), `failed with ${request.failure().errorText}`);
      // The refused batch goes back to the page's queue, and nothing of it
      // reaches adtrack.
      await eventually(async () => (await pending(page)) === 3, { message: 'the 3 events back in the queue' });
      await drained(BASE, ADMIN_TOKEN);
      const got = await counts(adId);
      assert(got.impressions === 1 && got.clicks === 0, `counts moved: ${JSON.stringify(got)}`);
      // CORS is not access control: leaving the page sends the queue by
      // beacon (text/plain, no preflight), which adtrack serves and counts.
      await page.close({ runBeforeUnload: true });
      await expectCounts(adId, { impressions: 3, clicks: 1 });
      await ctx.close();
    });
  } else {
    console.log('  skip  not-listed origin (needs ADTRACK_STRICT_URL)');
  }

  await check('no uncaught exceptions in the publisher pages', async () => {
    assert(pageErrors.length === 0, pageErrors.join('\n'));
  });

  await context.close();
  await browser.close();
  site.close();
  other.close();
}

let crashed = false;
try {
  await main();
} catch (err) {
  crashed = true;
  console.log(`  FAIL  test run aborted: ${(err && err.stack) || err}`);
}

const passed = results.filter((r) => r.ok).length;
const failed = results.length - passed + (crashed ? 1 : 0);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
