// adtrack's VAST documents read by a real player library in a real browser:
// @dailymotion/vast-client (the build the web UI vendors, checked equal to
// the npm release pinned in package.json) parses each catalogue ad's
// GET /vast/{adId} in Chromium, and its VASTTracker fires the document's own
// pixels. Afterwards the funnel in /ads/analytics is exact, and firing every
// pixel and the click redirect a second time changes nothing.
//
//   ADTRACK_URL=http://127.0.0.1:8080 ADMIN_TOKEN=… node e2e/vast.test.mjs
//
// Needs ADMIN_TOKEN (it reads /admin/queue to know when the pipeline drained).
// Prints one line per check and a closing "N passed, M failed".

import { readFile } from 'node:fs/promises';
import { chromium } from 'playwright-core';
import { FUNNEL, TRACKING_EVENTS, PixelLog, analytics, differences, drained, plus } from './funnel.mjs';

const BASE = (process.env.ADTRACK_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const ADMIN_TOKEN = process.env.ADMIN_TOKEN || '';
const VENDORED = new URL('../web/vendor/vast-client/vast-client.min.js', import.meta.url);
const FROM_NPM = new URL('./node_modules/@dailymotion/vast-client/dist/vast-client.min.js', import.meta.url);

// ------------------------------------------------------------ tiny runner

const results = [];

async function check(name, fn) {
  const started = Date.now();
  try {
    await fn();
    results.push({ name, ok: true });
    console.log(`  ok    ${name} (${Date.now() - started} ms)`);
    return true;
  } catch (err) {
    results.push({ name, ok: false });
    const detail = String((err && err.message) || err).split('\n').slice(0, 8).join('\n        ');
    console.log(`  FAIL  ${name}\n        ${detail}`);
    return false;
  }
}

function assert(condition, message) {
  if (!condition) throw new Error(message);
}

/** Polls fn until it returns a truthy value or the timeout passes. */
async function eventually(fn, { timeout = 10_000, interval = 50, message = 'condition not met' } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await fn();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`${typeof message === 'function' ? message() : message} within ${timeout} ms`);
    await new Promise((resolve) => setTimeout(resolve, interval));
  }
}

// ------------------------------------------------------ in the browser

/**
 * Runs in the page: loads the vendored client, fetches one VAST document per
 * entry of `plans` and plays each plan through a VASTTracker. Returns what
 * the client parsed, for the checks. The parsed ads stay in window.views so
 * a later call can fire the same documents' pixels again.
 */
async function playViews({ adId, plans, again }) {
  const { VASTClient, VASTTracker } = await import('/vendor/vast-client/vast-client.min.js');
  window.views = window.views || {};
  const out = [];
  for (const [i, plan] of plans.entries()) {
    const key = `${adId}:${i}`;
    let parsed = window.views[key];
    if (!again) {
      const response = await new VASTClient().get(new URL(`/vast/${encodeURIComponent(adId)}`, location.href).href);
      const ad = response.ads[0];
      const creative = ad && ad.creatives.find((c) => c.type === 'linear');
      parsed = { response, ad, creative };
      window.views[key] = parsed;
    }
    const { response, ad, creative } = parsed;
    const tracker = new VASTTracker(null, ad, creative);
    let clickThrough = null;
    tracker.on('clickthrough', (url) => { clickThrough = url; });
    const d = creative.duration;
    if (plan.includes('impression')) tracker.trackImpression();
    if (plan.includes('start')) tracker.setProgress(0.2);
    if (plan.includes('quartiles')) for (const f of [0.26, 0.51, 0.76, 1]) tracker.setProgress(d * f);
    if (plan.includes('complete')) tracker.complete();
    if (plan.includes('skip')) tracker.skip();
    if (plan.includes('error')) tracker.error({ ERRORCODE: '405' });
    if (plan.includes('click')) tracker.click();
    out.push({
      version: response.version,
      ads: response.ads.length,
      adId: ad && ad.id,
      adServingId: ad && ad.adServingId,
      system: ad && ad.system && ad.system.value,
      title: ad && ad.title,
      impressions: ad ? ad.impressionURLTemplates.map((t) => t.url) : [],
      errors: ad ? ad.errorURLTemplates : [],
      creatives: ad ? ad.creatives.length : 0,
      linear: !!creative,
      universalAdIds: creative ? creative.universalAdIds.map((u) => `${u.idRegistry}:${u.value}`) : [],
      duration: creative && creative.duration,
      media: creative ? creative.mediaFiles.map((m) => ({ url: m.fileURL, type: m.mimeType, delivery: m.deliveryType, width: m.width, height: m.height })) : [],
      tracking: creative ? Object.fromEntries(Object.entries(creative.trackingEvents).map(([k, v]) => [k, v.map((t) => t.url || t)])) : {},
      clickThroughTemplate: creative && creative.videoClickThroughURLTemplate && creative.videoClickThroughURLTemplate.url,
      clickThrough,
    });
  }
  return out;
}

// Each ad gets three views: watched to the end and clicked, skipped after
// its start, and failed before it showed (VAST error 405).
const PLANS = [
  ['impression', 'start', 'quartiles', 'complete', 'click'],
  ['impression', 'start', 'skip'],
  ['error'],
];
const EXPECTED = {
  impressions: 2, starts: 2, firstQuartiles: 1, midpoints: 1, thirdQuartiles: 1, completes: 1, skips: 1, errors: 1, totalClicks: 1,
};

// ------------------------------------------------------------------- test

async function main() {
  console.log(`adtrack VAST test against ${BASE}`);
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic',
      '--no-first-run', '--disable-component-update', '--disable-sync'],
  });
  const context = await browser.newContext({ baseURL: BASE });
  const log = new PixelLog(context, BASE);
  // The test runs in adtrack's own page, under its real Content-Security-Policy,
  // with the page's own scripts answered empty so that only the test plays ads
  // and fires pixels. (Answers that are not HTML, /health's JSON among them,
  // carry `default-src 'none'`: no script may load in them.)
  const empty = (route) => route.fulfill({ status: 200, contentType: 'text/javascript', body: '' });
  await context.route(`${BASE}/app.js`, empty);
  await context.route(`${BASE}/vendor/uplot/uPlot.iife.min.js`, empty);
  await context.route(`${BASE}/favicon.ico`, (route) => route.fulfill({ status: 204 }));
  const page = await context.newPage();
  const pageErrors = [];
  page.on('pageerror', (err) => pageErrors.push(err.message));
  page.on('console', (msg) => { if (msg.type() === 'error') pageErrors.push(`${msg.text()} (${msg.location().url})`); });

  let ads = [];
  const baseline = new Map();
  const parsed = new Map();

  await check('the vendored client is @dailymotion/vast-client from npm, unchanged', async () => {
    const [vendored, npm] = await Promise.all([readFile(VENDORED), readFile(FROM_NPM)]);
    assert(vendored.equals(npm), `${VENDORED.pathname} differs from the npm package's dist/vast-client.min.js`);
    const pinned = JSON.parse(await readFile(new URL('./package.json', import.meta.url), 'utf8')).dependencies['@dailymotion/vast-client'];
    const version = (await readFile(new URL('../web/vendor/vast-client/VERSION', import.meta.url), 'utf8')).split(/\s+/)[1];
    assert(pinned === version, `package.json pins ${pinned}, web/vendor/vast-client/VERSION says ${version}`);
    console.log(`        @dailymotion/vast-client ${version}`);
  });

  await check('the catalogue and every ad\'s figures before the views', async () => {
    ads = await (await fetch(`${BASE}/ads`)).json();
    assert(Array.isArray(ads) && ads.length > 0, 'the catalogue is empty');
    await drained(BASE, ADMIN_TOKEN);
    for (const ad of ads) baseline.set(ad.id, await analytics(BASE, ad.id));
  });

  // adtrack's page, under its real Content-Security-Policy.
  const home = await page.goto('/');
  const policy = (home && home.headers()['content-security-policy']) || '';
  assert(home && home.ok() && policy.includes("script-src 'self'"), `GET / answered without the page's Content-Security-Policy: ${policy}`);

  await check('the client parses each ad\'s VAST 4 document and its tracker fires every pixel', async () => {
    for (const ad of ads) {
      const views = await page.evaluate(playViews, { adId: ad.id, plans: PLANS, again: false });
      parsed.set(ad.id, views);
      for (const v of views) {
        assert(/^4\./.test(v.version || ''), `${ad.id}: VAST version ${v.version}`);
        assert(v.ads === 1 && v.creatives >= 1 && v.linear, `${ad.id}: ${v.ads} ads, ${v.creatives} creatives, linear ${v.linear}`);
        assert(v.system && v.title, `${ad.id}: AdSystem "${v.system}", AdTitle "${v.title}"`);
        assert(v.adServingId, `${ad.id}: no AdServingId`);
        assert(v.universalAdIds.length >= 1, `${ad.id}: no UniversalAdId`);
        assert(v.duration > 0, `${ad.id}: Duration ${v.duration}`);
        const media = v.media.find((m) => new URL(m.url).pathname === ad.videoUrl);
        assert(media && media.type && media.delivery && media.width > 0 && media.height > 0,
          `${ad.id}: no MediaFile for ${ad.videoUrl} with type, delivery, width and height: ${JSON.stringify(v.media)}`);
        assert(v.impressions.length >= 1, `${ad.id}: no Impression`);
        for (const event of TRACKING_EVENTS) assert(v.tracking[event] && v.tracking[event].length, `${ad.id}: no Tracking for ${event}`);
        assert(v.errors.some((t) => t.includes('[ERRORCODE]')), `${ad.id}: no Error URL with [ERRORCODE]: ${JSON.stringify(v.errors)}`);
        assert(v.clickThroughTemplate, `${ad.id}: no ClickThrough`);
      }
      // One document, one view: the three documents share no URL.
      const urls = views.map((v) => new Set([...v.impressions, ...Object.values(v.tracking).flat(), v.clickThroughTemplate]));
      for (let i = 0; i < urls.length; i += 1) {
        for (let j = i + 1; j < urls.length; j += 1) {
          const shared = [...urls[i]].filter((u) => urls[j].has(u));
          assert(shared.length === 0, `${ad.id}: documents ${i} and ${j} share ${shared[0]}`);
        }
      }
      // The tracker fired each planned pixel of its own document once (the
      // browser sends an image request a moment after the tracker asks).
      const [done, skipped, failed] = views;
      const planned = [
        ...done.impressions.map((t) => ['impression', t]),
        ...['start', 'firstQuartile', 'midpoint', 'thirdQuartile', 'complete'].flatMap((e) => done.tracking[e].map((t) => [e, t])),
        ...skipped.impressions.map((t) => ['impression of the skipped view', t]),
        ...skipped.tracking.start.map((t) => ['start of the skipped view', t]),
        ...skipped.tracking.skip.map((t) => ['skip', t]),
        ...failed.errors.map((t) => ['error', t]),
      ];
      await eventually(() => planned.every(([, t]) => log.matching(t).length >= 1), {
        message: () => `${ad.id}: not every planned pixel was requested (${planned.filter(([, t]) => !log.matching(t).length).map(([e]) => e)})`,
      });
      for (const [event, t] of planned) assert(log.matching(t).length === 1, `${ad.id}: ${event} fired ${log.matching(t).length} times`);
      for (const t of failed.errors) {
        const [hit] = log.matching(t);
        assert(!hit.url.includes('[ERRORCODE]') && hit.url.includes('405'), `${ad.id}: error pixel ${hit.url} lacks its code`);
      }
      for (const t of failed.impressions) assert(log.matching(t).length === 0, `${ad.id}: the failed view fired its impression`);
      for (const t of done.tracking.skip) assert(log.matching(t).length === 0, `${ad.id}: the watched view fired skip`);
      assert(done.clickThrough, `${ad.id}: the tracker emitted no click-through URL`);
    }
    await log.settled();
    console.log(`        ${ads.length} ads × ${PLANS.length} views, ${log.entries.length} pixels answered`);
  });

  await check('the click-through is adtrack\'s redirect to the catalogue targetUrl', async () => {
    for (const ad of ads) {
      const { clickThrough } = parsed.get(ad.id)[0];
      const answer = await page.request.get(clickThrough, { maxRedirects: 0 });
      assert(answer.status() === 302, `${clickThrough} answered ${answer.status()}`);
      assert(answer.headers().location === ad.targetUrl, `${clickThrough} redirects to ${answer.headers().location}, not ${ad.targetUrl}`);
    }
  });

  const want = new Map(ads.map((ad) => [ad.id, plus(baseline.get(ad.id), EXPECTED)]));

  const expectExact = async (label) => {
    await drained(BASE, ADMIN_TOKEN);
    const wrong = [];
    for (const ad of ads) {
      const now = await analytics(BASE, ad.id);
      const diff = differences(now, want.get(ad.id));
      const impressions = want.get(ad.id).impressions;
      const rate = impressions ? want.get(ad.id).completes / impressions : 0;
      if (Math.abs((now.completionRate ?? NaN) - rate) > 1e-9) diff.push(`completionRate ${now.completionRate}≠${rate}`);
      const ctr = impressions ? want.get(ad.id).totalClicks / impressions : 0;
      if (Math.abs(now.ctr - ctr) > 1e-9) diff.push(`ctr ${now.ctr}≠${ctr}`);
      const base405 = (baseline.get(ad.id).errorsByCode || {})['405'] || 0;
      if (((now.errorsByCode || {})['405'] || 0) !== base405 + 1) diff.push(`errorsByCode.405 ${JSON.stringify(now.errorsByCode)}`);
      if (diff.length) wrong.push(`${ad.id}: ${diff.join(', ')}`);
    }
    assert(wrong.length === 0, `${label}:\n${wrong.join('\n')}`);
  };

  await check('afterwards the funnel of every ad is exact', async () => {
    await expectExact('after one run');
    for (const ad of ads) {
      const [before, after] = [baseline.get(ad.id), await analytics(BASE, ad.id)];
      console.log(`        ${ad.id}: ${FUNNEL.map((k) => `${k} ${before[k]}→${after[k]}`).join(', ')}; completionRate ${after.completionRate}, ctr ${after.ctr}`);
    }
  });

  await check('firing every pixel and click a second time changes nothing', async () => {
    const before = log.entries.length;
    // The same documents through new trackers (new [CACHEBUSTING] and
    // [TIMESTAMP] values), as a player that restarts the ad would fire them.
    for (const ad of ads) await page.evaluate(playViews, { adId: ad.id, plans: PLANS, again: true });
    // And the exact URLs fired the first time, as a retrying player would.
    const first = log.entries.slice(0, before).map((e) => e.url);
    for (const url of first) {
      const answer = await page.request.get(url, { maxRedirects: 0 });
      assert([200, 204, 302].includes(answer.status()), `${url} answered ${answer.status()} the second time`);
    }
    for (const ad of ads) await page.request.get(parsed.get(ad.id)[0].clickThrough, { maxRedirects: 0 });
    await eventually(() => log.entries.length - before >= before,
      { message: () => `only ${log.entries.length - before} pixels fired again, of ${before}` });
    await log.settled();
    await expectExact('after every pixel fired twice');
  });

  await check('no page errors', async () => {
    assert(pageErrors.length === 0, pageErrors.join('\n'));
  });

  await context.close();
  await browser.close();
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
