// End-to-end test of the adtrack web UI in a real browser (Debian's Chromium
// driven by playwright-core).
//
//   cd e2e && npm ci && cd .. && ADTRACK_URL=http://127.0.0.1:8080 node e2e/ui.test.mjs
//
// Needs a running adtrack server (with Postgres and Redis) at ADTRACK_URL and
// its ADMIN_TOKEN: the test reads /admin/queue to know when the pipeline has
// drained before it compares figures, and opens the dead-letter panel.
// Prints one line per check and a closing "N passed, M failed"; exits non-zero
// on any failure. Screenshots go to e2e/screenshots/.

import { mkdir } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { FUNNEL, PixelLog, analytics, differences, drained, plus, templatePattern } from './funnel.mjs';

const BASE = (process.env.ADTRACK_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const ADMIN_TOKEN = process.env.ADMIN_TOKEN || '';
const SHOTS = fileURLToPath(new URL('./screenshots/', import.meta.url));
const LIVE_TIMEOUT = 10_000; // how long a figure may take to rise on screen

const tid = (id) => `[data-testid="${id}"]`;

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
    const detail = String((err && err.message) || err).split('\n').slice(0, 6).join('\n        ');
    console.log(`  FAIL  ${name}\n        ${detail}`);
    return false;
  }
}

function assert(condition, message) {
  if (!condition) throw new Error(message);
}

/** Polls fn until it returns a truthy value or the timeout passes. */
async function eventually(fn, { timeout = LIVE_TIMEOUT, interval = 200, message = 'condition not met' } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`${message} within ${timeout} ms`);
    await new Promise((resolve) => setTimeout(resolve, interval));
  }
}

// ------------------------------------------------------- console watching

const consoleErrors = [];

function watch(page, label) {
  page.on('console', (msg) => {
    if (msg.type() === 'error') {
      const where = msg.location();
      consoleErrors.push(`[${label}] console.error: ${msg.text()}${where && where.url ? ` (${where.url})` : ''}`);
    }
  });
  page.on('pageerror', (err) => consoleErrors.push(`[${label}] page error: ${err.message}`));
}

async function newContext(browser, options = {}) {
  const context = await browser.newContext({ baseURL: BASE, ...options });
  // Click-throughs go to the advertisers' sites, which cannot load here.
  await context.route('https://example.com/**', (route) =>
    route.fulfill({ status: 200, contentType: 'text/plain', body: 'ok' }));
  return context;
}

// ------------------------------------------------------- page helpers

/** A Date as the value of a datetime-local input. */
function localInput(d) {
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** Runs in the page: the URLs of a VAST document, read with DOMParser. */
function parseVast(xml) {
  const d = new DOMParser().parseFromString(xml, 'text/xml');
  const all = (name) => [...d.getElementsByTagNameNS('*', name)];
  const text = (node) => node.textContent.trim();
  const tracking = {};
  for (const node of all('Tracking')) (tracking[node.getAttribute('event')] ||= []).push(text(node));
  const click = all('ClickThrough')[0];
  return {
    impressions: all('Impression').map(text),
    errors: all('Error').map(text),
    media: all('MediaFile').map(text),
    clickThrough: click ? text(click) : '',
    tracking,
  };
}

/**
 * Runs in the page: the bars a uPlot chart drew, counted along a row of
 * pixels just above its x axis (runs of the --bar colour).
 */
async function countBars(page, selector) {
  return page.evaluate((sel) => {
    const root = document.querySelector(sel);
    const canvas = root && root.querySelector('canvas');
    const over = root && root.querySelector('.u-over');
    if (!canvas || !over) return -1;
    const plot = over.getBoundingClientRect();
    const box = canvas.getBoundingClientRect();
    const scale = canvas.width / box.width;
    const hex = getComputedStyle(document.documentElement).getPropertyValue('--bar').trim();
    const want = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
    const y = Math.round((plot.bottom - box.top - 2) * scale);
    const x0 = Math.max(0, Math.round((plot.left - box.left) * scale));
    const x1 = Math.min(canvas.width, Math.round((plot.right - box.left) * scale));
    const row = canvas.getContext('2d').getImageData(x0, y, x1 - x0, 1).data;
    let runs = 0;
    let inBar = false;
    for (let i = 0; i < x1 - x0; i += 1) {
      const hit = Math.abs(row[i * 4] - want[0]) + Math.abs(row[i * 4 + 1] - want[1]) + Math.abs(row[i * 4 + 2] - want[2]) < 60;
      if (hit && !inBar) runs += 1;
      inBar = hit;
    }
    return runs;
  }, selector);
}

// ------------------------------------------------------------------- test

async function main() {
  console.log(`adtrack UI test against ${BASE}`);
  await mkdir(SHOTS, { recursive: true });

  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic',
      '--no-first-run', '--disable-component-update', '--disable-sync'],
  });

  const context = await newContext(browser, { viewport: { width: 1280, height: 900 } });
  const log = new PixelLog(context, BASE);
  const jsonTracking = []; // the player tracks through VAST only: no POST /ads/click or /ads/impression
  context.on('request', (r) => {
    const path = new URL(r.url()).pathname;
    if (r.method() === 'POST' && (path === '/ads/click' || path === '/ads/impression')) jsonTracking.push(path);
  });
  const page = await context.newPage();
  watch(page, 'desktop');

  let ads = [];
  let ad = null;          // the ad the player shows first
  let doc = null;         // its VAST document (one view), as the page parsed it
  let baselineClicks = 0;
  const baseline = new Map();

  await check('the catalogue and every ad\'s figures before the page opens', async () => {
    const answer = await fetch(`${BASE}/ads`);
    assert(answer.ok, `GET /ads answered ${answer.status}`);
    ads = await answer.json();
    assert(Array.isArray(ads) && ads.length > 0, 'the ad catalogue is empty');
    await drained(BASE, ADMIN_TOKEN);
    for (const a of ads) baseline.set(a.id, await analytics(BASE, a.id));
  });

  const firstDocument = page.waitForResponse((r) => new URL(r.url()).pathname.startsWith('/vast/'), { timeout: 20_000 });
  firstDocument.catch(() => {});

  await check('page loads with the adtrack header', async () => {
    const response = await page.goto('/', { waitUntil: 'domcontentloaded' });
    assert(response && response.ok(), `GET / answered ${response && response.status()}`);
    const brand = await page.locator('.brand-name').textContent();
    assert(brand.trim() === 'adtrack', `header reads "${brand}"`);
    assert((await page.title()) === 'adtrack', 'page title is not adtrack');
  });

  await check('player shows an ad from GET /ads', async () => {
    await page.locator(`${tid('ad-player')}[data-ad-id]`).waitFor({ timeout: 10_000 });
    const id = await page.locator(tid('ad-player')).getAttribute('data-ad-id');
    ad = ads.find((a) => a.id === id);
    assert(ad, `player shows unknown ad ${id}`);
    const title = await page.locator(tid('ad-title')).textContent();
    assert(title.trim() === ad.title, `player title "${title}" is not "${ad.title}"`);
  });

  await check('the player loads the ad\'s VAST document, plays its MediaFile and fires its impression', async () => {
    const response = await firstDocument;
    assert(new URL(response.url()).pathname === `/vast/${ad.id}`, `the player loaded ${response.url()}`);
    assert(response.status() === 200, `GET /vast/${ad.id} answered ${response.status()}`);
    assert((response.headers()['content-type'] || '').includes('xml'), `served as ${response.headers()['content-type']}`);
    doc = await page.evaluate(parseVast, await response.text());
    assert(doc.impressions.length && doc.clickThrough && doc.media.length, `document lacks parts: ${JSON.stringify(doc)}`);
    await page.waitForFunction((sel) => {
      const v = document.querySelector(sel);
      return v && !v.paused && v.currentTime > 0.3 && v.readyState >= 2;
    }, tid('ad-video'), { timeout: 15_000 });
    const src = await page.locator(tid('ad-video')).evaluate((v) => v.currentSrc);
    assert(doc.media.includes(src), `video source ${src} is none of the document's MediaFiles ${doc.media}`);
    assert(new URL(src).pathname === ad.videoUrl, `video source ${src} is not the catalogue's ${ad.videoUrl}`);
    await eventually(() => doc.impressions.every((t) => log.matching(t).length === 1),
      { message: `the impression ${doc.impressions} was not fired once` });
  });

  await check('pause, resume, unmute and mute fire the document\'s pixels', async () => {
    const video = page.locator(tid('ad-video'));
    await video.evaluate((v) => v.pause());
    await eventually(() => doc.tracking.pause.every((t) => log.matching(t).length === 1), { message: 'no pause pixel' });
    await video.evaluate((v) => v.play());
    await eventually(() => doc.tracking.resume.every((t) => log.matching(t).length === 1), { message: 'no resume pixel' });
    await page.locator(tid('mute-toggle')).click();
    await eventually(() => doc.tracking.unmute.every((t) => log.matching(t).length === 1), { message: 'no unmute pixel' });
    await page.locator(tid('mute-toggle')).click();
    await eventually(() => doc.tracking.mute.every((t) => log.matching(t).length === 1), { message: 'no mute pixel' });
  });

  await check('the ad plays to its end: start, quartiles and complete fire once each', async () => {
    await page.locator(`${tid('ad-player')}[data-state="ended"]`).waitFor({ timeout: 20_000 });
    for (const event of ['start', 'firstQuartile', 'midpoint', 'thirdQuartile', 'complete']) {
      for (const t of doc.tracking[event]) {
        await eventually(() => log.matching(t).length === 1, { timeout: 3000, message: `${event} was not fired once (${log.matching(t).length})` });
      }
    }
    for (const t of doc.tracking.skip) assert(log.matching(t).length === 0, 'a watched ad fired skip');
    for (const t of doc.errors) assert(log.matching(t).length === 0, 'a watched ad fired its Error URL');
  });

  await check('analytics panel shows the playing ad', async () => {
    await page.locator(tid('analytics-ad')).selectOption(ad.id);
    await page.locator(`${tid('analytics-stats')}[data-loaded="true"][data-ad-id="${ad.id}"]`).waitFor({ timeout: 10_000 });
    baselineClicks = Number(await page.locator(tid('stat-total-clicks')).getAttribute('data-value'));
    assert(Number.isFinite(baselineClicks), 'totalClicks is not a number');
    const ctr = await page.locator(tid('stat-ctr')).textContent();
    assert(/%$/.test(ctr.trim()), `CTR "${ctr}" is not shown as a percentage`);
    const rate = await page.locator(tid('stat-completion-rate')).textContent();
    assert(/%$/.test(rate.trim()), `completion rate "${rate}" is not shown as a percentage`);
    await page.locator(`${tid('hourly-chart')} canvas`).first().waitFor({ timeout: 5000 });
  });

  // Marks this document: a reload would lose the mark.
  await page.evaluate(() => { window.__adtrackSameDocument = true; });

  await check('clicking twice goes through the click redirect to the advertiser, with no other click sent', async () => {
    for (let i = 0; i < 2; i += 1) {
      // The new tab asks for the ClickThrough and follows its redirect to
      // the advertiser (the request the redirect leads to names both).
      const landed = context.waitForEvent('request', {
        predicate: (r) => r.url() === ad.targetUrl && r.redirectedFrom() !== null,
        timeout: 10_000,
      });
      const [popup] = await Promise.all([
        context.waitForEvent('page', { timeout: 10_000 }),
        page.locator(tid('visit-advertiser')).click(),
      ]);
      const hop = (await landed).redirectedFrom();
      assert(templatePattern(doc.clickThrough).test(hop.url()), `the tab reached ${ad.targetUrl} from ${hop.url()}, not the ClickThrough`);
      await popup.close();
    }
    const through = log.matching(doc.clickThrough);
    assert(through.length === 2, `the ClickThrough ${doc.clickThrough} was opened ${through.length} times, not 2`);
    await log.settled();
    assert(through.every((e) => e.status === 302), `the click redirect answered ${through.map((e) => e.status)}`);
    assert(jsonTracking.length === 0, `the page also sent ${jsonTracking.join(', ')}`);

    const confirmation = page.locator(tid('click-confirmation'));
    await confirmation.waitFor({ state: 'visible', timeout: 5000 });
    assert((await confirmation.getAttribute('role')) === 'status', 'confirmation lacks role="status"');
    const text = await confirmation.textContent();
    assert(text.includes('Click sent'), `confirmation reads "${text}"`);
    const shown = await page.locator(tid('click-url')).getAttribute('data-path');
    assert(shown === new URL(doc.clickThrough).pathname, `confirmation shows ${shown}, not the redirect's path`);
    await page.locator('.player-card').screenshot({ path: `${SHOTS}player.png` });
  });

  await check('totalClicks for that ad rises without a reload', async () => {
    const now = await eventually(async () => {
      const value = Number(await page.locator(tid('stat-total-clicks')).getAttribute('data-value'));
      return value > baselineClicks ? value : 0;
    }, { message: `totalClicks did not rise above ${baselineClicks}` });
    assert(await page.evaluate(() => window.__adtrackSameDocument === true), 'the page reloaded');
    console.log(`        totalClicks ${baselineClicks} -> ${now}`);
  });

  await check('that view\'s funnel is exact: one impression, start, each quartile, complete and one click for two', async () => {
    await log.settled();
    await drained(BASE, ADMIN_TOKEN);
    const want = plus(baseline.get(ad.id), { impressions: 1, starts: 1, firstQuartiles: 1, midpoints: 1, thirdQuartiles: 1, completes: 1, totalClicks: 1 });
    const all = await analytics(BASE, ad.id);
    const diff = differences(all, want);
    assert(diff.length === 0, `${ad.id}: ${diff.join(', ')}`);
    // The panel (last 24 hours) shows the same figures once it has them.
    const day = await analytics(BASE, ad.id, '24h');
    await eventually(async () => {
      for (const key of ['starts', 'firstQuartiles', 'midpoints', 'thirdQuartiles', 'completes', 'skips', 'errors']) {
        if (Number(await page.locator(tid(`funnel-${key}`)).getAttribute('data-value')) !== day[key]) return false;
      }
      return Number(await page.locator(tid('stat-total-clicks')).getAttribute('data-value')) === day.totalClicks
        && Number(await page.locator(tid('stat-completion-rate')).getAttribute('data-value')) === day.completionRate;
    }, { message: `the panel did not show ${JSON.stringify(day)}` });
    const ctr = (await page.locator(tid('stat-ctr')).textContent()).trim();
    assert(Number.parseFloat(ctr) <= 100, `CTR reads ${ctr}`);
    console.log(`        ${FUNNEL.map((k) => `${k} ${all[k]}`).join(', ')}; completionRate ${all.completionRate}, ctr ${all.ctr}`);
    await page.locator('.analytics-card').screenshot({ path: `${SHOTS}analytics.png` });
  });

  await check('Skip during the next ad fires its skip pixel and counts one skip', async () => {
    const next = ads[(ads.indexOf(ad) + 1) % ads.length];
    const nextDocument = page.waitForResponse((r) => new URL(r.url()).pathname === `/vast/${next.id}`, { timeout: 10_000 });
    await page.locator(tid('next-ad')).click();
    const d = await page.evaluate(parseVast, await (await nextDocument).text());
    await eventually(() => d.tracking.start.every((t) => log.matching(t).length === 1), { message: 'the next ad did not start' });
    await page.locator(tid('skip-ad')).click();
    await eventually(() => d.tracking.skip.every((t) => log.matching(t).length === 1), { message: 'no skip pixel' });
    await log.settled();
    await drained(BASE, ADMIN_TOKEN);
    const reached = (event) => (d.tracking[event].every((t) => log.matching(t).length === 1) ? 1 : 0);
    const want = plus(baseline.get(next.id), {
      impressions: 1, starts: 1, skips: 1,
      firstQuartiles: reached('firstQuartile'), midpoints: reached('midpoint'), thirdQuartiles: reached('thirdQuartile'),
    });
    const diff = differences(await analytics(BASE, next.id), want);
    assert(diff.length === 0, `${next.id}: ${diff.join(', ')}`);
    for (const t of d.tracking.complete) assert(log.matching(t).length === 0, 'a skipped ad fired complete');
  });

  await check('aggregates panel charts the stored events for a range', async () => {
    await page.locator(tid('agg-type')).selectOption('click');
    await page.locator(tid('agg-group')).selectOption('minute');
    const now = new Date();
    await page.locator(tid('agg-from')).fill(localInput(new Date(now.getTime() - 3 * 3600 * 1000)));
    await page.locator(tid('agg-to')).fill(localInput(new Date(now.getTime() + 120 * 1000)));
    await page.locator(tid('agg-apply')).click();
    const count = await eventually(async () => {
      const stats = page.locator(tid('agg-stats'));
      if ((await stats.getAttribute('data-loaded')) !== 'true') return 0;
      return Number(await stats.getAttribute('data-count'));
    }, { message: 'the aggregates panel did not show the stored click' });
    assert(count >= 1, `aggregates count ${count}`);
    await page.locator(`${tid('aggregates-chart')} canvas`).waitFor({ timeout: 5000 });
    console.log(`        clicks in range: ${count}`);
  });

  await check('the aggregates chart draws a bar for every non-empty bucket, the newest included', async () => {
    // Conversions of one ad 20 and 10 minutes ago and now: three buckets
    // apart, the newest one the last of the range.
    const target = ads[ads.length - 1];
    const now = Date.now();
    for (const minutes of [20, 10, 0]) {
      const answer = await fetch(`${BASE}/events`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ type: 'conversion', adId: target.id, timestamp: new Date(now - minutes * 60_000).toISOString() }),
      });
      assert(answer.status === 202, `POST /events answered ${answer.status}`);
    }
    await drained(BASE, ADMIN_TOKEN);
    await page.locator(tid('agg-type')).selectOption('conversion');
    await page.locator(tid('agg-ad')).selectOption(target.id);
    await page.locator(tid('agg-group')).selectOption('minute');
    await page.locator(tid('agg-from')).fill(localInput(new Date(now - 30 * 60_000)));
    await page.locator(tid('agg-to')).fill(localInput(new Date(now + 60_000)));
    const answered = page.waitForResponse((r) => new URL(r.url()).pathname === '/aggregates', { timeout: 10_000 });
    await page.locator(tid('agg-apply')).click();
    const result = await (await answered).json();
    const filled = result.buckets.filter((b) => b.count > 0);
    assert(filled.length >= 3, `expected at least three non-empty buckets, the answer has ${filled.length}`);
    assert(result.buckets[result.buckets.length - 1].count > 0, 'the newest bucket of the range is empty');
    await page.locator(`${tid('agg-stats')}[data-count="${result.count}"]`).waitFor({ timeout: 5000 });
    const bars = await eventually(async () => {
      const n = await countBars(page, tid('aggregates-chart'));
      return n === filled.length ? n : 0;
    }, { timeout: 3000, message: `the chart does not show ${filled.length} bars` }).catch(async (err) => {
      throw new Error(`${err.message}: it shows ${await countBars(page, tid('aggregates-chart'))}`);
    });
    console.log(`        ${bars} bars for ${filled.length} non-empty buckets`);
    await page.locator('.reports-card').screenshot({ path: `${SHOTS}reports.png` });
  });

  await check('the aggregates range follows the clock while "Up to now" is ticked', async () => {
    // A page opened three hours ago (its clock says so), still open now.
    const realNow = Date.now();
    const clocked = await newContext(browser, { viewport: { width: 1280, height: 900 } });
    await clocked.clock.install({ time: realNow - 3 * 3600_000 });
    const old = await clocked.newPage();
    watch(old, 'clock');
    const aggregatesRequest = () => old.waitForRequest((r) => new URL(r.url()).pathname === '/aggregates', { timeout: 10_000 });
    const toOf = (request) => Date.parse(new URL(request.url()).searchParams.get('to'));
    const first = aggregatesRequest();
    await old.goto('/', { waitUntil: 'domcontentloaded' });
    const loadedTo = toOf(await first);
    assert(loadedTo < realNow - 2 * 3600_000, `the page's first range ends at ${new Date(loadedTo).toISOString()}`);
    // The player's VAST request is answered first: jumping the clock would
    // fire the client's request timeout while it is pending.
    await old.locator(`${tid('ad-player')}[data-view]`).waitFor({ timeout: 10_000 });
    await old.clock.setSystemTime(Date.now());
    // Without a touch: the periodic refresh moves the range.
    let next = aggregatesRequest();
    await old.clock.fastForward(31_000);
    const movedTo = toOf(await next);
    assert(movedTo >= realNow, `the refreshed range ends at ${new Date(movedTo).toISOString()}, before now`);
    // And "Show" asks for a range that ends now, not at page load.
    next = aggregatesRequest();
    await old.locator(tid('agg-apply')).click();
    const shownTo = toOf(await next);
    assert(shownTo >= realNow, `"Show" asked for a range ending ${new Date(shownTo).toISOString()}`);
    await clocked.close();
  });

  await check('experiment panel summarises variants with a p-value', async () => {
    const exp = `e2e-${Date.now()}`;
    const send = (body) => page.request.post(`${BASE}/events`, { data: { adId: 'e2e-ad', experimentId: exp, ...body } });
    for (let i = 0; i < 6; i += 1) {
      await send({ type: 'impression', userId: `a${i}`, variant: 'control' });
      await send({ type: 'impression', userId: `b${i}`, variant: 'b' });
    }
    await send({ type: 'conversion', userId: 'a0', variant: 'control' });
    for (const u of ['b0', 'b1', 'b2']) await send({ type: 'conversion', userId: u, variant: 'b' });
    await eventually(async () => {
      await page.locator(tid('experiment-id')).fill(exp);
      await page.locator(tid('experiment-apply')).click();
      await page.locator(`${tid('experiment-body')} tr[data-variant]`).first().waitFor({ timeout: 2000 }).catch(() => {});
      if ((await page.locator(`${tid('experiment-body')} tr[data-variant]`).count()) !== 2) return false;
      // Every event stored: 1 conversion of control, 3 of b (else the p-value is of a part).
      const conversions = async (variant) => (await page.locator(`tr[data-variant="${variant}"] td:nth-child(3)`).textContent()).trim();
      return (await conversions('control')) === '1' && (await conversions('b')) === '3';
    }, { message: 'the experiment summary did not list both variants with all their conversions' });
    const p = await page.locator(`tr[data-variant="b"] ${tid('experiment-p')}`).textContent();
    assert(/^0\.\d{4}$/.test(p.trim()), `p-value cell shows ${p}`);
    await page.locator('.reports-card').screenshot({ path: `${SHOTS}reports.png` });
  });

  await check('Simulate play raises the campaign\'s plays without a reload', async () => {
    await page.locator(tid('campaign-row')).first().waitFor({ timeout: 10_000 });
    const row = page.locator(tid('campaign-row')).first();
    const campaignId = await row.getAttribute('data-campaign-id');
    await row.click();
    await page.locator(`${tid('screens-panel')}[data-campaign-id="${campaignId}"]`).waitFor({ timeout: 5000 });
    const plays = page.locator(`${tid('campaign-row')}[data-campaign-id="${campaignId}"] ${tid('campaign-plays')}`);
    const before = Number(await plays.getAttribute('data-value'));

    const eventResponse = page.waitForResponse(
      (r) => new URL(r.url()).pathname === '/events' && r.request().method() === 'POST', { timeout: 10_000 });
    await page.locator(tid('simulate-play')).click();
    const response = await eventResponse;
    assert(response.status() === 202, `POST /events answered ${response.status()}`);
    const sent = response.request().postDataJSON();
    assert(sent.campaign_id === campaignId, `play names campaign ${sent.campaign_id}, not ${campaignId}`);
    assert(/^screen-[1-8]$/.test(sent.screen_id), `screen id ${sent.screen_id}`);
    assert(!Number.isNaN(Date.parse(sent.timestamp)), 'timestamp is not a date');
    await page.locator(tid('simulate-confirmation')).waitFor({ state: 'visible', timeout: 5000 });

    const after = await eventually(async () => {
      const value = Number(await plays.getAttribute('data-value'));
      return value > before ? value : 0;
    }, { message: `plays of ${campaignId} did not rise above ${before}` });
    await eventually(() => page.locator(`${tid('screens-list')} [data-screen-id="${sent.screen_id}"]`).count(),
      { message: `screen ${sent.screen_id} did not appear under ${campaignId}` });
    assert(await page.evaluate(() => window.__adtrackSameDocument === true), 'the page reloaded');
    console.log(`        plays of ${campaignId} ${before} -> ${after}`);
  });

  await check('live updates arrive over server-sent events (GET /live)', async () => {
    await eventually(async () => (await page.locator(tid('conn-status')).getAttribute('data-mode')) === 'live',
      { timeout: 5000, message: 'the page did not switch to the live stream' });
    await page.locator(`${tid('pipeline-stats')}[data-loaded="true"]`).waitFor({ timeout: 5000 });
    const queued = await page.locator(tid('pipe-queued')).textContent();
    assert(/^\d[\d,. ]*$/.test(queued.trim()), `queue depth reads "${queued}"`);
    await eventually(async () => /\d/.test(await page.locator(tid('rate-ingest')).textContent()),
      { timeout: 5000, message: 'no ingest rate shown' });
    const workers = await page.locator(tid('worker')).count();
    assert(workers > 0, 'no worker heartbeats listed');
    await page.locator('.pipeline-card').screenshot({ path: `${SHOTS}pipeline.png` });
  });

  if (ADMIN_TOKEN) {
    await check('dead-letter panel opens with the admin token', async () => {
      await page.locator(`${tid('dlq-panel')} summary`).click();
      await page.locator(tid('dlq-load')).click();
      await page.locator(tid('token-input')).fill(ADMIN_TOKEN);
      await page.locator(tid('token-submit')).click();
      const status = page.locator(tid('dlq-status'));
      await eventually(async () => (await status.getAttribute('data-state')) === 'ok',
        { timeout: 5000, message: 'dead letters did not load' }).catch(async (err) => {
        throw new Error(`${err.message}: "${(await status.textContent()).trim()}"`);
      });
      console.log(`        ${(await status.textContent()).trim()}`);
    });
  }

  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: `${SHOTS}desktop.png`, fullPage: true });

  await check('phone-width layout (375x812) has no sideways scrolling', async () => {
    const phone = await newContext(browser, { viewport: { width: 375, height: 812 }, deviceScaleFactor: 2, hasTouch: true });
    const mobile = await phone.newPage();
    watch(mobile, 'phone');
    await mobile.goto('/', { waitUntil: 'domcontentloaded' });
    await mobile.locator(`${tid('analytics-stats')}[data-loaded="true"]`).waitFor({ timeout: 10_000 });
    await mobile.locator(`${tid('campaign-row')}`).first().waitFor({ timeout: 10_000 });
    await mobile.waitForFunction((sel) => document.querySelector(sel)?.currentTime > 0.3, tid('ad-video'), { timeout: 10_000 });
    // Let the throughput chart get its first points before the picture.
    await mobile.locator(`${tid('rates-chart')} canvas`).waitFor({ timeout: 5000 }).catch(() => {});
    const width = await mobile.evaluate(() => document.documentElement.scrollWidth);
    assert(width <= 375, `page is ${width}px wide`);
    const box = await mobile.locator(tid('visit-advertiser')).boundingBox();
    assert(box && box.x >= 0 && box.x + box.width <= 375, 'the visit button is off screen');
    await mobile.screenshot({ path: `${SHOTS}mobile.png`, fullPage: true });
    await phone.close();
  });

  await check('dark theme follows prefers-color-scheme', async () => {
    const dark = await newContext(browser, { viewport: { width: 1280, height: 900 }, colorScheme: 'dark' });
    const darkPage = await dark.newPage();
    watch(darkPage, 'dark');
    await darkPage.goto('/', { waitUntil: 'domcontentloaded' });
    await darkPage.locator(`${tid('analytics-stats')}[data-loaded="true"]`).waitFor({ timeout: 10_000 });
    await darkPage.locator(tid('campaign-row')).first().waitFor({ timeout: 10_000 });
    const luminance = await darkPage.evaluate(() => {
      const [r, g, b] = getComputedStyle(document.body).backgroundColor.match(/\d+/g).map(Number);
      return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255;
    });
    assert(luminance < 0.2, `background luminance ${luminance.toFixed(2)} is not dark`);
    await darkPage.locator(`${tid('rates-chart')} canvas`).waitFor({ timeout: 5000 }).catch(() => {});
    await darkPage.screenshot({ path: `${SHOTS}dark.png`, fullPage: true });
    await dark.close();
  });

  await check('no console errors or uncaught exceptions', async () => {
    assert(consoleErrors.length === 0, `${consoleErrors.length} error(s):\n${consoleErrors.join('\n')}`);
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
console.log(`screenshots in ${SHOTS}`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
