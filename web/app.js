// adtrack web UI: ad player, analytics, DOOH campaigns and pipeline health.
// Plain ES module, no build step. Every request uses a URL relative to the
// page, so the UI also works behind a reverse proxy under a sub-path. The
// player reads VAST through the vendored @dailymotion/vast-client.

import { VASTClient, VASTTracker } from './vendor/vast-client/vast-client.min.js';

const MAX_CAMPAIGN_ROWS = 200;   // /campaigns pages hold 100; live changes may add some
const POLL_MS = 2000;          // refresh period when /live is not available
const LIVE_STALE_MS = 7000;    // no message this long: reconnect the stream
const LIVE_REPROBE_MS = 60000; // how often to look for /live again while polling
const BANNER_DELAY_MS = 1200;  // hide brief hiccups (a stream reconnecting)
const RATE_WINDOW_S = 300;     // throughput chart: the last five minutes
const TOKEN_KEY = 'adtrack.adminToken';
const TIMEFRAMES = new Set(['1h', '24h', '7d', 'all']);

// ---------------------------------------------------------------- helpers

const el = (id) => document.querySelector(`[data-testid="${id}"]`);
const numberFormat = new Intl.NumberFormat();
const rateFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
const fmt = (n) => (Number.isFinite(n) ? numberFormat.format(n) : '–');
const fmtTime = (d) => d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });

function fmtBytes(n) {
  if (!Number.isFinite(n)) return '–';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${i === 0 ? n : n.toFixed(n < 10 ? 1 : 0)} ${units[i]}`;
}

function fmtPercent(ratio) {
  if (!Number.isFinite(ratio)) return '–';
  const pct = ratio * 100;
  const digits = pct === 0 ? 0 : pct < 10 ? 2 : 1;
  return `${pct.toFixed(digits)}%`;
}

/** Builds an element: h('li', {class: 'x', dataset: {id: 1}}, 'text', child). */
function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Sets a figure, flashing it when the value changed. */
function setValue(node, text) {
  if (node.textContent === text) return;
  const had = node.textContent !== '' && node.textContent !== '–';
  node.textContent = text;
  if (had) {
    node.classList.remove('bump');
    void node.offsetWidth; // restart the animation
    node.classList.add('bump');
  }
}

function showNote(node, content, extra = {}) {
  node.replaceChildren(...[content].flat(Infinity));
  for (const [key, value] of Object.entries(extra)) node.dataset[key] = value;
  node.hidden = false;
}

function hideNote(node) {
  node.hidden = true;
  node.replaceChildren();
}

// ------------------------------------------------------------ HTTP client

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

class NetworkError extends Error {}

/**
 * Calls the adtrack API. Resolves with the parsed JSON body; rejects with an
 * ApiError carrying the server's {"error","message"} for 4xx/5xx, or with a
 * NetworkError when the server cannot be reached.
 */
async function api(path, { method = 'GET', body, headers = {}, timeout = 8000 } = {}) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeout);
  const init = { method, headers: { Accept: 'application/json', ...headers }, signal: controller.signal, cache: 'no-store' };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  let text;
  try {
    response = await fetch(path, init);
    text = await response.text();
  } catch (err) {
    const timedOut = err && err.name === 'AbortError';
    const failure = new NetworkError(timedOut ? 'no answer in time' : 'no connection');
    reachability.fail(failure.message);
    throw failure;
  } finally {
    clearTimeout(timer);
  }
  if (response.status === 502 || response.status === 504) {
    // A gateway in front of adtrack answered for it: adtrack itself is down.
    const failure = new NetworkError(`the gateway answered ${response.status}`);
    reachability.fail(failure.message);
    throw failure;
  }
  reachability.ok();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (!response.ok) {
    const code = (data && data.error) || `http_${response.status}`;
    const message = (data && data.message) || `${response.status} ${response.statusText || 'error'}`;
    throw new ApiError(response.status, code, message);
  }
  return data;
}

const errorText = (err) => (err instanceof ApiError ? `${err.message} (${err.status})` : err.message || String(err));

// ------------------------------------------------- reachability and banner

const reachability = (() => {
  const banner = el('error-banner');
  const bannerText = banner.querySelector('.banner-text');
  let timer = null;
  let down = false;
  return {
    get down() { return down; },
    fail(reason) {
      bannerText.textContent = `${reason[0].toUpperCase()}${reason.slice(1)}. Retrying…`;
      if (down || timer) return;
      timer = setTimeout(() => {
        timer = null;
        down = true;
        banner.hidden = false;
        connection.render();
      }, BANNER_DELAY_MS);
    },
    ok() {
      if (timer) { clearTimeout(timer); timer = null; }
      if (!down) return;
      down = false;
      banner.hidden = true;
      connection.render();
    },
  };
})();

// ------------------------------------------------------------------ state

const state = {
  ads: [],
  adIndex: 0,
  analyticsAd: '',
  analyticsFollowsPlayer: true,
  timeframe: '24h',
  campaigns: [],
  selectedCampaign: null,
  lastPipeline: null,
  rates: { t: [], ingest: [], commit: [] },
};

// ------------------------------------------------------------------ charts

function themeColour(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || '#888';
}

function chartHeight() {
  return window.matchMedia('(max-width: 560px)').matches ? 170 : 200;
}

function axisStyle(extra = {}) {
  const muted = themeColour('--muted');
  const grid = themeColour('--grid');
  return { stroke: muted, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 }, font: '11px system-ui, sans-serif', ...extra };
}

/** A uPlot chart that follows its container's width and the colour theme. */
class Chart {
  constructor(container, build, emptyText) {
    this.container = container;
    this.build = build;
    this.data = null;
    this.plot = null;
    this.empty = h('div', { class: 'empty' }, emptyText);
    container.append(this.empty);
    new ResizeObserver(() => this.resize()).observe(container);
  }

  ready() {
    return typeof window.uPlot === 'function';
  }

  create() {
    if (!this.ready() || !this.data) return;
    const width = Math.max(200, Math.floor(this.container.clientWidth));
    this.plot = new window.uPlot(this.build(width, chartHeight()), this.data, this.container);
  }

  set(data, isEmpty) {
    this.data = data;
    this.empty.hidden = !isEmpty;
    if (!this.ready()) return;
    if (!this.plot) this.create();
    else this.plot.setData(data);
  }

  resize() {
    if (!this.plot) return;
    const width = Math.max(200, Math.floor(this.container.clientWidth));
    if (width !== this.plot.width || chartHeight() !== this.plot.height) {
      this.plot.setSize({ width, height: chartHeight() });
    }
  }

  restyle() {
    if (!this.plot) return;
    this.plot.destroy();
    this.plot = null;
    this.create();
  }
}

const hourlyChart = new Chart(el('hourly-chart'), (width, height) => ({
  width,
  height,
  legend: { show: false },
  cursor: { points: { show: false }, drag: { x: false, y: false } },
  scales: {
    // Each bar covers its hour: drawn at the half-hour, the scale runs one hour past the last.
    x: { time: true, range: (u, min, max) => [min - 1800, max + 1800] },
    y: { range: (u, min, max) => [0, Math.max(4, Math.ceil(max * 1.15))] },
  },
  axes: [axisStyle(), axisStyle({ size: 44, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 1e4, 2e4, 5e4, 1e5, 1e6] })],
  series: [
    {},
    {
      label: 'Clicks',
      stroke: themeColour('--bar'),
      fill: themeColour('--bar'),
      width: 0,
      paths: window.uPlot ? window.uPlot.paths.bars({ size: [0.86, Infinity], align: 0 }) : undefined,
      points: { show: false },
    },
  ],
}), 'No clicks in this timeframe yet');

const ratesChart = new Chart(el('rates-chart'), (width, height) => ({
  width,
  height,
  legend: { show: false },
  cursor: { points: { size: 6 }, drag: { x: false, y: false } },
  scales: {
    // Always the whole window: the line grows in from the right.
    x: { time: true, range: (u, min, max) => [max - RATE_WINDOW_S, max] },
    y: { range: (u, min, max) => [0, Math.max(5, Math.ceil(max * 1.15))] },
  },
  axes: [
    axisStyle({ space: 90, values: (u, ticks) => ticks.map((t) => new Date(t * 1000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })) }),
    axisStyle({ size: 52 }),
  ],
  series: [
    {},
    { label: 'Ingested/s', stroke: themeColour('--ingest'), width: 2, fill: `${themeColour('--ingest')}22`, points: { show: false } },
    { label: 'Stored/s', stroke: themeColour('--commit'), width: 2, points: { show: false } },
  ],
}), 'Waiting for the live stream…');

window.matchMedia('(prefers-color-scheme: dark)').addEventListener('change', () => {
  hourlyChart.restyle();
  ratesChart.restyle();
  aggregatesChart.restyle();
});

// ------------------------------------------------------------------ player

// VAST error codes the player reports through the document's Error URL.
const VAST_NO_SUPPORTED_MEDIA = '403';
const VAST_MEDIA_NOT_PLAYED = '405';
const VAST_TIMEOUT_MS = 8000; // the client's own default is two minutes

/**
 * One view of one ad: the VAST document adtrack served for it (a fresh view
 * id in every URL) and the VASTTracker that fires that document's pixels.
 * Replaying an ad loads a new document, so each play-through is one view.
 */
class View {
  constructor(ad, vastAd, creative, tracker) {
    this.ad = ad;
    this.vastAd = vastAd;
    this.creative = creative;
    this.tracker = tracker;
    this.impressed = false;
    this.finished = false; // completed, skipped or failed: no more progress pixels
    this.pausedByViewer = false;
  }
}

/** The media file the video element can play, progressive first. */
function pickMediaFile(video, mediaFiles) {
  const playable = (mediaFiles || []).filter((m) => m.fileURL && (!m.mimeType || video.canPlayType(m.mimeType) !== ''));
  return playable.find((m) => m.deliveryType !== 'streaming') || playable[0] || null;
}

const player = {
  root: el('ad-player'),
  video: el('ad-video'),
  title: el('ad-title'),
  campaign: el('ad-campaign'),
  target: el('ad-target'),
  position: el('player-position'),
  progress: document.querySelector('.progress-bar'),
  endedOverlay: document.querySelector('[data-role="ended"]'),
  confirmation: el('click-confirmation'),
  error: el('player-error'),
  mute: el('mute-toggle'),
  visit: el('visit-advertiser'),
  view: null,      // the View on screen, null while its document loads
  generation: 0,   // bumps on every load, so a late document is dropped

  current() {
    return state.ads[state.adIndex] || null;
  },

  setState(value) {
    this.root.dataset.state = value;
  },

  /** Shows ad `index` of the catalogue and plays it through a fresh VAST document. */
  async load(index) {
    if (!state.ads.length) return;
    state.adIndex = ((index % state.ads.length) + state.ads.length) % state.ads.length;
    const ad = this.current();
    this.root.dataset.adId = ad.id;
    this.title.textContent = ad.title || ad.id;
    this.campaign.replaceChildren(h('span', { class: 'tag' }, ad.campaignId || 'no campaign'));
    this.target.textContent = ad.targetUrl ? ` ${ad.targetUrl.replace(/^https?:\/\//, '')}` : '';
    this.position.textContent = `Ad ${state.adIndex + 1} of ${state.ads.length}`;
    if (state.analyticsFollowsPlayer && state.analyticsAd !== ad.id) {
      analytics.choose(ad.id, { follow: true });
    }
    await this.start(ad);
  },

  async start(ad) {
    const generation = ++this.generation;
    this.view = null;
    delete this.root.dataset.view;
    this.endedOverlay.hidden = true;
    hideNote(this.error);
    hideNote(this.confirmation);
    this.progress.style.width = '0';
    this.setState('loading');
    this.video.removeAttribute('src');
    this.video.load();
    let response;
    try {
      // A client per document: VASTClient keeps parsing state between calls.
      response = await new VASTClient().get(new URL(`vast/${encodeURIComponent(ad.id)}`, document.baseURI).href,
        { timeout: VAST_TIMEOUT_MS });
    } catch (err) {
      if (generation !== this.generation) return;
      this.setState('error');
      showNote(this.error, `This ad’s VAST document could not be loaded: ${(err && err.message) || err}`);
      return;
    }
    if (generation !== this.generation) return;
    const vastAd = response && response.ads && response.ads[0];
    const creative = vastAd && vastAd.creatives.find((c) => c.type === 'linear');
    if (!creative) {
      this.setState('error');
      showNote(this.error, 'This ad’s VAST document has no linear creative to play.');
      return;
    }
    const tracker = new VASTTracker(null, vastAd, creative, null, this.video.muted);
    const view = new View(ad, vastAd, creative, tracker);
    tracker.on('clickthrough', (url) => openTarget(url));
    this.view = view;
    this.root.dataset.view = vastAd.adServingId || vastAd.id || String(generation);
    const media = pickMediaFile(this.video, creative.mediaFiles);
    if (!media) {
      this.fail(view, VAST_NO_SUPPORTED_MEDIA, 'This browser cannot play any of the ad’s media files.');
      return;
    }
    this.video.src = media.fileURL;
    this.play();
  },

  play() {
    const attempt = this.video.play();
    if (attempt && attempt.catch) {
      attempt.catch((err) => {
        // Autoplay refused or the source was replaced while starting.
        if (err && err.name === 'AbortError') return;
        this.setState('paused');
        this.endedOverlay.hidden = false;
        this.endedOverlay.querySelector('[data-action="replay"]').textContent = 'Play';
      });
    }
  },

  /** Watch again: a new document, so a new view with its own impression. */
  replay() {
    const ad = this.current();
    if (!ad) return;
    if (this.view && !this.view.impressed && this.video.getAttribute('src')) {
      // Autoplay was refused: start this view instead of loading another.
      this.endedOverlay.hidden = true;
      this.play();
      return;
    }
    this.start(ad);
  },

  /** Skip: the viewer leaves an ad that is playing. */
  skip() {
    const view = this.view;
    if (view && view.impressed && !view.finished) {
      view.finished = true;
      view.tracker.skip();
    }
    this.load(state.adIndex + 1);
  },

  fail(view, code, message) {
    if (view !== this.view) return;
    this.setState('error');
    showNote(this.error, `${message} Skip to the next ad.`);
    if (view.finished) return;
    view.finished = true;
    view.tracker.error({ ERRORCODE: code });
  },

  /**
   * A click goes through the document's ClickThrough: adtrack's click
   * redirect records the view's click (once, however often it is opened)
   * and answers 302 to the advertiser. Nothing else is sent.
   */
  click() {
    const view = this.view;
    if (!view) return;
    const ad = view.ad;
    view.tracker.click();
    hideNote(this.error);
    const through = view.creative.videoClickThroughURLTemplate;
    const url = through && (through.url || through);
    let path = '';
    try { path = new URL(url, document.baseURI).pathname; } catch { path = ''; }
    showNote(this.confirmation, [
      h('strong', {}, 'Click sent'),
      ` for ${ad.title || ad.id} through adtrack’s click redirect `,
      // The view's signed token is long: the start of it tells views apart.
      h('code', { 'data-testid': 'click-url', 'data-path': path, title: path }, path.length > 16 ? `${path.slice(0, 14)}…` : path),
      ' · one view counts one click',
    ], { adId: ad.id });
  },

  init() {
    const video = this.video;
    video.muted = true;
    const live = () => (this.view && !this.view.finished ? this.view : null);
    video.addEventListener('playing', () => {
      this.setState('playing');
      const view = live();
      if (!view) return;
      if (!view.impressed) {
        view.impressed = true;
        view.tracker.trackImpression();
        this.root.dataset.impressions = String(Number(this.root.dataset.impressions || 0) + 1);
      }
      if (view.pausedByViewer) {
        view.pausedByViewer = false;
        view.tracker.setPaused(false);
      }
    });
    video.addEventListener('loadedmetadata', () => {
      // Quartiles follow the media as played, whatever Duration the document states.
      const view = live();
      if (view && Number.isFinite(video.duration) && video.duration > 0) view.tracker.setDuration(video.duration);
    });
    video.addEventListener('waiting', () => { if (!video.paused) this.setState('buffering'); });
    video.addEventListener('pause', () => {
      if (video.ended) return;
      if (this.root.dataset.state === 'playing') this.setState('paused');
      const view = live();
      if (view && view.impressed && !view.pausedByViewer) {
        view.pausedByViewer = true;
        view.tracker.setPaused(true);
      }
    });
    video.addEventListener('timeupdate', () => {
      if (video.duration) this.progress.style.width = `${Math.min(100, (video.currentTime / video.duration) * 100)}%`;
      const view = live();
      if (view && view.impressed && video.currentTime > 0) view.tracker.setProgress(video.currentTime);
    });
    video.addEventListener('volumechange', () => {
      const view = live();
      if (view && view.impressed) view.tracker.setMuted(video.muted);
      else if (view) view.tracker.muted = video.muted;
    });
    video.addEventListener('ended', () => {
      this.setState('ended');
      this.progress.style.width = '100%';
      this.endedOverlay.querySelector('[data-action="replay"]').textContent = 'Watch again';
      this.endedOverlay.hidden = false;
      const view = live();
      if (view && view.impressed) {
        view.tracker.setProgress(video.duration || video.currentTime);
        view.tracker.complete();
        view.finished = true;
      }
    });
    video.addEventListener('error', () => {
      if (!video.getAttribute('src') || !this.view) return;
      this.fail(this.view, VAST_MEDIA_NOT_PLAYED, 'This ad’s video could not be played.');
    });
    video.addEventListener('click', () => this.click());
    this.visit.addEventListener('click', (event) => { event.stopPropagation(); this.click(); });
    el('skip-ad').addEventListener('click', () => this.skip());
    el('next-ad').addEventListener('click', () => this.load(state.adIndex + 1));
    el('replay-ad').addEventListener('click', () => this.replay());
    this.mute.addEventListener('click', () => {
      video.muted = !video.muted;
      this.mute.setAttribute('aria-pressed', String(video.muted));
      this.mute.setAttribute('aria-label', video.muted ? 'Unmute' : 'Mute');
    });
  },
};

/** Opens an http(s) URL in a new tab, without giving it this page. */
function openTarget(url) {
  let target;
  try { target = new URL(url, document.baseURI); } catch { return; }
  if (target.protocol !== 'http:' && target.protocol !== 'https:') return;
  window.open(target.href, '_blank', 'noopener');
}

// --------------------------------------------------------------- analytics

const analytics = {
  select: el('analytics-ad'),
  timeframe: el('analytics-timeframe'),
  stats: el('analytics-stats'),
  updated: el('analytics-updated'),
  error: el('analytics-error'),
  fields: {
    impressions: el('stat-impressions'),
    totalClicks: el('stat-total-clicks'),
    uniqueClicks: el('stat-unique-clicks'),
    ctr: el('stat-ctr'),
    plays: el('stat-plays'),
    conversions: el('stat-conversions'),
    completionRate: el('stat-completion-rate'),
    completes: el('stat-completes'),
  },
  funnel: el('funnel'),
  skips: el('funnel-skips'),
  errors: el('funnel-errors'),
  errorCodes: el('funnel-error-codes'),
  request: 0,

  fillOptions() {
    this.select.replaceChildren(...state.ads.map((ad) => h('option', { value: ad.id }, ad.title || ad.id)));
    if (!state.ads.length) this.select.append(h('option', { value: '' }, 'No ads'));
  },

  choose(adId, { follow = false } = {}) {
    state.analyticsAd = adId;
    if (!follow) state.analyticsFollowsPlayer = false;
    this.select.value = adId;
    this.changed();
  },

  changed() {
    this.stats.dataset.loaded = 'false';
    this.stats.dataset.adId = state.analyticsAd;
    this.updated.textContent = 'Loading…';
    this.refresh();
    connection.restart();
  },

  async refresh() {
    if (!state.analyticsAd) return;
    const adId = state.analyticsAd;
    const timeframe = state.timeframe;
    const ticket = ++this.request;
    try {
      const data = await api(`ads/analytics?adId=${encodeURIComponent(adId)}&timeframe=${encodeURIComponent(timeframe)}`);
      if (ticket === this.request) this.render(data);
    } catch (err) {
      if (ticket === this.request && !(err instanceof NetworkError)) showNote(this.error, `Analytics unavailable: ${errorText(err)}`);
    }
  },

  render(data) {
    if (!data || data.adId !== state.analyticsAd) return;
    if (data.timeframe && data.timeframe !== state.timeframe) return;
    hideNote(this.error);
    const f = this.fields;
    setValue(f.impressions, fmt(data.impressions));
    setValue(f.totalClicks, fmt(data.totalClicks));
    setValue(f.uniqueClicks, fmt(data.uniqueClicks));
    setValue(f.ctr, fmtPercent(data.ctr));
    setValue(f.plays, fmt(data.plays ?? 0));
    setValue(f.conversions, fmt(data.conversions ?? 0));
    f.totalClicks.dataset.value = String(data.totalClicks ?? 0);
    f.impressions.dataset.value = String(data.impressions ?? 0);
    setValue(f.completionRate, fmtPercent(data.completionRate ?? 0));
    f.completionRate.dataset.value = String(data.completionRate ?? 0);
    setValue(f.completes, fmt(data.completes ?? 0));
    this.renderFunnel(data);
    this.stats.dataset.loaded = 'true';
    this.stats.dataset.adId = data.adId;
    this.updated.textContent = `Updated ${fmtTime(new Date())}`;
    this.renderChart(data.hourlyClicks || {});
  },

  /** Impressions → starts → quartiles → completes, each as a share of impressions. */
  renderFunnel(data) {
    const impressions = data.impressions ?? 0;
    for (const row of this.funnel.querySelectorAll('li[data-step]')) {
      const value = data[row.dataset.step] ?? 0;
      const share = impressions > 0 ? value / impressions : 0;
      const count = row.querySelector('b');
      setValue(count, fmt(value));
      count.dataset.value = String(value);
      row.querySelector('.funnel-bar span').style.width = `${Math.min(100, share * 100)}%`;
      row.querySelector('.funnel-share').textContent = impressions > 0 ? fmtPercent(share) : '';
    }
    setValue(this.skips, fmt(data.skips ?? 0));
    this.skips.dataset.value = String(data.skips ?? 0);
    setValue(this.errors, fmt(data.errors ?? 0));
    this.errors.dataset.value = String(data.errors ?? 0);
    const byCode = data.errorsByCode && typeof data.errorsByCode === 'object' ? Object.entries(data.errorsByCode) : [];
    this.errorCodes.textContent = byCode.length
      ? ` (${byCode.sort(([a], [b]) => a.localeCompare(b)).map(([code, n]) => `${code}: ${fmt(Number(n))}`).join(', ')})`
      : '';
    this.funnel.dataset.adId = data.adId;
  },

  renderChart(hourly) {
    const HOUR = 3600;
    const counts = new Map();
    for (const [key, value] of Object.entries(hourly)) {
      const t = Date.parse(key);
      if (Number.isFinite(t)) counts.set(Math.floor(t / 1000 / HOUR) * HOUR, Number(value) || 0);
    }
    const nowHour = Math.floor(Date.now() / 1000 / HOUR) * HOUR;
    const span = { '1h': 1, '24h': 24, '7d': 168 }[state.timeframe];
    let start = span ? nowHour - span * HOUR : nowHour - 24 * HOUR;
    let end = nowHour;
    for (const t of counts.keys()) {
      if (span === undefined) start = Math.min(start, t);
      end = Math.max(end, t);
    }
    const xs = [];
    const ys = [];
    for (let t = start; t <= end; t += HOUR) {
      xs.push(t + HOUR / 2);
      ys.push(counts.get(t) || 0);
    }
    hourlyChart.set([xs, ys], ys.every((v) => v === 0));
  },

  init() {
    this.select.addEventListener('change', () => {
      state.analyticsAd = this.select.value;
      state.analyticsFollowsPlayer = false;
      this.changed();
    });
    this.timeframe.addEventListener('change', () => {
      state.timeframe = TIMEFRAMES.has(this.timeframe.value) ? this.timeframe.value : '24h';
      this.changed();
    });
  },
};

// --------------------------------------------------------------- campaigns

const campaigns = {
  body: el('campaigns-body'),
  screensPanel: el('screens-panel'),
  screensTitle: el('screens-campaign'),
  screensList: el('screens-list'),
  simulate: el('simulate-play'),
  confirmation: el('simulate-confirmation'),
  error: el('campaigns-error'),
  rows: new Map(),
  screensRequest: 0,

  async refresh() {
    try {
      this.render(await api('campaigns'));
    } catch (err) {
      if (!(err instanceof NetworkError)) showNote(this.error, `Campaigns unavailable: ${errorText(err)}`);
    }
  },

  /**
   * The live stream sends only the campaigns that changed since its last
   * tick: fold them into what is shown (at most MAX_CAMPAIGN_ROWS, by plays).
   */
  merge(changes) {
    if (!Array.isArray(changes)) return;
    const byId = new Map(state.campaigns.map((c) => [c.campaignId, c]));
    for (const c of changes) byId.set(c.campaignId, c);
    const list = [...byId.values()]
      .sort((a, b) => (b.plays || 0) - (a.plays || 0))
      .slice(0, MAX_CAMPAIGN_ROWS);
    this.render(list);
  },

  render(list) {
    if (!Array.isArray(list)) return;
    hideNote(this.error);
    const previous = new Map(state.campaigns.map((c) => [c.campaignId, c.plays]));
    state.campaigns = [...list].sort((a, b) => String(a.campaignId).localeCompare(String(b.campaignId)));
    const max = Math.max(1, ...state.campaigns.map((c) => c.plays || 0));
    if (!state.campaigns.length) {
      this.rows.clear();
      this.body.replaceChildren(h('tr', { class: 'placeholder' }, h('td', { colspan: 3 }, 'No plays yet. Press “Simulate play”.')));
      return;
    }
    this.body.querySelector('.placeholder')?.remove();
    const seen = new Set();
    for (const c of state.campaigns) {
      seen.add(c.campaignId);
      let row = this.rows.get(c.campaignId);
      if (!row) row = this.addRow(c.campaignId);
      this.body.append(row.tr); // keeps the sorted order
      setValue(row.plays, fmt(c.plays));
      row.plays.dataset.value = String(c.plays ?? 0);
      setValue(row.screens, fmt(c.screens));
      row.meter.style.width = `${Math.round(((c.plays || 0) / max) * 100)}%`;
      row.tr.classList.toggle('selected', c.campaignId === state.selectedCampaign);
    }
    for (const [id, row] of this.rows) {
      if (!seen.has(id)) { row.tr.remove(); this.rows.delete(id); }
    }
    const sel = state.selectedCampaign;
    if (sel && previous.has(sel) && previous.get(sel) !== state.campaigns.find((c) => c.campaignId === sel)?.plays) {
      this.refreshScreens();
    }
  },

  addRow(id) {
    const meter = h('span');
    const button = h('button', { type: 'button', class: 'row-btn', 'aria-label': `Show screens of ${id}` },
      h('span', { class: 'campaign-name' }, id), h('span', { class: 'meter', 'aria-hidden': 'true' }, meter));
    const plays = h('span', { class: 'cell', 'data-testid': 'campaign-plays' }, '–');
    const screens = h('span', { class: 'cell', 'data-testid': 'campaign-screens' }, '–');
    const tr = h('tr', { 'data-testid': 'campaign-row', dataset: { campaignId: id } },
      h('td', {}, button), h('td', { class: 'num' }, plays), h('td', { class: 'num' }, screens));
    tr.addEventListener('click', () => this.choose(id));
    const row = { tr, plays, screens, meter };
    this.rows.set(id, row);
    return row;
  },

  choose(id) {
    state.selectedCampaign = state.selectedCampaign === id ? null : id;
    for (const [key, row] of this.rows) row.tr.classList.toggle('selected', key === state.selectedCampaign);
    if (!state.selectedCampaign) {
      this.screensPanel.hidden = true;
      return;
    }
    this.screensTitle.textContent = id;
    this.screensPanel.dataset.campaignId = id;
    this.screensList.replaceChildren(h('li', { class: 'muted' }, 'Loading screens…'));
    this.screensPanel.hidden = false;
    this.refreshScreens();
  },

  async refreshScreens() {
    const id = state.selectedCampaign;
    if (!id) return;
    const ticket = ++this.screensRequest;
    try {
      const list = await api(`campaigns/${encodeURIComponent(id)}/screens`);
      if (ticket !== this.screensRequest || id !== state.selectedCampaign) return;
      const sorted = [...(list || [])].sort((a, b) => String(a.screenId).localeCompare(String(b.screenId), undefined, { numeric: true }));
      this.screensList.replaceChildren(...(sorted.length
        ? sorted.map((s) => h('li', { 'data-testid': 'screen-row', dataset: { screenId: s.screenId } }, h('span', {}, s.screenId), h('b', {}, fmt(s.plays))))
        : [h('li', { class: 'muted' }, 'No screens have played this campaign yet.')]));
    } catch (err) {
      if (ticket === this.screensRequest && !(err instanceof NetworkError)) {
        this.screensList.replaceChildren(h('li', { class: 'muted' }, `Screens unavailable: ${errorText(err)}`));
      }
    }
  },

  async simulatePlay() {
    const known = state.campaigns.map((c) => c.campaignId);
    const fallback = [...new Set(state.ads.map((ad) => ad.campaignId).filter(Boolean))];
    const pool = known.length ? known : fallback;
    const campaignId = state.selectedCampaign || pool[Math.floor(Math.random() * pool.length)];
    if (!campaignId) {
      showNote(this.error, 'No campaign to play: the catalogue is empty.');
      return;
    }
    const screenId = `screen-${1 + Math.floor(Math.random() * 8)}`;
    this.simulate.disabled = true;
    try {
      const answer = await api('events', {
        method: 'POST',
        body: { screen_id: screenId, campaign_id: campaignId, timestamp: new Date().toISOString() },
      });
      hideNote(this.error);
      showNote(this.confirmation, [
        h('strong', {}, 'Play queued'),
        ` · ${campaignId} on ${screenId}`,
        answer && answer.eventId ? [' · event ', h('code', {}, answer.eventId)] : [],
      ], { campaignId, screenId, eventId: (answer && answer.eventId) || '' });
      if (connection.mode !== 'live') setTimeout(() => this.refresh(), 300);
    } catch (err) {
      hideNote(this.confirmation);
      showNote(this.error, `Play not recorded: ${errorText(err)}`);
    } finally {
      this.simulate.disabled = false;
    }
  },

  init() {
    this.simulate.addEventListener('click', () => this.simulatePlay());
  },
};

// ---------------------------------------------------------------- pipeline

const pipeline = {
  stats: el('pipeline-stats'),
  updated: el('pipeline-updated'),
  note: el('pipeline-note'),
  workers: el('workers-list'),
  deadStat: el('pipe-dead').parentElement,
  fields: {
    queued: el('pipe-queued'),
    processing: el('pipe-processing'),
    retrying: el('pipe-retrying'),
    deadLettered: el('pipe-dead'),
    spooledEvents: el('pipe-spooled'),
  },
  spoolBytes: el('pipe-spool-bytes'),
  ingestRate: el('rate-ingest'),
  commitRate: el('rate-commit'),

  renderQueue(q) {
    for (const [key, node] of Object.entries(this.fields)) {
      setValue(node, fmt(q[key]));
      node.dataset.value = String(q[key] ?? '');
    }
    setValue(this.spoolBytes, fmtBytes(q.spoolBytes));
    this.deadStat.classList.toggle('nonzero', (q.deadLettered || 0) > 0);
    this.stats.dataset.loaded = 'true';
    this.updated.textContent = `Updated ${fmtTime(new Date())}`;
    this.renderWorkers(q.workers);
  },

  renderWorkers(workers) {
    if (!Array.isArray(workers)) return;
    const list = [...workers].sort((a, b) => String(a.id).localeCompare(String(b.id), undefined, { numeric: true }));
    this.workers.replaceChildren(...(list.length
      ? list.map((w) => h('li', { class: w.alive ? 'alive' : 'dead', 'data-testid': 'worker', title: w.alive ? 'heartbeat fresh' : 'heartbeat expired' },
        h('span', { class: 'dot', 'aria-hidden': 'true' }), w.id, h('span', { class: 'sr-only' }, w.alive ? ' alive' : ' not responding')))
      : [h('li', { class: 'muted' }, 'No worker heartbeats: this process may serve the API only.')]));
  },

  /** One message of the live stream: figures plus monotonic totals. */
  handle(p) {
    this.note.hidden = true;
    this.renderQueue(p);
    const t = Number.isFinite(Date.parse(p.ts)) ? Date.parse(p.ts) / 1000 : Date.now() / 1000;
    const prev = state.lastPipeline;
    state.lastPipeline = { t, ingested: p.ingested, committed: p.committed };
    if (!prev || !Number.isFinite(p.ingested) || !Number.isFinite(p.committed)) return;
    const dt = t - prev.t;
    if (dt <= 0) return;
    if (p.ingested < prev.ingested || p.committed < prev.committed) {
      // The server restarted: its totals began again.
      return;
    }
    const ingest = (p.ingested - prev.ingested) / dt;
    const commit = (p.committed - prev.committed) / dt;
    const r = state.rates;
    r.t.push(t); r.ingest.push(ingest); r.commit.push(commit);
    while (r.t.length && r.t[0] < t - RATE_WINDOW_S) { r.t.shift(); r.ingest.shift(); r.commit.shift(); }
    this.ingestRate.textContent = rateFormat.format(ingest);
    this.commitRate.textContent = rateFormat.format(commit);
    // A time axis needs two points to mean anything.
    if (r.t.length >= 2) ratesChart.set([r.t, r.ingest, r.commit], false);
    else ratesChart.empty.textContent = 'Measuring throughput…';
  },

  adminUsable: true, // false once the admin API said 404 (off) or 401 (bad token)

  async pollAdmin() {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token || !this.adminUsable) return;
    try {
      const q = await api('admin/queue', { headers: { Authorization: `Bearer ${token}` } });
      this.renderQueue(q);
    } catch (err) {
      if (err instanceof ApiError && (err.status === 404 || err.status === 401)) this.adminUsable = false;
    }
  },

  explainPolling() {
    this.note.textContent = sessionStorage.getItem(TOKEN_KEY)
      ? 'This server has no live stream; queue figures come from the admin API and throughput is not shown.'
      : 'This server has no live stream (/live), so pipeline figures and throughput are not shown.';
    this.note.hidden = false;
  },
};

// -------------------------------------------------------------- dead letters

const deadLetters = {
  form: el('token-form'),
  input: el('token-input'),
  hint: el('token-hint'),
  load: el('dlq-load'),
  replay: el('dlq-replay'),
  forget: el('token-forget'),
  status: el('dlq-status'),
  list: el('dlq-list'),
  pending: null,

  token() {
    return sessionStorage.getItem(TOKEN_KEY);
  },

  askToken(action, hint) {
    this.pending = action;
    this.hint.textContent = hint || 'Kept for this browser tab only.';
    this.form.hidden = false;
    this.input.value = '';
    this.input.focus();
  },

  run(action) {
    if (!this.token()) {
      this.askToken(action);
      return;
    }
    if (action === 'replay') this.replayAll();
    else this.fetchList();
  },

  async authorised(path, options = {}) {
    return api(path, { ...options, headers: { Authorization: `Bearer ${this.token()}` } });
  },

  handleError(err, action) {
    if (err instanceof ApiError && err.status === 404) {
      pipeline.adminUsable = false;
      this.status.textContent = 'Admin API disabled (set ADMIN_TOKEN)';
      this.status.dataset.state = 'disabled';
      this.replay.hidden = true;
      this.list.replaceChildren();
    } else if (err instanceof ApiError && err.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      this.forget.hidden = true;
      this.status.textContent = '';
      this.askToken(action, 'That token was not accepted. Enter the admin token again.');
    } else {
      this.status.textContent = `Dead letters unavailable: ${errorText(err)}`;
      this.status.dataset.state = 'error';
    }
  },

  async fetchList() {
    this.load.disabled = true;
    this.status.textContent = 'Loading…';
    try {
      const data = await this.authorised('admin/dlq?limit=50');
      this.forget.hidden = false;
      this.load.textContent = 'Refresh';
      const items = (data && data.items) || [];
      const total = (data && data.total) ?? items.length;
      this.status.dataset.state = 'ok';
      this.status.textContent = total === 0
        ? 'No dead letters. Every event was stored.'
        : `${fmt(total)} dead letter${total === 1 ? '' : 's'}${total > items.length ? `, showing the newest ${items.length}` : ''}.`;
      this.replay.hidden = total === 0;
      this.list.replaceChildren(...items.map((item) => this.item(item)));
    } catch (err) {
      this.handleError(err, 'load');
    } finally {
      this.load.disabled = false;
    }
  },

  item(item) {
    const ev = item.event || {};
    const what = [ev.type, ev.adId || ev.campaignId].filter(Boolean).join(' · ') || 'event';
    const when = item.failedAt && Number.isFinite(Date.parse(item.failedAt)) ? new Date(item.failedAt).toLocaleString() : item.failedAt || '';
    const json = JSON.stringify(ev);
    return h('li', { 'data-testid': 'dlq-item' },
      h('div', {}, h('b', {}, what), ` · ${fmt(item.attempts)} attempt${item.attempts === 1 ? '' : 's'} · ${when}`),
      h('div', { class: 'err' }, item.error || 'unknown error'),
      h('code', {}, json.length > 400 ? `${json.slice(0, 400)}…` : json));
  },

  async replayAll() {
    this.replay.disabled = true;
    try {
      const data = await this.authorised('admin/dlq/replay', { method: 'POST' });
      await this.fetchList();
      this.status.textContent = `Moved ${fmt(data && data.moved)} event${data && data.moved === 1 ? '' : 's'} back to the queue.`;
    } catch (err) {
      this.handleError(err, 'replay');
    } finally {
      this.replay.disabled = false;
    }
  },

  init() {
    this.form.addEventListener('submit', (event) => {
      event.preventDefault();
      const value = this.input.value.trim();
      if (!value) return;
      sessionStorage.setItem(TOKEN_KEY, value);
      pipeline.adminUsable = true;
      this.form.hidden = true;
      this.run(this.pending || 'load');
    });
    this.load.addEventListener('click', () => this.run('load'));
    this.replay.addEventListener('click', () => this.run('replay'));
    this.forget.addEventListener('click', () => {
      sessionStorage.removeItem(TOKEN_KEY);
      this.forget.hidden = true;
      this.replay.hidden = true;
      this.list.replaceChildren();
      this.status.textContent = 'Token forgotten.';
    });
    if (this.token()) this.forget.hidden = false;
  },
};

// ------------------------------------------------- live stream and polling

const connection = {
  pill: el('conn-status'),
  label: document.querySelector('.conn-label'),
  mode: 'connecting',   // live | polling | connecting
  liveSupported: null,  // null = not yet known
  source: null,
  generation: 0,
  pollTimer: null,
  reprobeTimer: null,
  retryTimer: null,
  staleTimer: null,
  backoff: 1000,

  url() {
    const params = new URLSearchParams();
    if (state.analyticsAd) params.set('adId', state.analyticsAd);
    params.set('timeframe', state.timeframe);
    return `live?${params}`;
  },

  render() {
    const mode = reachability.down ? 'offline' : this.mode;
    this.pill.dataset.mode = mode;
    this.label.textContent = {
      live: 'Live',
      polling: `Polling every ${POLL_MS / 1000} s`,
      connecting: 'Connecting…',
      offline: 'Offline',
    }[mode];
  },

  setMode(mode) {
    this.mode = mode;
    this.render();
  },

  stop() {
    this.generation += 1;
    if (this.source) { this.source.close(); this.source = null; }
    clearInterval(this.pollTimer); this.pollTimer = null;
    clearTimeout(this.retryTimer); this.retryTimer = null;
    clearTimeout(this.staleTimer); this.staleTimer = null;
  },

  /** (Re)connects for the current ad and timeframe. */
  restart() {
    if (!this.started) return;
    this.stop();
    if (this.liveSupported === false) this.startPolling();
    else if (this.liveSupported === true) this.openStream();
    else this.probe();
  },

  /** Asks once whether the server has /live, without leaving a stream open. */
  async probe() {
    const generation = this.generation;
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), 5000);
    let response;
    try {
      response = await fetch(this.url(), { headers: { Accept: 'text/event-stream' }, signal: controller.signal, cache: 'no-store' });
    } catch {
      clearTimeout(timer);
      if (generation !== this.generation) return;
      reachability.fail('no connection');
      this.startPolling(); // keeps trying and clears the banner when it answers
      this.scheduleReprobe(3000);
      return;
    }
    clearTimeout(timer);
    controller.abort(); // only the status line was wanted
    reachability.ok();
    if (generation !== this.generation) return;
    const type = response.headers.get('content-type') || '';
    if (response.ok && type.includes('text/event-stream')) {
      this.liveSupported = true;
      this.openStream();
    } else {
      if (response.status === 404 || response.status === 405) this.liveSupported = false;
      this.startPolling();
      this.scheduleReprobe(response.status === 404 ? LIVE_REPROBE_MS : 5000);
    }
  },

  scheduleReprobe(ms) {
    clearTimeout(this.reprobeTimer);
    this.reprobeTimer = setTimeout(() => {
      if (this.mode === 'live') return;
      this.liveSupported = null;
      this.restart();
    }, ms);
  },

  openStream() {
    const generation = this.generation;
    const source = new EventSource(this.url());
    this.source = source;
    const alive = () => {
      if (generation !== this.generation) return false;
      reachability.ok();
      this.backoff = 1000;
      if (this.mode !== 'live') {
        clearInterval(this.pollTimer); this.pollTimer = null;
        this.setMode('live');
      }
      clearTimeout(this.staleTimer);
      this.staleTimer = setTimeout(() => this.stale(generation), LIVE_STALE_MS);
      return true;
    };
    const listen = (name, handler) => source.addEventListener(name, (event) => {
      if (!alive()) return;
      let data;
      try { data = JSON.parse(event.data); } catch { return; }
      handler(data);
    });
    source.addEventListener('open', alive);
    listen('pipeline', (data) => pipeline.handle(data));
    listen('analytics', (data) => analytics.render(data));
    listen('campaigns', (data) => campaigns.merge(data));
    source.addEventListener('error', () => {
      if (generation !== this.generation) return;
      if (source.readyState === EventSource.CLOSED) {
        // The server answered with an error status: reconnect with backoff,
        // asking again whether /live exists.
        this.source = null;
        this.liveSupported = null;
        this.startPolling();
        clearTimeout(this.retryTimer);
        this.retryTimer = setTimeout(() => this.restart(), this.backoff);
        this.backoff = Math.min(this.backoff * 2, 30000);
      } else {
        // The browser reconnects by itself; say so meanwhile.
        reachability.fail('the live connection was lost');
      }
    });
  },

  stale(generation) {
    if (generation !== this.generation) return;
    // Connected but silent: drop this stream and start a fresh one.
    reachability.fail('the live stream went quiet');
    this.restart();
  },

  startPolling() {
    if (this.pollTimer) return;
    this.setMode('polling');
    pipeline.explainPolling();
    const tick = () => {
      if (document.hidden) return;
      analytics.refresh();
      campaigns.refresh();
      campaigns.refreshScreens();
      pipeline.pollAdmin();
    };
    this.pollTimer = setInterval(tick, POLL_MS);
  },

  start() {
    this.started = true;
    this.restart();
  },
};

// ------------------------------------------------------------------ reports

/** A Date as the value of a datetime-local input (local time, minutes). */
function toLocalInput(date) {
  const pad = (n) => String(n).padStart(2, '0');
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

const BUCKET_SECONDS = { minute: 60, hour: 3600, day: 86400 };
const AGG_REFRESH_MS = 30000;  // the aggregates panel, while its range ends now

const aggregatesChart = new Chart(el('aggregates-chart'), (width, height) => ({
  width,
  height,
  legend: { show: false },
  cursor: { points: { show: false }, drag: { x: false, y: false } },
  scales: {
    // A bar starts at its bucket and covers it (align 1), so the scale runs
    // one bucket past the newest start: else the newest bar lies outside.
    x: { time: true, range: (u, min, max) => [min, max + reports.bucketSeconds] },
    y: { range: (u, min, max) => [0, Math.max(4, Math.ceil(max * 1.15))] },
  },
  axes: [axisStyle(), axisStyle({ size: 52 })],
  series: [
    {},
    {
      label: 'Events',
      stroke: themeColour('--bar'),
      fill: themeColour('--bar'),
      width: 0,
      paths: window.uPlot ? window.uPlot.paths.bars({ size: [0.86, Infinity], align: 1 }) : undefined,
      points: { show: false },
    },
  ],
}), 'No events in this range');

const reports = {
  form: el('aggregates-form'),
  from: el('agg-from'),
  to: el('agg-to'),
  group: el('agg-group'),
  ad: el('agg-ad'),
  type: el('agg-type'),
  followNow: el('agg-now'),
  stats: el('agg-stats'),
  bucketSeconds: 3600, // of the buckets on the chart
  timer: null,
  request: 0,
  error: el('aggregates-error'),
  expForm: el('experiment-form'),
  expId: el('experiment-id'),
  expBody: el('experiment-body'),
  expNote: el('experiment-note'),
  expError: el('experiment-error'),

  init() {
    this.span = 24 * 3600 * 1000;
    this.slide();
    // Picking an end by hand stops the range from following the clock;
    // ticking "Up to now" again makes it end now with the length it has.
    this.to.addEventListener('input', () => { this.followNow.checked = false; });
    this.from.addEventListener('input', () => {
      const span = this.inputSpan();
      if (span) this.span = span;
    });
    this.followNow.addEventListener('change', () => {
      const span = this.inputSpan();
      if (span) this.span = span;
      if (this.followNow.checked) this.refresh();
    });
    this.form.addEventListener('submit', (e) => { e.preventDefault(); this.refresh(); });
    this.expForm.addEventListener('submit', (e) => { e.preventDefault(); this.summarise(); });
    this.timer = setInterval(() => {
      if (!document.hidden && this.followNow.checked) this.refresh();
    }, AGG_REFRESH_MS);
  },

  /** The picked range's length in ms, or 0 when it is not a range. */
  inputSpan() {
    const span = new Date(this.to.value).getTime() - new Date(this.from.value).getTime();
    return Number.isFinite(span) && span > 0 ? span : 0;
  },

  /** Moves the range to end now (the current minute included), keeping its length. */
  slide() {
    const to = new Date(Math.floor(Date.now() / 60000) * 60000 + 60000);
    this.to.value = toLocalInput(to);
    this.from.value = toLocalInput(new Date(to.getTime() - this.span));
  },

  fillAds() {
    this.ad.replaceChildren(h('option', { value: '' }, 'All ads'),
      ...state.ads.map((ad) => h('option', { value: ad.id }, ad.title || ad.id)));
  },

  async refresh() {
    // The range set at page load would freeze: while "Up to now" is ticked,
    // every refresh ends it at the current minute.
    if (this.followNow.checked) this.slide();
    const from = new Date(this.from.value);
    const to = new Date(this.to.value);
    if (Number.isNaN(from.getTime()) || Number.isNaN(to.getTime())) {
      showNote(this.error, 'Pick a start and an end.');
      return;
    }
    const params = new URLSearchParams({ from: from.toISOString(), to: to.toISOString(), groupBy: this.group.value });
    if (this.ad.value) params.set('adId', this.ad.value);
    if (this.type.value) params.set('type', this.type.value);
    const ticket = ++this.request;
    const group = this.group.value;
    try {
      const result = await api(`aggregates?${params}`);
      if (ticket !== this.request) return;
      hideNote(this.error);
      this.bucketSeconds = BUCKET_SECONDS[result.groupBy || group] || 3600;
      setValue(el('agg-count'), fmt(result.count));
      setValue(el('agg-amount'), fmt(result.totalAmount));
      setValue(el('agg-buckets'), fmt(result.buckets.length));
      const xs = result.buckets.map((b) => Date.parse(b.start) / 1000);
      const ys = result.buckets.map((b) => b.count);
      aggregatesChart.set([xs, ys], result.count === 0);
      this.stats.dataset.loaded = 'true';
      this.stats.dataset.count = String(result.count);
      this.stats.dataset.to = result.to || to.toISOString();
    } catch (err) {
      if (ticket === this.request) showNote(this.error, `Aggregates unavailable: ${errorText(err)}`);
    }
  },

  async summarise() {
    const id = this.expId.value.trim();
    if (!id) return;
    try {
      const s = await api(`experiments/${encodeURIComponent(id)}/summary`);
      hideNote(this.expError);
      if (!s.variants.length) {
        this.expBody.replaceChildren(h('tr', { class: 'placeholder' }, h('td', { colspan: '6' }, 'No events carry this experiment id.')));
        this.expNote.textContent = '';
        return;
      }
      this.expBody.replaceChildren(...s.variants.map((v) => h('tr', { 'data-variant': v.variant },
        h('td', {}, v.variant === s.control && v.variant !== 'control' ? `${v.variant} (control)` : v.variant),
        h('td', {}, fmt(v.uniqueUsers)),
        h('td', {}, fmt(v.conversions)),
        h('td', {}, fmt(v.convertedUsers)),
        h('td', {}, fmtPercent(v.conversionRate)),
        h('td', { 'data-testid': 'experiment-p' }, v.pValue === undefined ? '—' : v.pValue < 0.0001 ? '< 0.0001' : v.pValue.toFixed(4)))));
      const best = s.variants.filter((v) => v.pValue !== undefined).sort((a, b) => a.pValue - b.pValue)[0];
      this.expNote.textContent = best
        ? (best.pValue < 0.05
          ? `${best.variant} differs from ${s.control} at the 5 % level (two-proportion z-test).`
          : `No variant differs from ${s.control} at the 5 % level yet (two-proportion z-test).`)
        : '';
    } catch (err) {
      showNote(this.expError, `Summary unavailable: ${errorText(err)}`);
    }
  },
};

// ------------------------------------------------------------------- start

async function loadAds() {
  for (let attempt = 0; ; attempt += 1) {
    try {
      const ads = await api('ads');
      return Array.isArray(ads) ? ads : [];
    } catch (err) {
      const msg = `Ads unavailable: ${errorText(err)}`;
      showNote(player.error, msg);
      await new Promise((resolve) => setTimeout(resolve, Math.min(2000 * (attempt + 1), 10000)));
    }
  }
}

async function main() {
  player.init();
  analytics.init();
  campaigns.init();
  deadLetters.init();
  reports.init();
  connection.render();

  campaigns.refresh();
  pipeline.pollAdmin();

  state.ads = await loadAds();
  hideNote(player.error);
  analytics.fillOptions();
  reports.fillAds();
  reports.refresh();
  if (state.ads.length) {
    state.analyticsAd = state.ads[0].id;
    analytics.select.value = state.analyticsAd;
    analytics.stats.dataset.adId = state.analyticsAd;
    analytics.refresh();
    player.load(0);
  } else {
    player.setState('empty');
    player.title.textContent = 'No ads in the catalogue';
  }
  connection.start();
}

main();
