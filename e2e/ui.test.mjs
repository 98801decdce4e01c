// End-to-end test of the adtrack web UI in a real browser (Debian's Chromium
// driven by playwright-core).
//
//   cd e2e && npm ci && cd .. && ADTRACK_URL=http://127.0.0.1:8080 node e2e/ui.test.mjs
//
// Needs a running adtrack server (with Postgres and Redis) at ADTRACK_URL.
// Set ADMIN_TOKEN to the server's admin token to also check the dead-letter panel.
// Prints one line per check and a closing "N passed, M failed"; exits non-zero
// on any failure. Screenshots go to e2e/screenshots/.

import { mkdir } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

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
  const page = await context.newPage();
  watch(page, 'desktop');

  let ads = [];
  let ad = null;          // the ad on screen when the test clicks it
  let baselineClicks = 0;

  const firstImpression = page.waitForResponse(
    (r) => r.url().endsWith('/ads/impression') && r.request().method() === 'POST', { timeout: 20_000 });
  firstImpression.catch(() => {});

  await check('page loads with the adtrack header', async () => {
    const response = await page.goto('/', { waitUntil: 'domcontentloaded' });
    assert(response && response.ok(), `GET / answered ${response && response.status()}`);
    const brand = await page.locator('.brand-name').textContent();
    assert(brand.trim() === 'adtrack', `header reads "${brand}"`);
    assert((await page.title()) === 'adtrack', 'page title is not adtrack');
  });

  await check('player shows an ad from GET /ads', async () => {
    const answer = await page.request.get('/ads');
    assert(answer.ok(), `GET /ads answered ${answer.status()}`);
    ads = await answer.json();
    assert(Array.isArray(ads) && ads.length > 0, 'the ad catalogue is empty');
    await page.locator(`${tid('ad-player')}[data-ad-id]`).waitFor({ timeout: 10_000 });
    const id = await page.locator(tid('ad-player')).getAttribute('data-ad-id');
    ad = ads.find((a) => a.id === id);
    assert(ad, `player shows unknown ad ${id}`);
    const title = await page.locator(tid('ad-title')).textContent();
    assert(title.trim() === ad.title, `player title "${title}" is not "${ad.title}"`);
  });

  await check('ad video plays and an impression is posted', async () => {
    await page.waitForFunction((sel) => {
      const v = document.querySelector(sel);
      return v && !v.paused && v.currentTime > 0.3 && v.readyState >= 2;
    }, tid('ad-video'), { timeout: 15_000 });
    const src = await page.locator(tid('ad-video')).evaluate((v) => new URL(v.currentSrc).pathname);
    assert(src === ad.videoUrl, `video source ${src} is not ${ad.videoUrl}`);
    const response = await firstImpression;
    assert(response.status() === 202, `POST /ads/impression answered ${response.status()}`);
    const sent = response.request().postDataJSON();
    assert(sent && sent.adId === ad.id, `impression body ${JSON.stringify(sent)} does not name ${ad.id}`);
    assert((response.request().headers()['content-type'] || '').includes('application/json'), 'impression is not sent as JSON');
  });

  await check('analytics panel shows the playing ad', async () => {
    await page.locator(tid('analytics-ad')).selectOption(ad.id);
    await page.locator(`${tid('analytics-stats')}[data-loaded="true"][data-ad-id="${ad.id}"]`).waitFor({ timeout: 10_000 });
    baselineClicks = Number(await page.locator(tid('stat-total-clicks')).getAttribute('data-value'));
    assert(Number.isFinite(baselineClicks), 'totalClicks is not a number');
    const ctr = await page.locator(tid('stat-ctr')).textContent();
    assert(/%$/.test(ctr.trim()), `CTR "${ctr}" is not shown as a percentage`);
    await page.locator(`${tid('hourly-chart')} canvas`).first().waitFor({ timeout: 5000 });
    await page.locator('.player-card').screenshot({ path: `${SHOTS}player.png` });
  });

  // Marks this document: a reload would lose the mark.
  await page.evaluate(() => { window.__adtrackSameDocument = true; });

  await check('clicking the ad logs the click and opens the advertiser in a new tab', async () => {
    const clickResponse = page.waitForResponse(
      (r) => r.url().endsWith('/ads/click') && r.request().method() === 'POST', { timeout: 10_000 });
    const [popup] = await Promise.all([
      context.waitForEvent('page', { timeout: 10_000 }),
      page.locator(tid('visit-advertiser')).click(),
    ]);
    const response = await clickResponse;
    assert(response.status() === 202, `POST /ads/click answered ${response.status()}`);
    const answer = await response.json();
    assert(answer.status === 'accepted' && answer.eventId, `unexpected answer ${JSON.stringify(answer)}`);
    const sent = response.request().postDataJSON();
    assert(sent.adId === ad.id, `click names ${sent.adId}, not ${ad.id}`);
    assert(typeof sent.videoPlaybackTime === 'number' && sent.videoPlaybackTime >= 0, 'videoPlaybackTime missing');
    assert(!Number.isNaN(Date.parse(sent.timestamp)), 'timestamp is not a date');

    const confirmation = page.locator(tid('click-confirmation'));
    await confirmation.waitFor({ state: 'visible', timeout: 5000 });
    assert((await confirmation.getAttribute('role')) === 'status', 'confirmation lacks role="status"');
    const text = await confirmation.textContent();
    assert(text.includes('Click logged'), `confirmation reads "${text}"`);
    assert(text.includes(answer.eventId), `confirmation does not show event ${answer.eventId}`);

    await popup.waitForLoadState('domcontentloaded');
    assert(popup.url() === ad.targetUrl, `new tab opened ${popup.url()}, not ${ad.targetUrl}`);
    await popup.close();
  });

  await check('totalClicks for that ad rises without a reload', async () => {
    const now = await eventually(async () => {
      const value = Number(await page.locator(tid('stat-total-clicks')).getAttribute('data-value'));
      return value > baselineClicks ? value : 0;
    }, { message: `totalClicks did not rise above ${baselineClicks}` });
    assert(await page.evaluate(() => window.__adtrackSameDocument === true), 'the page reloaded');
    console.log(`        totalClicks ${baselineClicks} -> ${now}`);
    await page.locator('.analytics-card').screenshot({ path: `${SHOTS}analytics.png` });
  });

  await check('aggregates panel charts the stored events for a range', async () => {
    // The click above is stored by now (analytics rose after its commit).
    await page.locator(tid('agg-type')).selectOption('click');
    await page.locator(tid('agg-group')).selectOption('minute');
    const now = new Date();
    const pad = (n) => String(n).padStart(2, '0');
    const local = (d) => `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
    await page.locator(tid('agg-from')).fill(local(new Date(now.getTime() - 3 * 3600 * 1000)));
    await page.locator(tid('agg-to')).fill(local(new Date(now.getTime() + 120 * 1000)));
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
      await page.waitForTimeout(300);
      return (await page.locator(`${tid('experiment-body')} tr[data-variant]`).count()) === 2;
    }, { message: 'the experiment summary did not list both variants' });
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
