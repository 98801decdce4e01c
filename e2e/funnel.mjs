// What the browser tests share about VAST views and the figures they produce:
// reading an ad's analytics, waiting for the pipeline to drain, and matching
// the pixels a player fired against the templates of a VAST document.

/** The /ads/analytics fields a VAST view moves. */
export const FUNNEL = ['impressions', 'starts', 'firstQuartiles', 'midpoints', 'thirdQuartiles', 'completes', 'skips', 'errors', 'totalClicks'];

/** The tracking events every adtrack VAST document carries. */
export const TRACKING_EVENTS = ['start', 'firstQuartile', 'midpoint', 'thirdQuartile', 'complete', 'pause', 'resume', 'mute', 'unmute', 'skip', 'closeLinear'];

/** adtrack's figures for one ad. */
export async function analytics(base, adId, timeframe = 'all') {
  const res = await fetch(`${base}/ads/analytics?adId=${encodeURIComponent(adId)}&timeframe=${timeframe}`, { cache: 'no-store' });
  if (!res.ok) throw new Error(`analytics for ${adId} answered ${res.status}`);
  return res.json();
}

/** The funnel fields of an analytics answer, plus `want` added to them. */
export function plus(figures, want) {
  const out = {};
  for (const key of FUNNEL) out[key] = (figures[key] ?? 0) + (want[key] ?? 0);
  return out;
}

/** The fields of `figures` that differ from `want`, as "field have≠want". */
export function differences(figures, want) {
  return Object.keys(want)
    .filter((key) => (figures[key] ?? 0) !== want[key])
    .map((key) => `${key} ${figures[key]}≠${want[key]}`);
}

async function queue(base, token) {
  const res = await fetch(`${base}/admin/queue`, { headers: { Authorization: `Bearer ${token}` }, cache: 'no-store' });
  if (!res.ok) throw new Error(`GET /admin/queue answered ${res.status}`);
  return res.json();
}

/**
 * Waits until every accepted event has been stored and counted: the queue,
 * the workers' processing lists, the retry set and the spool are empty. A
 * pixel is answered only once Redis holds its event, and a worker empties
 * its processing list only after the counters took the batch, so once every
 * pixel was answered this is the moment the figures are final.
 */
export async function drained(base, token, timeout = 20_000) {
  if (!token) throw new Error('ADMIN_TOKEN is not set: the test reads /admin/queue to know the pipeline drained');
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    last = await queue(base, token);
    if (last.queued === 0 && last.processing === 0 && last.retrying === 0 && last.spooledEvents === 0) return last;
    if (Date.now() > deadline) throw new Error(`the pipeline did not drain within ${timeout} ms: ${JSON.stringify(last)}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/**
 * A regular expression matching the URLs a player makes from a VAST URL
 * template: each [MACRO] (or %%MACRO%%) may be replaced by any value.
 */
export function templatePattern(template) {
  const parts = template.split(/(\[[A-Za-z_]+\]|%%[A-Za-z_]+%%)/);
  const body = parts.map((part, i) => (i % 2 ? '[^&#]*' : part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'))).join('');
  return new RegExp(`^${body}$`);
}

/**
 * Collects the requests a browser context sends to adtrack's pixel and
 * click URLs and their answers, so a test can wait until all were answered.
 */
export class PixelLog {
  constructor(context, base) {
    this.entries = [];
    this.base = base;
    context.on('request', (request) => {
      if (!this.isTracking(request.url())) return;
      this.entries.push({ url: request.url(), request, status: null, failed: null });
    });
    context.on('response', (response) => {
      const entry = this.entries.find((e) => e.request === response.request());
      if (entry) entry.status = response.status();
    });
    context.on('requestfailed', (request) => {
      const entry = this.entries.find((e) => e.request === request);
      if (entry) entry.failed = request.failure()?.errorText || 'failed';
    });
  }

  /** Anything under adtrack's origin but its pages, API and files. */
  isTracking(url) {
    if (!url.startsWith(this.base)) return false;
    const path = new URL(url).pathname;
    return /^\/(t|c)\//.test(path);
  }

  /** Entries matching a URL template. */
  matching(template) {
    const pattern = templatePattern(template);
    return this.entries.filter((e) => pattern.test(e.url));
  }

  pending() {
    return this.entries.filter((e) => e.status === null && e.failed === null);
  }

  /** Waits until every logged request has an answer; throws on a failure or an error status. */
  async settled(timeout = 15_000) {
    const deadline = Date.now() + timeout;
    while (this.pending().length) {
      if (Date.now() > deadline) throw new Error(`${this.pending().length} tracking request(s) unanswered: ${this.pending().map((e) => e.url).join(', ')}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    const bad = this.entries.filter((e) => e.failed || !(e.status === 200 || e.status === 204 || e.status === 302));
    if (bad.length) throw new Error(`tracking requests failed: ${bad.map((e) => `${e.url} → ${e.failed || e.status}`).join(', ')}`);
  }
}
