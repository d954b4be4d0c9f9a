// The workers-spawner dashboard. Plain JavaScript, no build step, no
// external URLs: it reads the daemon's /v1 API (docs/api.md) with the token
// typed into the page (kept in this tab's sessionStorage) and renders every
// piece of data with textContent, never as HTML.
'use strict';

(function () {
  const API = '/v1';
  const POLL_MS = 2000;
  const TOKEN_KEY = 'workers-spawner.api-token';
  const MAX_EVENT_ROWS = 5000;
  const CANCEL_RETRY_MS = 15000;

  const $ = (sel) => document.querySelector(sel);

  // ---- small DOM helpers (text only) ----------------------------------

  function el(tag, props, children) {
    const node = document.createElement(tag);
    if (props) {
      for (const [k, v] of Object.entries(props)) {
        if (v === undefined || v === null || v === false) continue;
        if (k === 'text') node.textContent = String(v);
        else if (k === 'class') node.className = v;
        else node.setAttribute(k, v === true ? '' : String(v));
      }
    }
    if (children) {
      for (const c of children) {
        if (c === null || c === undefined) continue;
        node.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
      }
    }
    return node;
  }

  function setText(node, text) {
    const t = text === null || text === undefined ? '' : String(text);
    if (node.textContent !== t) node.textContent = t;
  }

  function setAttr(node, name, value) {
    if (value === null || value === undefined || value === '') {
      if (node.hasAttribute(name)) node.removeAttribute(name);
    } else if (node.getAttribute(name) !== String(value)) {
      node.setAttribute(name, String(value));
    }
  }

  function show(node, visible) {
    if (node.hidden === visible) node.hidden = !visible;
  }

  // ---- token -----------------------------------------------------------

  let memoryToken = '';
  let tokenGen = 0;

  function getToken() {
    try {
      const t = window.sessionStorage.getItem(TOKEN_KEY);
      return t === null ? memoryToken : t;
    } catch (_) {
      return memoryToken;
    }
  }

  function setToken(t) {
    memoryToken = t;
    try {
      if (t === null) window.sessionStorage.removeItem(TOKEN_KEY);
      else window.sessionStorage.setItem(TOKEN_KEY, t);
    } catch (_) { /* storage unavailable: keep it in memory */ }
    tokenGen++;
  }

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    const t = getToken();
    if (t) h['Authorization'] = 'Bearer ' + t;
    return h;
  }

  // ---- API -------------------------------------------------------------

  const REASONS = {
    400: 'bad request', 401: 'unauthorized', 403: 'forbidden', 404: 'not found',
    429: 'rate limited', 500: 'internal error', 502: 'bad gateway', 503: 'unavailable',
  };

  function errorText(status, body, raw) {
    const e = body && typeof body === 'object' ? body.error : null;
    const code = e && typeof e === 'object' && e.code ? String(e.code) : (REASONS[status] || 'error');
    let s = status ? status + ' ' + code : code;
    if (e && typeof e === 'object' && e.message) s += ': ' + e.message;
    else if (!body && raw) s += ': ' + raw.slice(0, 200);
    return s;
  }

  function retryAfterMs(resp) {
    const v = resp && resp.headers ? resp.headers.get('Retry-After') : null;
    const n = v === null ? NaN : Number(v);
    return Number.isFinite(n) && n >= 0 ? Math.min(n, 120) * 1000 : 5000;
  }

  async function api(path, opts) {
    opts = opts || {};
    let resp;
    try {
      resp = await fetch(API + path, {
        method: opts.method || 'GET',
        headers: headers({ Accept: 'application/json' }),
        cache: 'no-store',
      });
    } catch (e) {
      return { ok: false, status: 0, body: null, message: 'daemon unreachable (' + (e && e.message ? e.message : e) + ')' };
    }
    let raw = '';
    try { raw = await resp.text(); } catch (_) { /* body lost */ }
    let body = null;
    try { body = raw ? JSON.parse(raw) : null; } catch (_) { body = null; }
    if (resp.ok) return { ok: true, status: resp.status, body: body };
    return {
      ok: false, status: resp.status, body: body,
      message: errorText(resp.status, body, raw),
      retryMs: resp.status === 429 ? retryAfterMs(resp) : 0,
    };
  }

  // ---- time ------------------------------------------------------------

  // A time from the API: RFC 3339 text, or Unix seconds / milliseconds
  // (number or digits). Returns milliseconds, or null.
  function parseTime(v) {
    if (v === null || v === undefined || v === '') return null;
    let n = NaN;
    if (typeof v === 'number') n = v;
    else if (typeof v === 'string' && /^\s*-?\d+(\.\d+)?\s*$/.test(v)) n = Number(v);
    if (Number.isFinite(n)) return n > 1e11 ? n : n * 1000;
    const ms = Date.parse(String(v));
    return Number.isFinite(ms) ? ms : null;
  }

  function duration(sec) {
    sec = Math.max(0, Math.round(sec));
    const d = Math.floor(sec / 86400), h = Math.floor((sec % 86400) / 3600);
    const m = Math.floor((sec % 3600) / 60), s = sec % 60;
    const p2 = (x) => String(x).padStart(2, '0');
    if (d) return d + 'd ' + p2(h) + 'h';
    if (h) return h + 'h ' + p2(m) + 'm';
    if (m) return m + 'm ' + p2(s) + 's';
    return s + 's';
  }

  function clock(ms) {
    const d = new Date(ms);
    return d.toLocaleTimeString([], { hour12: false });
  }

  function dateTime(ms) {
    const d = new Date(ms);
    const today = new Date();
    const sameDay = d.toDateString() === today.toDateString();
    return sameDay ? clock(ms) : d.toLocaleDateString() + ' ' + clock(ms);
  }

  function clockMs(ms) {
    return clock(ms) + '.' + String(new Date(ms).getMilliseconds()).padStart(3, '0');
  }

  function fullTime(ms, raw) {
    return new Date(ms).toISOString() + (raw !== undefined && raw !== null ? '  (' + raw + ')' : '');
  }

  // ---- notice and connection state ----------------------------------------

  let noticeTimer = null;

  function notice(kind, text) {
    const box = $('#notice');
    clearTimeout(noticeTimer);
    box.dataset.kind = kind;
    setText($('#notice-text'), text);
    show(box, true);
    if (kind === 'ok') noticeTimer = setTimeout(() => show(box, false), 6000);
  }

  function connState(state, text) {
    const c = $('#conn');
    c.dataset.state = state;
    setText($('#conn-text'), text);
  }

  // ---- keyed table rows ------------------------------------------------

  // Updates tbody in place so that rows (and the buttons in them) stay the
  // same nodes from one poll to the next.
  function syncRows(tbody, items, keyOf, build, update) {
    const existing = new Map();
    for (const tr of Array.from(tbody.children)) existing.set(tr.dataset.key, tr);
    const seen = new Map();
    let prev = null;
    for (const item of items) {
      let key = String(keyOf(item));
      const n = seen.get(key) || 0;
      seen.set(key, n + 1);
      if (n) key += '#' + n;
      let tr = existing.get(key);
      if (tr) existing.delete(key);
      else { tr = build(item); tr.dataset.key = key; }
      update(tr, item);
      const want = prev ? prev.nextSibling : tbody.firstChild;
      if (tr !== want) tbody.insertBefore(tr, want);
      prev = tr;
    }
    for (const tr of existing.values()) tr.remove();
  }

  function cells(tr, names) {
    for (const n of names) tr.appendChild(el('td', { class: n }));
    return tr;
  }

  function cell(tr, name) {
    return tr.querySelector('td.' + name);
  }

  function requestLink(id) {
    return el('button', { type: 'button', class: 'link request-link', 'data-request-id': id, title: 'show events and result', text: id });
  }

  function listOf(body, key) {
    const v = body && body[key];
    return Array.isArray(v) ? v : [];
  }

  function str(v) {
    return v === null || v === undefined ? '' : String(v);
  }

  // ---- workers -----------------------------------------------------------

  // request/session id -> {state: sending|sent|forbidden|failed, at}
  const cancels = new Map();

  function cancelKey(w) {
    if (w.request_id) return 'request:' + w.request_id;
    if (w.session_id && w.kind !== 'pool') return 'session:' + w.session_id;
    return '';
  }

  function renderWorkerRequest(td, w) {
    td.replaceChildren();
    if (w.request_id) td.appendChild(requestLink(str(w.request_id)));
    else td.appendChild(el('span', { class: 'muted', text: w.kind === 'pool' ? 'pool (idle)' : '—' }));
    if (w.session_id) td.appendChild(el('div', { class: 'sub', text: 'session ' + w.session_id }));
    td.appendChild(el('div', { class: 'sub mono', title: 'container', text: str(w.container) }));
  }

  function renderWorkerAction(td, w) {
    const key = cancelKey(w);
    td.replaceChildren();
    if (!key) return;
    const c = cancels.get(key);
    const isReq = key.startsWith('request:');
    const id = isReq ? str(w.request_id) : str(w.session_id);
    const btn = el('button', {
      type: 'button',
      class: isReq ? 'cancel' : 'cancel cancel-session',
      'data-request-id': isReq ? id : null,
      'data-session-id': isReq ? null : id,
      'data-cancel': c ? c.state : null,
    });
    let label = isReq ? 'Cancel' : 'Cancel session';
    let title = isReq ? 'POST /v1/requests/' + id + '/cancel (admin token)' : 'POST /v1/sessions/' + id + '/cancel (admin token)';
    if (c && c.state === 'sending') { label = 'Cancelling…'; btn.disabled = true; }
    else if (c && c.state === 'sent') {
      if (Date.now() - c.at < CANCEL_RETRY_MS) { label = 'Cancel sent'; btn.disabled = true; }
      else label = 'Cancel again';
    } else if (c && c.state === 'forbidden') title = 'refused: this token is not an admin token';
    btn.textContent = label;
    btn.title = title;
    td.appendChild(btn);
  }

  function workerSig(w) {
    const c = cancels.get(cancelKey(w));
    const cs = c ? c.state + (c.state === 'sent' && Date.now() - c.at >= CANCEL_RETRY_MS ? '-old' : '') : '';
    return [w.request_id, w.session_id, w.kind, w.container, cs].map(str).join('\u0000');
  }

  function updateWorkerTimes(tr) {
    const created = tr._created, deadline = tr._deadline, now = Date.now();
    const age = cell(tr, 'age'), dl = cell(tr, 'deadline');
    setText(age, created === null ? '—' : duration((now - created) / 1000));
    if (deadline === null) { setText(dl, '—'); setAttr(dl, 'data-overdue', null); return; }
    const left = (deadline - now) / 1000;
    setText(dl, left >= 0 ? 'in ' + duration(left) : duration(-left) + ' ago');
    setAttr(dl, 'data-overdue', left < 0 ? 'true' : null);
  }

  function renderWorkers(list) {
    const tbody = $('#workers tbody');
    syncRows(tbody, list, (w) => w.container || w.request_id || w.session_id || '?',
      () => cells(el('tr', { class: 'worker' }), ['request', 'preset', 'user', 'state', 'age', 'deadline', 'instance', 'actions']),
      (tr, w) => {
        setAttr(tr, 'data-request-id', w.request_id);
        setAttr(tr, 'data-session-id', w.session_id);
        setAttr(tr, 'data-container', w.container);
        setAttr(tr, 'data-kind', w.kind);
        setAttr(tr, 'data-state', w.state);
        const sig = workerSig(w);
        if (tr._sig !== sig) {
          tr._sig = sig;
          renderWorkerRequest(cell(tr, 'request'), w);
          renderWorkerAction(cell(tr, 'actions'), w);
        }
        setText(cell(tr, 'preset'), str(w.preset));
        setText(cell(tr, 'user'), str(w.user_id) || '—');
        const st = cell(tr, 'state');
        setText(st, str(w.state) + (w.kind && w.kind !== 'oneshot' ? ' · ' + w.kind : ''));
        setAttr(st, 'data-state', w.state);
        setText(cell(tr, 'instance'), str(w.instance));
        tr._created = parseTime(w.created);
        tr._deadline = parseTime(w.deadline);
        const age = cell(tr, 'age'), dl = cell(tr, 'deadline');
        setAttr(age, 'title', tr._created === null ? null : 'created ' + fullTime(tr._created, w.created));
        setAttr(dl, 'title', tr._deadline === null ? null : fullTime(tr._deadline, w.deadline));
        updateWorkerTimes(tr);
        tr.classList.toggle('selected', !!(detail && w.request_id && detail.id === w.request_id));
      });
    setText($('#workers-count'), String(list.length));
    show($('#workers-empty'), list.length === 0);
  }

  async function cancelFrom(btn) {
    const rid = btn.getAttribute('data-request-id');
    const sid = btn.getAttribute('data-session-id');
    const isReq = rid !== null;
    const id = isReq ? rid : sid;
    if (!id) return;
    const key = (isReq ? 'request:' : 'session:') + id;
    const what = isReq ? 'request ' + id : 'session ' + id;
    cancels.set(key, { state: 'sending', at: Date.now() });
    refreshWorkerButtons();
    const r = await api((isReq ? '/requests/' : '/sessions/') + encodeURIComponent(id) + '/cancel', { method: 'POST' });
    if (r.ok) {
      cancels.set(key, { state: 'sent', at: Date.now() });
      notice('ok', 'Cancel published for ' + what + '.');
    } else if (r.status === 403) {
      cancels.set(key, { state: 'forbidden', at: Date.now() });
      notice('error', 'Cancel of ' + what + ' refused — ' + r.message + '. Cancelling needs a token with the admin role.');
    } else if (r.status === 401) {
      cancels.set(key, { state: 'failed', at: Date.now() });
      notice('error', 'Cancel of ' + what + ' refused — ' + r.message + '. Enter a valid admin token.');
    } else {
      cancels.set(key, { state: 'failed', at: Date.now() });
      notice('error', 'Cancel of ' + what + ' failed: ' + r.message);
    }
    refreshWorkerButtons();
    pollNow();
  }

  function refreshWorkerButtons() {
    if (lastWorkers) renderWorkers(lastWorkers);
  }

  // ---- pools -------------------------------------------------------------

  function renderPools(list) {
    syncRows($('#pools tbody'), list, (p) => p.preset,
      () => {
        const tr = cells(el('tr', { class: 'pool' }), ['preset', 'ready-target', 'meter']);
        cell(tr, 'meter').appendChild(el('div', { class: 'bar' }, [el('span')]));
        return tr;
      },
      (tr, p) => {
        const ready = Number(p.ready) || 0, target = Number(p.target) || 0;
        setAttr(tr, 'data-preset', p.preset);
        setAttr(tr, 'data-ready', ready);
        setAttr(tr, 'data-target', target);
        setText(cell(tr, 'preset'), str(p.preset));
        setText(cell(tr, 'ready-target'), ready + ' / ' + target);
        const pct = target > 0 ? Math.min(100, Math.round((100 * ready) / target)) : 0;
        const bar = tr.querySelector('.bar span');
        const w = pct + '%';
        if (bar.style.width !== w) bar.style.width = w;
        setAttr(tr, 'data-full', ready >= target ? 'true' : null);
      });
    setText($('#pools-count'), String(list.length));
    show($('#pools-empty'), list.length === 0);
  }

  // ---- latest requests ---------------------------------------------------

  function renderRequests(list) {
    syncRows($('#requests tbody'), list, (r) => r.request_id,
      () => {
        const tr = cells(el('tr', { class: 'request' }), ['request', 'status', 'preset', 'finished']);
        return tr;
      },
      (tr, r) => {
        const id = str(r.request_id);
        setAttr(tr, 'data-request-id', id);
        setAttr(tr, 'data-status', r.status);
        const rc = cell(tr, 'request');
        if (tr._id !== id || tr._session !== str(r.session_id)) {
          tr._id = id;
          tr._session = str(r.session_id);
          rc.replaceChildren(requestLink(id));
          if (r.session_id) rc.appendChild(el('div', { class: 'sub', text: 'session ' + r.session_id }));
        }
        const st = cell(tr, 'status');
        setText(st, str(r.status));
        setAttr(st, 'data-status', r.status);
        setText(cell(tr, 'preset'), str(r.preset));
        const fin = cell(tr, 'finished');
        const ms = parseTime(r.finished_at);
        setText(fin, ms === null ? str(r.finished_at) : dateTime(ms));
        setAttr(fin, 'title', ms === null ? null : fullTime(ms, r.finished_at));
        tr.classList.toggle('selected', !!(detail && detail.id === id));
      });
    setText($('#requests-count'), String(list.length));
    show($('#requests-empty'), list.length === 0);
  }

  // ---- polling -----------------------------------------------------------

  let pollTimer = null;
  let polling = false;
  let pollAgain = false;
  let lastWorkers = null;

  function sectionError(name, r) {
    const p = $('#' + name + '-error');
    if (r.ok) { show(p, false); return; }
    setText(p, r.message);
    show(p, true);
  }

  async function pollOnce() {
    const gen = tokenGen;
    const [w, p, r] = await Promise.all([api('/workers'), api('/pools'), api('/requests?limit=50')]);
    if (gen !== tokenGen) return 0;
    const all = [w, p, r];
    if (w.ok) { lastWorkers = listOf(w.body, 'workers'); renderWorkers(lastWorkers); }
    if (p.ok) renderPools(listOf(p.body, 'pools'));
    if (r.ok) renderRequests(listOf(r.body, 'requests'));
    sectionError('workers', w);
    sectionError('pools', p);
    sectionError('requests', r);
    const failed = all.filter((x) => !x.ok);
    setText($('#updated'), 'last poll ' + clock(Date.now()));
    if (!failed.length) {
      connState('ok', 'connected' + (getToken() ? '' : ' (no token)'));
      return POLL_MS;
    }
    const f = (s) => failed.find((x) => x.status === s);
    if (f(401)) {
      connState('auth', (getToken() ? 'token refused' : 'token needed') + ' — ' + f(401).message);
      const input = $('#token');
      if (document.activeElement !== input) input.classList.add('attention');
      return POLL_MS;
    }
    if (f(403)) { connState('forbidden', f(403).message); return POLL_MS; }
    if (f(429)) { connState('limited', f(429).message + ' — retrying in ' + Math.round(f(429).retryMs / 1000) + ' s'); return Math.max(POLL_MS, f(429).retryMs); }
    if (f(0)) { connState('down', f(0).message); return POLL_MS; }
    connState('error', failed[0].message);
    return POLL_MS;
  }

  async function pollLoop() {
    if (polling) { pollAgain = true; return; }
    polling = true;
    clearTimeout(pollTimer);
    let delay = POLL_MS;
    try {
      delay = await pollOnce();
    } catch (e) {
      connState('error', 'dashboard error: ' + (e && e.message ? e.message : e));
      if (window.console) console.error(e);
    }
    polling = false;
    if (pollAgain) { pollAgain = false; delay = 0; }
    clearTimeout(pollTimer);
    pollTimer = setTimeout(pollLoop, delay);
  }

  function pollNow() {
    clearTimeout(pollTimer);
    pollLoop();
  }

  // ---- request detail: events over SSE via fetch ---------------------------

  let detail = null;

  function sleep(ms, d) {
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      d.ctrl.signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
    });
  }

  function streamState(d, state, text) {
    if (detail !== d) return;
    $('#detail').dataset.stream = state;
    setText($('#detail-stream'), text);
  }

  function detailError(d, text) {
    if (detail !== d) return;
    const p = $('#detail-error');
    setText(p, text || '');
    show(p, !!text);
  }

  function detailState(d, state) {
    if (detail !== d || !state) return;
    const b = $('#detail-state');
    setText(b, state);
    b.dataset.state = state;
  }

  function closeDetail() {
    if (detail) {
      detail.closed = true;
      detail.ctrl.abort();
    }
    detail = null;
    const panel = $('#detail');
    show(panel, false);
    panel.dataset.requestId = '';
    panel.dataset.stream = 'idle';
    document.body.classList.remove('has-detail');
    for (const tr of document.querySelectorAll('tr.selected')) tr.classList.remove('selected');
    if (location.hash) history.replaceState(null, '', location.pathname + location.search);
  }

  function openDetail(id) {
    closeDetail();
    const d = { id: id, ctrl: new AbortController(), lastId: null, maxSeq: -Infinity, count: 0, result: null, closed: false, failures: 0 };
    detail = d;
    const panel = $('#detail');
    panel.dataset.requestId = id;
    setText($('#detail-request-id'), id);
    setText($('#detail-state'), '…');
    $('#detail-state').dataset.state = '';
    $('#detail-events tbody').replaceChildren();
    setText($('#detail-events-count'), '0');
    show($('#detail-result'), false);
    detailError(d, '');
    show(panel, true);
    document.body.classList.add('has-detail');
    for (const tr of document.querySelectorAll('tr[data-request-id]')) {
      tr.classList.toggle('selected', tr.getAttribute('data-request-id') === id);
    }
    history.replaceState(null, '', '#request=' + encodeURIComponent(id));
    loadDetailState(d);
    follow(d);
  }

  async function loadDetailState(d) {
    const r = await api('/requests/' + encodeURIComponent(d.id));
    if (detail !== d) return;
    if (r.ok && r.body) {
      if (!d.result) detailState(d, str(r.body.state));
      if (r.body.result && typeof r.body.result === 'object' && !d.result) showResult(d, r.body.result);
    } else if (r.status === 404) {
      if (!d.result && !d.count) detailState(d, 'unknown');
    }
  }

  async function follow(d) {
    const url = API + '/requests/' + encodeURIComponent(d.id) + '/events';
    while (!d.closed) {
      const h = headers({ Accept: 'text/event-stream' });
      if (d.lastId !== null) h['Last-Event-ID'] = d.lastId;
      streamState(d, 'connecting', d.lastId === null ? 'connecting…' : 'reconnecting after seq ' + d.lastId + '…');
      let resp;
      try {
        resp = await fetch(url, { headers: h, cache: 'no-store', signal: d.ctrl.signal });
      } catch (e) {
        if (d.closed) return;
        await retry(d, 'stream unreachable (' + (e && e.message ? e.message : e) + ')');
        continue;
      }
      if (!resp.ok) {
        let raw = '';
        try { raw = await resp.text(); } catch (_) { /* ignore */ }
        let body = null;
        try { body = raw ? JSON.parse(raw) : null; } catch (_) { body = null; }
        const msg = errorText(resp.status, body, raw);
        if (resp.status === 401 || resp.status === 403) {
          detailError(d, 'Events: ' + msg);
          streamState(d, 'stopped', 'stopped');
          return;
        }
        if (resp.status === 429) {
          streamState(d, 'waiting', msg);
          await sleep(retryAfterMs(resp), d);
          continue;
        }
        await retry(d, 'Events: ' + msg);
        continue;
      }
      if (!resp.body || !resp.body.getReader) {
        detailError(d, 'this browser cannot read a streamed response');
        streamState(d, 'stopped', 'stopped');
        return;
      }
      d.failures = 0;
      detailError(d, '');
      streamState(d, 'live', 'live');
      try {
        await readSse(resp.body, d);
      } catch (e) {
        if (d.closed) return;
      }
      if (d.closed) return;
      if (d.result) {
        streamState(d, 'ended', 'stream ended');
        return;
      }
      await retry(d, '');
    }
  }

  async function retry(d, message) {
    d.failures++;
    const ms = Math.min(10000, 500 * Math.pow(2, Math.min(d.failures, 5)));
    if (message) detailError(d, message);
    streamState(d, 'waiting', 'retrying in ' + Math.round(ms / 1000) + ' s');
    await sleep(ms, d);
  }

  // Server-Sent Events by hand (the WHATWG parsing rules): lines end with
  // CRLF, LF or CR; "field: value" with one optional space; ":" comments;
  // a blank line dispatches; the last event id is kept for the reconnect.
  async function readSse(body, d) {
    const reader = body.getReader();
    const decoder = new TextDecoder('utf-8');
    let buf = '';
    let ev = { type: '', data: [], id: undefined };

    const dispatch = () => {
      if (ev.id !== undefined) d.lastId = ev.id;
      if (ev.data.length) onSse(d, ev.type || 'message', ev.data.join('\n'), ev.id);
      ev = { type: '', data: [], id: undefined };
    };

    const line = (l) => {
      if (l === '') { dispatch(); return; }
      if (l.charCodeAt(0) === 58) { onComment(d, l.slice(1).trim()); return; }
      const c = l.indexOf(':');
      let field = l, value = '';
      if (c >= 0) {
        field = l.slice(0, c);
        value = l.slice(c + 1);
        if (value.charCodeAt(0) === 32) value = value.slice(1);
      }
      if (field === 'event') ev.type = value;
      else if (field === 'data') ev.data.push(value);
      else if (field === 'id') { if (value.indexOf('\u0000') < 0) ev.id = value; }
      // "retry" and unknown fields: ignored (our own back-off applies).
    };

    const drain = (final) => {
      let start = 0;
      for (let i = 0; i < buf.length; i++) {
        const ch = buf.charCodeAt(i);
        if (ch !== 10 && ch !== 13) continue;
        if (ch === 13 && i + 1 === buf.length && !final) break; // maybe CR LF split
        line(buf.slice(start, i));
        if (ch === 13 && buf.charCodeAt(i + 1) === 10) i++;
        start = i + 1;
      }
      buf = buf.slice(start);
    };

    d.ctrl.signal.addEventListener('abort', () => { reader.cancel().catch(() => {}); }, { once: true });
    for (;;) {
      const { value, done } = await reader.read();
      if (done) { buf += decoder.decode(); drain(true); break; }
      buf += decoder.decode(value, { stream: true });
      drain(false);
      if (d.closed) { reader.cancel().catch(() => {}); return; }
    }
    // an event without its blank line at the end of the stream is dropped
  }

  function onComment(d, text) {
    if (detail !== d) return;
    if (d.result) return;
    streamState(d, 'live', 'live' + (text ? ' · ' + text + ' ' + clock(Date.now()) : ''));
  }

  function onSse(d, type, data, id) {
    if (detail !== d) return;
    let obj = null;
    try { obj = JSON.parse(data); } catch (_) { obj = null; }
    if (type === 'result') {
      if (obj && typeof obj === 'object') showResult(d, obj);
      else showResult(d, { status: 'unknown', raw: data });
      return;
    }
    let seq = obj && typeof obj === 'object' && Number.isFinite(Number(obj.seq)) ? Number(obj.seq) : Number(id);
    if (Number.isFinite(seq)) {
      if (seq <= d.maxSeq) return; // already shown (a resumed stream never repeats, but be safe)
      d.maxSeq = seq;
    } else seq = null;
    const evType = obj && typeof obj === 'object' && obj.type ? String(obj.type) : type;
    appendEvent(d, seq, evType, obj, data);
    if (!d.result) {
      if (evType === 'accepted' || evType === 'started' || evType === 'container_created') detailState(d, 'running');
    }
  }

  function eventText(type, obj, raw) {
    if (!obj || typeof obj !== 'object') return raw;
    const data = obj.data;
    if (type === 'output' && data && typeof data === 'object' && 'text' in data) return str(data.text);
    if (data === undefined || data === null) return '';
    if (typeof data !== 'object') return String(data);
    try { return JSON.stringify(data); } catch (_) { return String(data); }
  }

  function appendEvent(d, seq, type, obj, raw) {
    const tbody = $('#detail-events tbody');
    const box = tbody.closest('.events-box');
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 24;
    const tsMs = obj && obj.ts ? parseTime(obj.ts) : null;
    const stream = obj && obj.data && typeof obj.data === 'object' && type === 'output' ? str(obj.data.stream) : '';
    const text = eventText(type, obj, raw);
    const tr = el('tr', { class: 'event', 'data-seq': seq === null ? null : seq, 'data-type': type, 'data-stream': stream || null }, [
      el('td', { class: 'seq', text: seq === null ? '' : String(seq) }),
      el('td', { class: 'ts', text: tsMs === null ? '' : clockMs(tsMs), title: tsMs === null ? null : fullTime(tsMs, obj.ts) }),
      el('td', { class: 'type', text: type }),
      el('td', { class: 'text' }, stream && stream !== 'stdout' ? [el('span', { class: 'tag', text: stream }), text] : [text]),
    ]);
    tbody.appendChild(tr);
    d.count++;
    while (tbody.children.length > MAX_EVENT_ROWS) tbody.firstElementChild.remove();
    setText($('#detail-events-count'), String(d.count));
    if (atBottom) box.scrollTop = box.scrollHeight;
  }

  function showResult(d, result) {
    if (detail !== d) return;
    d.result = result;
    const status = str(result.status) || 'unknown';
    detailState(d, status);
    const box = $('#detail-result');
    box.dataset.status = status;
    const st = box.querySelector('.result-status');
    setText(st, status);
    st.dataset.status = status;
    const bits = [];
    if (result.exit_code !== undefined && result.exit_code !== null) bits.push('exit ' + result.exit_code);
    if (result.oom_killed) bits.push('OOM killed');
    const t = result.timings && typeof result.timings === 'object' ? result.timings : {};
    if (t.run_ms !== null && t.run_ms !== undefined && Number.isFinite(Number(t.run_ms))) {
      const ms = Number(t.run_ms);
      bits.push('ran ' + (ms < 1000 ? Math.round(ms) + ' ms' : (ms / 1000).toFixed(1) + ' s'));
    }
    if (result.attempt) bits.push('attempt ' + result.attempt);
    if (result.worker && result.worker.instance) bits.push('on ' + result.worker.instance);
    const fin = parseTime(t.finished_at);
    if (fin !== null) bits.push('finished ' + dateTime(fin));
    setText(box.querySelector('.result-summary'), bits.join(' · '));
    const errP = box.querySelector('.result-error');
    const e = result.error;
    let errText = '';
    if (e && typeof e === 'object') errText = [e.code, e.field ? '(' + e.field + ')' : '', e.message].filter(Boolean).join(' ');
    else if (e) errText = String(e);
    setText(errP, errText);
    show(errP, !!errText);
    const out = typeof result.output === 'string' ? result.output : '';
    setText(box.querySelector('.result-output'), out + (result.output_truncated ? '\n[output truncated]' : ''));
    const outBox = $('#detail-output-box');
    show(outBox, !!out);
    if (out) outBox.open = true;
    let json = '';
    try { json = JSON.stringify(result, null, 2); } catch (_) { json = String(result); }
    setText(box.querySelector('.result-json'), json);
    show(box, true);
  }

  // ---- wiring ------------------------------------------------------------

  function start() {
    const input = $('#token');
    input.value = getToken();
    $('#token-form').addEventListener('submit', (e) => {
      e.preventDefault();
      setToken(input.value.trim());
      input.classList.remove('attention');
      cancels.clear();
      connState('idle', 'connecting…');
      pollNow();
      if (detail) openDetail(detail.id);
    });
    $('#token-forget').addEventListener('click', () => {
      setToken(null);
      input.value = '';
      cancels.clear();
      connState('idle', 'connecting…');
      pollNow();
      if (detail) openDetail(detail.id);
    });
    input.addEventListener('input', () => input.classList.remove('attention'));
    $('#notice-close').addEventListener('click', () => show($('#notice'), false));
    $('#detail-close').addEventListener('click', () => closeDetail());
    $('#open-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const id = $('#open-id').value.trim();
      if (id) openDetail(id);
    });
    document.addEventListener('click', (e) => {
      const target = e.target instanceof Element ? e.target : null;
      if (!target) return;
      const cancelBtn = target.closest('button.cancel');
      if (cancelBtn) { if (!cancelBtn.disabled) cancelFrom(cancelBtn); return; }
      const link = target.closest('.request-link');
      if (link) openDetail(link.getAttribute('data-request-id'));
    });
    setInterval(() => {
      for (const tr of document.querySelectorAll('#workers tbody tr')) updateWorkerTimes(tr);
    }, 1000);
    const m = /^#request=(.+)$/.exec(location.hash);
    if (m) {
      let id = null;
      try { id = decodeURIComponent(m[1]); } catch (_) { id = null; }
      if (id) openDetail(id);
    }
    pollNow();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
