/*! adtrack browser SDK. No dependencies.
 *
 * Classic script:  <script src="https://adtrack.example/sdk.js"></script>  → window.adtrack
 * ES module:       import adtrack from 'https://adtrack.example/sdk.mjs'
 *
 *   adtrack.init({ endpoint: 'https://adtrack.example', apiKey: '…' });
 *   adtrack.track('click', { adId: 'ad-1' });
 *   adtrack.viewable(element, { adId: 'ad-1' }, { video: false });
 *
 * Each event gets its eventId (a UUID) here, when it is tracked, so a retry
 * is never counted twice. Events wait in a queue mirrored to localStorage
 * (at most MAX_QUEUE; past that the oldest are dropped) until adtrack has
 * answered 202 for them, and are sent in batches to POST /events/batch.
 * A network error, a 429 or a 5xx is retried with the same events, after
 * Retry-After when the answer has one, else after a backoff doubling from
 * 1 s to 60 s; any other 4xx drops the batch (logged to the console).
 * When the page is hidden or left, the queue goes out with sendBeacon.
 */
(function (root) {
  'use strict';
  if (root.adtrack) return; // loaded twice (script and module): one queue

  var MAX_QUEUE = 1000; // events kept; past this the oldest are dropped
  var BATCH = 50; // events per request (50 × 16 KiB stays under the 1 MiB cap)
  var BEACON_BYTES = 60000; // browsers allow 64 KiB of beacons in flight
  var BACKOFF_MIN = 1000;
  var BACKOFF_MAX = 60000;
  var KEY = 'adtrack:queue:'; // localStorage key prefix, one key per page load

  var script = root.document && root.document.currentScript;
  var cfg = null;
  var queue = []; // events not yet acknowledged, oldest first
  var sending = null; // the eventIds of the request in flight
  var timer = 0;
  var backoff = 0;
  var pageKey = KEY + uuid();
  var listening = false;

  function uuid() {
    var c = root.crypto;
    if (c && c.randomUUID) return c.randomUUID();
    // crypto.randomUUID needs a secure context; build a v4 UUID by hand.
    var b = c.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 15) | 64;
    b[8] = (b[8] & 63) | 128;
    var h = '';
    for (var i = 0; i < 16; i++) h += (i === 4 || i === 6 || i === 8 || i === 10 ? '-' : '') + (b[i] + 256).toString(16).slice(1);
    return h;
  }

  function storage() {
    try {
      return root.localStorage;
    } catch (e) {
      return null; // disabled, or a sandboxed frame
    }
  }

  function persist() {
    var ls = storage();
    if (!ls) return;
    try {
      if (queue.length) ls.setItem(pageKey, JSON.stringify(queue));
      else ls.removeItem(pageKey);
    } catch (e) {
      /* quota: the in-memory queue still holds the events */
    }
  }

  /** Takes over the queues earlier page loads (or other tabs) left behind. */
  function adopt() {
    var ls = storage();
    if (!ls) return;
    var seen = {};
    queue.forEach(function (ev) {
      seen[ev.eventId] = 1;
    });
    for (var i = ls.length - 1; i >= 0; i--) {
      var k = ls.key(i);
      if (!k || k.indexOf(KEY) !== 0 || k === pageKey) continue;
      try {
        (JSON.parse(ls.getItem(k)) || []).forEach(function (ev) {
          if (ev && ev.eventId && !seen[ev.eventId]) {
            seen[ev.eventId] = 1;
            queue.push(ev);
          }
        });
      } catch (e) {
        /* unreadable: dropped */
      }
      ls.removeItem(k);
    }
    queue.sort(function (a, b) {
      return a.timestamp < b.timestamp ? -1 : a.timestamp > b.timestamp ? 1 : 0;
    });
    bound();
    persist();
  }

  function bound() {
    if (queue.length > MAX_QUEUE) {
      var dropped = queue.splice(0, queue.length - MAX_QUEUE);
      console.warn('adtrack: queue full, dropped the ' + dropped.length + ' oldest events');
    }
  }

  function schedule(ms) {
    clearTimeout(timer);
    timer = setTimeout(flush, ms);
  }

  function remove(ids) {
    queue = queue.filter(function (ev) {
      return !ids[ev.eventId];
    });
    persist();
  }

  /** Seconds or an HTTP date, in ms; 0 when absent or unreadable. */
  function retryAfter(res) {
    var v = res.headers.get('Retry-After');
    if (!v) return 0;
    var s = +v;
    var ms = isNaN(s) ? Date.parse(v) - Date.now() : s * 1000;
    return ms > 0 ? Math.min(ms, 3600000) : 0;
  }

  function retry(ms) {
    backoff = Math.min(Math.max(backoff * 2, BACKOFF_MIN), BACKOFF_MAX);
    schedule(ms || backoff);
  }

  /** Sends the oldest batch now; resolves when its answer is handled. */
  function flush() {
    clearTimeout(timer);
    timer = 0;
    if (!cfg || sending || !queue.length) return Promise.resolve();
    var batch = queue.slice(0, cfg.batchSize);
    var ids = {};
    batch.forEach(function (ev) {
      ids[ev.eventId] = 1;
    });
    sending = ids;
    var headers = { 'Content-Type': 'application/json' };
    if (cfg.apiKey) headers['X-API-Key'] = cfg.apiKey;
    return fetch(cfg.endpoint + '/events/batch', {
      method: 'POST',
      headers: headers,
      body: JSON.stringify({ events: batch }),
      credentials: 'omit',
    })
      .then(
        function (res) {
          sending = null;
          if (res.status === 202 || res.ok) {
            backoff = 0;
            remove(ids);
            return res.json().then(
              function (body) {
                if (body && body.rejected && body.rejected.length) console.warn('adtrack: events rejected', body.rejected);
              },
              function () {}
            );
          }
          if (res.status === 429 || res.status === 408 || res.status >= 500) return retry(retryAfter(res));
          console.error('adtrack: batch of ' + batch.length + ' events dropped: HTTP ' + res.status);
          backoff = 0; // the rest of the queue goes on
          remove(ids);
        },
        function () {
          sending = null; // offline, refused by CORS, or the server is down
          retry(0);
        }
      )
      .then(function () {
        if (queue.length && !backoff) schedule(0);
      });
  }

  /**
   * Sends the whole queue without waiting for answers, for a page that is
   * going away. The events stay queued (in localStorage) until a 202 names
   * them, so the next page load sends them again and adtrack drops the
   * duplicates by eventId.
   */
  function beacon() {
    persist();
    if (!cfg || !queue.length) return;
    var send = function (events) {
      var body = JSON.stringify({ events: events });
      if (cfg.apiKey) {
        // A beacon cannot carry a header; a keepalive fetch can.
        fetch(cfg.endpoint + '/events/batch', {
          method: 'POST',
          keepalive: true,
          credentials: 'omit',
          headers: { 'Content-Type': 'application/json', 'X-API-Key': cfg.apiKey },
          body: body,
        }).catch(function () {});
        return true;
      }
      // text/plain needs no preflight, which beacons never make; adtrack
      // reads a text/plain batch as JSON.
      return navigator.sendBeacon(cfg.endpoint + '/events/batch', new Blob([body], { type: 'text/plain' }));
    };
    var chunk = [];
    var size = 0;
    for (var i = 0; i < queue.length; i++) {
      var n = JSON.stringify(queue[i]).length + 1;
      if (chunk.length && (size + n > BEACON_BYTES || chunk.length >= cfg.batchSize)) {
        if (!send(chunk)) return;
        chunk = [];
        size = 0;
      }
      chunk.push(queue[i]);
      size += n;
    }
    send(chunk);
  }

  function init(options) {
    options = options || {};
    var endpoint = options.endpoint || (script && script.src ? new URL(script.src).origin : '');
    cfg = {
      endpoint: String(endpoint).replace(/\/+$/, ''),
      apiKey: options.apiKey || '',
      batchSize: Math.min(options.batchSize || BATCH, 1000),
      flushInterval: options.flushInterval == null ? 1000 : options.flushInterval,
    };
    adopt();
    if (!listening && root.addEventListener) {
      listening = true;
      root.addEventListener('pagehide', beacon);
      root.document.addEventListener('visibilitychange', function () {
        if (root.document.visibilityState === 'hidden') beacon();
      });
      root.addEventListener('online', function () {
        backoff = 0;
        flush();
      });
    }
    if (queue.length) schedule(0);
    return api;
  }

  /** Queues one event; `fields` are adtrack's event fields (adId, …). */
  function track(type, fields) {
    var ev = {};
    for (var k in fields || {}) ev[k] = fields[k];
    ev.type = type;
    ev.eventId = ev.eventId || ev.event_id || uuid();
    ev.timestamp = ev.timestamp || ev.ts || new Date().toISOString();
    delete ev.event_id;
    delete ev.ts;
    queue.push(ev);
    bound();
    persist();
    if (cfg && !backoff) {
      if (queue.length >= cfg.batchSize) flush();
      else if (!timer) schedule(cfg.flushInterval);
    }
    return ev.eventId;
  }

  /**
   * Tracks an impression (type `impression`, with `fields`) once `element`
   * has been at least 50 % in view for 1 s without a break (2 s with
   * { video: true }), while the page is visible. Returns a function that
   * stops watching.
   */
  function viewable(element, fields, options) {
    var need = options && options.video ? 2000 : 1000;
    var inView = false;
    var t = 0;
    var done = false;
    var doc = root.document;
    var io;
    function update() {
      clearTimeout(t);
      t = 0;
      if (!done && inView && doc.visibilityState === 'visible') {
        t = setTimeout(function () {
          done = true;
          stop();
          track('impression', fields);
        }, need);
      }
    }
    function stop() {
      clearTimeout(t);
      if (io) io.disconnect();
      doc.removeEventListener('visibilitychange', update);
    }
    io = new IntersectionObserver(
      function (entries) {
        var e = entries[entries.length - 1];
        inView = e.isIntersecting && e.intersectionRatio >= 0.5;
        update();
      },
      { threshold: [0, 0.5] }
    );
    io.observe(element);
    doc.addEventListener('visibilitychange', update);
    return stop;
  }

  var api = {
    init: init,
    track: track,
    flush: flush,
    viewable: viewable,
    /** The events not yet acknowledged (a copy). */
    pending: function () {
      return queue.slice();
    },
  };
  root.adtrack = api;
})(typeof window !== 'undefined' ? window : globalThis);
