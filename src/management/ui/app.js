// Warren's management UI: a single page over the management HTTP API (/api), organised as
// RabbitMQ's UI is. Plain JavaScript, no framework and no build step, so that the binary embeds
// it as it is and nothing is fetched from the network.
'use strict';

const REFRESH_KEY = 'warren.refresh';
const AUTH_KEY = 'warren.auth';
const VHOST_KEY = 'warren.vhost';
const PAGE_SIZES = [20, 50, 100, 500];
const COLOURS = ['#b4532a', '#2d6cb5', '#3c9a4a', '#8e44ad', '#c19a00', '#16a2a2', '#d0508a', '#6b6b6b', '#7a5230', '#4b4bd0', '#a02020'];

const state = {
  auth: sessionStorage.getItem(AUTH_KEY),
  user: null,
  vhost: sessionStorage.getItem(VHOST_KEY) || '',
  refreshMs: Number(localStorage.getItem(REFRESH_KEY) || 5000),
  timer: null,
  page: null,
  busy: false,
  overview: null,
};

// ---------------------------------------------------------------------------------------------
// DOM and formatting helpers

/** Makes an element: h('td', {class: 'num', dataset: {col: 'x'}}, 'text', child...). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, v);
  }
  append(el, children);
  return el;
}

function append(el, ...children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function $(sel, root) { return (root || document).querySelector(sel); }

function clear(el, ...children) { el.replaceChildren(); return append(el, children); }

// Made once: a formatter costs far more to make than to use, and a page formats thousands.
const WHOLE = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });
const ONE_DECIMAL = new Intl.NumberFormat('en-US', { minimumFractionDigits: 1, maximumFractionDigits: 1 });

function fmtNum(n) {
  if (n === undefined || n === null || Number.isNaN(n)) return '';
  return WHOLE.format(Number(n));
}

function fmtRate(r) {
  if (r === undefined || r === null) return '';
  const v = Number(r);
  return (v > 0 && v < 10 ? ONE_DECIMAL : WHOLE).format(v) + '/s';
}

function fmtBytes(b) {
  if (b === undefined || b === null) return '';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = Number(b);
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return (i === 0 ? v : v.toFixed(v < 10 ? 1 : 0)) + ' ' + units[i];
}

function fmtDuration(seconds) {
  let s = Math.floor(seconds);
  const d = Math.floor(s / 86400); s -= d * 86400;
  const hr = Math.floor(s / 3600); s -= hr * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  if (d) return `${d}d ${hr}h`;
  if (hr) return `${hr}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

const CLOCK = new Intl.DateTimeFormat('en-GB', { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });

function fmtTime(ms) {
  return CLOCK.format(new Date(ms));
}

function fmtValue(v) {
  if (v === undefined || v === null) return '';
  if (typeof v === 'object') return JSON.stringify(v);
  return String(v);
}

/** The value at a dotted path of an object. */
function at(obj, path) {
  return path.split('.').reduce((o, k) => (o === undefined || o === null ? undefined : o[k]), obj);
}

function enc(s) { return encodeURIComponent(s); }

/** A link to an object's page. */
function queueLink(vhost, name) { return h('a', { href: `#/queues/${enc(vhost)}/${enc(name)}` }, name); }
function exchangeLink(vhost, name) {
  return h('a', { href: `#/exchanges/${enc(vhost)}/${enc(name || 'amq.default')}` }, name || '(AMQP default)');
}

function tags(list) {
  return (list || []).map((t) => h('span', { class: 'tag' }, t));
}

/** The features column RabbitMQ shows: D, AD, I, Excl, and the arguments' short names. */
function features(o) {
  const out = [];
  if (o.durable) out.push(h('span', { class: 'tag on', title: 'durable' }, 'D'));
  if (o.auto_delete) out.push(h('span', { class: 'tag on', title: 'auto-delete' }, 'AD'));
  if (o.internal) out.push(h('span', { class: 'tag on', title: 'internal' }, 'I'));
  if (o.exclusive) out.push(h('span', { class: 'tag on', title: 'exclusive' }, 'Excl'));
  for (const [k, v] of Object.entries(o.arguments || {})) {
    out.push(h('span', { class: 'tag', title: `${k}: ${fmtValue(v)}` }, k.replace(/^x-/, '')));
  }
  if (o.policy) out.push(h('span', { class: 'tag', title: 'policy' }, o.policy));
  return out;
}

// ---------------------------------------------------------------------------------------------
// The API

/** A failed request: status 0 when the broker could not be reached at all. */
class ApiError extends Error {
  constructor(status, reason) {
    super(reason);
    this.status = status;
  }
}

async function api(method, path, body, extraHeaders) {
  const headers = Object.assign({ 'X-Requested-With': 'XMLHttpRequest' }, extraHeaders || {});
  if (state.auth) headers.Authorization = state.auth;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch('api' + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, `Cannot reach the broker at ${location.host}: it may be down or restarting.`);
  }
  const text = await res.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch (e) { json = null; }
  if (!res.ok) {
    const reason = (json && (json.reason || json.error)) || `${res.status} ${res.statusText}`;
    throw new ApiError(res.status, typeof reason === 'string' ? reason : JSON.stringify(reason));
  }
  return json;
}

const get = (path) => api('GET', path);

/** The query string of an object of parameters, leaving out empty ones. */
function query(params) {
  const parts = Object.entries(params)
    .filter(([, v]) => v !== undefined && v !== null && v !== '')
    .map(([k, v]) => `${k}=${enc(v)}`);
  return parts.length ? '?' + parts.join('&') : '';
}

function vhostPath(base) {
  return state.vhost ? `${base}/${enc(state.vhost)}` : base;
}

// ---------------------------------------------------------------------------------------------
// Status banner

function showStatus(text, info) {
  const el = $('#status');
  el.textContent = text;
  el.classList.toggle('info', !!info);
  el.hidden = !text;
}

/** Reports a failed refresh: an expired login goes back to the login form, the rest is shown. */
function reportError(e) {
  if (e.status === 401 && /login failed/i.test(e.message)) {
    logout('Your login is no longer accepted. Log in again.');
    return;
  }
  if (e.status === 401) {
    showStatus(`Permission refused: ${e.message}. The user ${state.user ? state.user.name : ''} may not see this page.`);
  } else if (e.status === 0) {
    const since = state.updated ? ` The figures shown are from ${fmtTime(state.updated)}.` : '';
    showStatus(`${e.message} Retrying every ${Math.round((state.refreshMs || 5000) / 1000)} s.${since}`);
  } else {
    showStatus(`${e.status}: ${e.message}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Login

function b64(s) {
  const bytes = new TextEncoder().encode(s);
  let bin = '';
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin);
}

async function login(event) {
  event.preventDefault();
  const user = $('#login-username').value;
  const pass = $('#login-password').value;
  state.auth = 'Basic ' + b64(`${user}:${pass}`);
  $('#login-error').textContent = '';
  try {
    await start();
    sessionStorage.setItem(AUTH_KEY, state.auth);
  } catch (e) {
    state.auth = null;
    $('#login-error').textContent = e.status === 401
      ? (/login failed/i.test(e.message) ? 'Login failed: wrong user name or password.' : `Login refused: ${e.message}.`)
      : e.message;
  }
}

function logout(message) {
  state.auth = null;
  state.user = null;
  sessionStorage.removeItem(AUTH_KEY);
  stopTimer();
  $('#app').hidden = true;
  $('#login-view').hidden = false;
  $('#login-password').value = '';
  $('#login-error').textContent = message || '';
  showStatus('');
}

/** Checks the credentials, then shows the app. */
async function start() {
  const me = await get('/whoami');
  state.user = me;
  [state.overview] = await Promise.all([get('/overview'), loadVhosts()]);
  $('#user').textContent = me.name;
  $('#cluster').textContent = state.overview.cluster_name ? `Cluster ${state.overview.cluster_name}` : '';
  $('#version').textContent = `${state.overview.product_name || 'Warren'} ${state.overview.product_version || ''}`;
  const t = me.tags || [];
  const tagList = Array.isArray(t) ? t : String(t).split(',');
  state.isAdmin = tagList.includes('administrator');
  state.isPolicymaker = state.isAdmin || tagList.includes('policymaker');
  state.isMonitor = state.isAdmin || tagList.includes('monitoring');
  $('#admin-tab').hidden = !state.isPolicymaker;
  $('#admin-tab').href = state.isAdmin ? '#/admin/users' : '#/admin/policies';
  $('#login-view').hidden = true;
  $('#app').hidden = false;
  route();
}

async function loadVhosts() {
  const sel = $('#vhost');
  try {
    const vhosts = await get('/vhosts?columns=name');
    state.vhosts = vhosts.map((v) => v.name);
  } catch (e) {
    state.vhosts = [];
  }
  clear(sel, h('option', { value: '' }, 'All'), state.vhosts.map((v) => h('option', { value: v }, v)));
  if (!state.vhosts.includes(state.vhost)) state.vhost = '';
  sel.value = state.vhost;
}

// ---------------------------------------------------------------------------------------------
// Routing and refresh

const ROUTES = [
  [/^$/, () => overviewPage()],
  [/^connections$/, () => connectionsPage()],
  [/^connections\/([^/]+)$/, (m) => connectionPage(m[1])],
  [/^channels$/, () => channelsPage()],
  [/^exchanges$/, () => exchangesPage()],
  [/^exchanges\/([^/]+)\/([^/]+)$/, (m) => exchangePage(m[1], m[2])],
  [/^queues$/, () => queuesPage()],
  [/^queues\/([^/]+)\/([^/]+)$/, (m) => queuePage(m[1], m[2])],
  [/^admin$/, () => usersPage()],
  [/^admin\/users$/, () => usersPage()],
  [/^admin\/vhosts$/, () => vhostsPage()],
  [/^admin\/policies$/, () => policiesPage()],
  [/^admin\/limits$/, () => limitsPage()],
];

function route() {
  if (!state.user) return;
  const path = location.hash.replace(/^#\/?/, '');
  let page = null;
  for (const [re, make] of ROUTES) {
    const m = path.match(re);
    if (m) {
      page = make(m.map((part, i) => (i === 0 ? part : decodeURIComponent(part))));
      break;
    }
  }
  if (!page) page = notFoundPage(path);
  show(page);
}

function show(page) {
  stopTimer();
  showStatus('');
  state.page = page;
  const main = $('#main');
  main.dataset.page = page.name;
  document.title = `${page.title} - Warren`;
  for (const a of document.querySelectorAll('#tabs a')) a.classList.toggle('active', a.dataset.tab === page.tab);
  clear(main);
  page.render(main);
  refresh();
  startTimer();
}

async function refresh() {
  const page = state.page;
  if (!page || !page.refresh || state.busy) return;
  state.busy = true;
  try {
    await page.refresh();
    if (state.page === page) {
      state.updated = Date.now();
      $('#updated').textContent = `Updated ${fmtTime(state.updated)}`;
      if (!$('#status').classList.contains('info')) showStatus('');
    }
  } catch (e) {
    if (state.page === page) reportError(e);
  } finally {
    state.busy = false;
  }
}

function startTimer() {
  stopTimer();
  if (state.refreshMs > 0) state.timer = setInterval(refresh, state.refreshMs);
}

function stopTimer() {
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
}

/** A page: what it is called, its tab, how it draws its frame and how it refreshes. */
function page(name, tab, title, render, refreshFn) {
  return { name, tab, title, render, refresh: refreshFn };
}

function notFoundPage(path) {
  return page('not-found', '', 'Not found', (main) => {
    append(main, h('h1', {}, 'Not found'), h('p', {}, `There is no page at #/${path}. `, h('a', { href: '#/' }, 'Go to the overview.')));
  });
}

// ---------------------------------------------------------------------------------------------
// Boxes, figures, key-value tables

function box(title, attrs, ...body) {
  const head = h('div', { class: 'head' }, h('h2', {}, title));
  const inner = h('div', { class: 'body' }, ...body);
  return h('section', Object.assign({ class: 'box' }, attrs || {}), head, inner);
}

function figure(id, label, value, alarm) {
  return h('div', { class: 'figure' + (alarm ? ' alarm' : '') },
    h('div', { class: 'value', id }, value), h('div', { class: 'label' }, label));
}

function kvTable(rows) {
  return h('table', { class: 'kv' }, h('tbody', {}, rows.filter(Boolean).map(([k, v]) => h('tr', {}, h('th', {}, k), h('td', {}, v)))));
}

// ---------------------------------------------------------------------------------------------
// Charts: SVG lines drawn from the API's samples

/** Points [time, value] of a level (queue length) from its samples, oldest first. */
function levelPoints(details) {
  return ((details && details.samples) || []).map((s) => [s.timestamp, s.sample]).reverse();
}

/** Points [time, rate per second] of a counter from its samples, oldest first. */
function ratePoints(details) {
  const s = levelPoints(details);
  const out = [];
  for (let i = 1; i < s.length; i += 1) {
    const dt = (s[i][0] - s[i - 1][0]) / 1000;
    if (dt > 0) out.push([s[i][0], Math.max(0, (s[i][1] - s[i - 1][1]) / dt)]);
  }
  return out;
}

/** A round step for four grid lines over `v` (at least 0 to 4); whole steps for counts. */
function niceStep(v, whole) {
  const raw = Math.max(v, 4) / 4;
  const p = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw);
  return whole ? Math.round(step) : step;
}

/**
 * Draws series [{label, points, current}] into `el`: a line chart and a legend with the latest
 * value. `format` formats values; with no points at all the chart says so.
 */
function drawChart(el, series, format) {
  const W = 560;
  const H = 170;
  const L = 48;
  const B = 18;
  const all = series.flatMap((s) => s.points);
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.setAttribute('role', 'img');
  const add = (tag, attrs, text) => {
    const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.append(e);
    return e;
  };
  const legend = h('div', { class: 'legend' });
  if (all.length === 0) {
    add('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle', class: 'axis' }, 'No samples yet: figures are sampled every 5 seconds.');
  } else {
    const t0 = Math.min(...all.map((p) => p[0]));
    const t1 = Math.max(...all.map((p) => p[0]), t0 + 1);
    const max = 4 * niceStep(Math.max(...all.map((p) => p[1])), format === fmtNum);
    const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - 6);
    const y = (v) => 6 + (1 - v / max) * (H - B - 6);
    for (let i = 0; i <= 4; i += 1) {
      const v = (max * i) / 4;
      add('line', { x1: L, x2: W - 6, y1: y(v), y2: y(v), class: 'grid' });
      add('text', { x: L - 4, y: y(v) + 3, 'text-anchor': 'end', class: 'axis' }, format(v));
    }
    add('text', { x: L, y: H - 4, class: 'axis' }, fmtTime(t0));
    add('text', { x: W - 6, y: H - 4, 'text-anchor': 'end', class: 'axis' }, fmtTime(t1));
    series.forEach((s, i) => {
      if (!s.points.length) return;
      const d = s.points.map((p, j) => `${j ? 'L' : 'M'}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join('');
      add('path', { d, stroke: COLOURS[i % COLOURS.length] });
    });
  }
  series.forEach((s, i) => {
    append(legend, h('span', {}, h('span', { class: 'swatch', style: `background:${COLOURS[i % COLOURS.length]}` }), s.label),
      h('span', { class: 'v' }, format(s.current)));
  });
  clear(el, svg, legend);
}

const QUEUED_SERIES = [['messages_ready', 'Ready'], ['messages_unacknowledged', 'Unacked'], ['messages', 'Total']];
const RATE_SERIES = [
  ['publish', 'Publish'], ['confirm', 'Publisher confirm'], ['deliver', 'Deliver (manual ack)'],
  ['deliver_no_ack', 'Deliver (auto ack)'], ['ack', 'Consumer ack'], ['redeliver', 'Redelivered'],
  ['get', 'Get (manual ack)'], ['get_no_ack', 'Get (auto ack)'], ['get_empty', 'Get (empty)'],
  ['return_unroutable', 'Unroutable (return)'], ['drop_unroutable', 'Unroutable (drop)'],
];

function drawQueued(el, levels) {
  drawChart(el, QUEUED_SERIES.map(([k, label]) => ({
    label, points: levelPoints(levels[`${k}_details`]), current: levels[k] || 0,
  })), fmtNum);
}

function drawRates(el, stats, keys) {
  const s = stats || {};
  const shown = RATE_SERIES.filter(([k]) => (keys || []).includes(k) || s[k] !== undefined);
  drawChart(el, shown.map(([k, label]) => {
    const d = s[`${k}_details`];
    return { label, points: ratePoints(d), current: d ? d.rate : 0 };
  }), fmtRate);
}

function chartBox(id, title) {
  return box(title, { id }, h('div', { class: 'chart' }));
}

/** The sample window the charts ask for, as query parameters. */
function chartQuery(age, incr) {
  return { lengths_age: age, lengths_incr: incr, msg_rates_age: age, msg_rates_incr: incr, data_rates_age: age, data_rates_incr: incr };
}

// ---------------------------------------------------------------------------------------------
// Lists: sortable, filterable tables paged by the server

/**
 * A listing of `path()` with columns [{key, label, sort, num, cell(item)}]. Paged lists ask the
 * server for one page (filter, sort and page size travel as RabbitMQ's query parameters), so a
 * broker with 10,000 queues sends one page; the others (small admin lists) are filtered here.
 */
function listing(opts) {
  const l = {
    opts,
    page: 1,
    pageSize: Number(localStorage.getItem(`warren.pageSize.${opts.name}`) || 100),
    sort: opts.sort || '',
    reverse: !!opts.reverse,
    filter: '',
    regex: false,
  };
  const filter = h('input', { class: 'filter', type: 'search', placeholder: 'Filter by name', 'aria-label': 'Filter' });
  const regex = h('input', { type: 'checkbox' });
  const sizes = h('select', { 'aria-label': 'Page size' }, PAGE_SIZES.map((n) => h('option', { value: n }, `${n} per page`)));
  sizes.value = String(l.pageSize);
  const count = h('span', { class: 'muted count' });
  const thead = h('tr', {}, opts.columns.map((c) => {
    const th = h('th', { class: c.num ? 'num' : '', dataset: c.sort ? { sort: c.sort } : {} }, c.label);
    if (c.sort) {
      th.addEventListener('click', () => {
        if (l.sort === c.sort) l.reverse = !l.reverse;
        else { l.sort = c.sort; l.reverse = !!c.num; }
        l.page = 1;
        l.reload();
      });
    }
    return th;
  }));
  const tbody = h('tbody', {}, h('tr', {}, h('td', { class: 'empty', colspan: opts.columns.length }, 'Loading…')));
  const table = h('table', { class: 'list', dataset: { list: opts.name } }, h('thead', {}, thead), tbody);
  const prev = h('button', { type: 'button', class: 'plain small' }, '‹ Previous');
  const next = h('button', { type: 'button', class: 'plain small' }, 'Next ›');
  const info = h('span', { class: 'info' });
  const pager = h('div', { class: 'pager' }, prev, info, next);
  let typing = null;
  filter.addEventListener('input', () => {
    clearTimeout(typing);
    typing = setTimeout(() => { l.filter = filter.value; l.page = 1; l.reload(); }, 250);
  });
  regex.addEventListener('change', () => { l.regex = regex.checked; l.page = 1; l.reload(); });
  sizes.addEventListener('change', () => {
    l.pageSize = Number(sizes.value);
    localStorage.setItem(`warren.pageSize.${opts.name}`, sizes.value);
    l.page = 1;
    l.reload();
  });
  prev.addEventListener('click', () => { l.page = Math.max(1, l.page - 1); l.reload(); });
  next.addEventListener('click', () => { l.page += 1; l.reload(); });

  const controls = h('div', { class: 'controls' }, filter,
    opts.paged ? h('label', { class: 'muted' }, regex, ' Regex') : null,
    opts.paged ? sizes : null, count);
  l.element = box(opts.title, { dataset: { listSection: opts.name } }, controls, table, pager);
  l.element.querySelector('.head').append(...(opts.actions || []));

  l.reload = () => { l.load().catch(reportError); };
  l.load = async () => {
    let items;
    let total;
    let filtered;
    let pages = 1;
    if (opts.paged) {
      const params = Object.assign({
        page: l.page, page_size: l.pageSize, name: l.filter, use_regex: l.regex ? 'true' : '',
        sort: l.sort, sort_reverse: l.sort ? String(l.reverse) : '', columns: opts.columns.length && opts.fields ? opts.fields.join(',') : '',
      }, opts.params || {});
      let res = await get(opts.path() + query(params));
      if (res.page_count > 0 && l.page > res.page_count) {
        l.page = res.page_count;
        params.page = l.page;
        res = await get(opts.path() + query(params));
      }
      items = res.items;
      total = res.total_count;
      filtered = res.filtered_count;
      pages = Math.max(1, res.page_count);
    } else {
      const all = await get(opts.path());
      total = all.length;
      const f = l.filter.toLowerCase();
      items = all.filter((i) => !f || JSON.stringify(opts.key ? opts.key(i) : i.name).toLowerCase().includes(f));
      if (l.sort) {
        items.sort((a, b) => {
          const x = at(a, l.sort);
          const y = at(b, l.sort);
          const c = typeof x === 'number' && typeof y === 'number' ? x - y : String(x ?? '').localeCompare(String(y ?? ''));
          return l.reverse ? -c : c;
        });
      }
      filtered = items.length;
    }
    for (const th of thead.children) {
      th.classList.toggle('sorted', !!l.sort && th.dataset.sort === l.sort);
      th.classList.toggle('reverse', !!l.sort && th.dataset.sort === l.sort && l.reverse);
    }
    count.textContent = filtered === total ? `${fmtNum(total)} in all` : `${fmtNum(filtered)} of ${fmtNum(total)} match`;
    if (!items.length) {
      const what = opts.noun || opts.name;
      const text = total === 0 ? (opts.empty || `No ${what} yet.`) : `No ${what} match the filter.`;
      clear(tbody, h('tr', {}, h('td', { class: 'empty', colspan: opts.columns.length }, text)));
    } else {
      clear(tbody, items.map((item) => h('tr', {
        dataset: { name: opts.rowName ? opts.rowName(item) : item.name, vhost: item.vhost ?? '' },
      }, opts.columns.map((c) => h('td', { class: c.num ? 'num' : '', dataset: { col: c.key } }, c.cell(item))))));
    }
    // For benches/web_ui.py: when a list was first drawn, in the page's own clock.
    performance.mark(`warren:list:${opts.name}`);
    pager.hidden = !opts.paged;
    info.textContent = `Page ${l.page} of ${pages}`;
    prev.disabled = l.page <= 1;
    next.disabled = l.page >= pages;
  };
  return l;
}

/** A column of a figure at `path`: a number, a rate or bytes. */
function col(key, label, path, format, sort) {
  const p = path || key;
  return { key, label, num: true, sort: sort === false ? undefined : p, cell: (i) => (format || fmtNum)(at(i, p)) };
}

function rateCol(key, label, stat) {
  return { key, label, num: true, cell: (i) => fmtRate(at(i, `message_stats.${stat}_details.rate`) || 0) };
}

function textCol(key, label, cell, sort) {
  return { key, label, sort: sort === undefined ? key : sort, cell: cell || ((i) => fmtValue(at(i, key))) };
}

function stateCol() {
  return textCol('state', 'State', (o) => h('span', { class: `state-${o.state}` }, o.state || ''));
}

function vhostCol() {
  return textCol('vhost', 'Virtual host');
}

// ---------------------------------------------------------------------------------------------
// Forms

/** A labelled form row. */
function field(label, input, hint) {
  return [h('label', {}, label), h('div', {}, input, hint ? h('div', { class: 'hint' }, hint) : null)];
}

function input(name, attrs) { return h('input', Object.assign({ name }, attrs || {})); }

function select(name, options, value) {
  const s = h('select', { name }, options.map((o) => (Array.isArray(o) ? h('option', { value: o[0] }, o[1]) : h('option', { value: o }, o))));
  if (value !== undefined) s.value = value;
  return s;
}

function vhostSelect(name) {
  return select(name || 'vhost', state.vhosts || ['/'], state.vhost || (state.vhosts || ['/'])[0]);
}

/**
 * A form whose submit runs `action(values)`; its `.result` shows what the action returned, or
 * the error. The action's text is the success message.
 */
function form(id, rows, submit, action, attrs) {
  const result = h('p', { class: 'result', role: 'status' });
  const button = h('button', { type: 'submit' }, submit);
  const f = h('form', Object.assign({ id, class: 'form' }, attrs || {}), ...rows.flat(), h('div', { class: 'actions' }, button), result);
  f.addEventListener('submit', async (event) => {
    event.preventDefault();
    const values = {};
    for (const el of f.elements) {
      if (!el.name) continue;
      values[el.name] = el.type === 'checkbox' ? el.checked : el.type === 'file' ? el.files : el.value;
    }
    result.classList.remove('error');
    result.textContent = '';
    button.disabled = true;
    try {
      result.textContent = await action(values, f) || 'Done.';
      refresh();
    } catch (e) {
      result.classList.add('error');
      result.textContent = e.status === 0 ? e.message : `${e.status ? e.status + ': ' : ''}${e.message}`;
    } finally {
      button.disabled = false;
    }
  });
  return f;
}

/** A collapsible form, closed until asked for, as RabbitMQ's "Add a new queue". */
function formBox(title, f, open) {
  return h('details', { class: 'box', open: !!open }, h('summary', {}, title), f);
}

/**
 * Arguments typed as `key = value`, one per line: whole numbers become numbers, true and false
 * booleans, JSON objects and lists stay JSON, anything else a string.
 */
function parseArgs(text) {
  const out = {};
  for (const line of String(text || '').split('\n')) {
    if (!line.trim()) continue;
    const i = line.indexOf('=');
    if (i < 1) throw new ApiError(400, `"${line.trim()}" is not key = value`);
    const k = line.slice(0, i).trim();
    const raw = line.slice(i + 1).trim();
    let v = raw;
    if (/^-?\d+$/.test(raw)) v = Number(raw);
    else if (raw === 'true' || raw === 'false') v = raw === 'true';
    else if (/^[[{]/.test(raw)) {
      try { v = JSON.parse(raw); } catch (e) { v = raw; }
    }
    out[k] = v;
  }
  return out;
}

const ARGS_HINT = 'One per line, key = value; numbers and true/false are typed.';

/** A button that asks first, then runs `action`. */
function confirmButton(label, question, action, attrs) {
  return h('button', Object.assign({ type: 'button', class: 'danger small', onclick: async (ev) => {
    if (!window.confirm(question)) return;
    ev.target.disabled = true;
    try {
      await action();
    } catch (e) {
      reportError(e);
    } finally {
      ev.target.disabled = false;
    }
  } }, attrs || {}), label);
}

// ---------------------------------------------------------------------------------------------
// Overview

function overviewPage() {
  let range = 60;
  const charts = {};
  return page('overview', 'overview', 'Overview', (main) => {
    const rangeSel = h('select', { 'aria-label': 'Chart range' },
      h('option', { value: 60 }, 'last minute'), h('option', { value: 600 }, 'last ten minutes'));
    rangeSel.addEventListener('change', () => { range = Number(rangeSel.value); refresh(); });
    charts.queued = chartBox('chart-queued', 'Queued messages');
    charts.rates = chartBox('chart-rates', 'Message rates');
    append(main,
      h('h1', {}, 'Overview ', h('small', {}, 'charts: ', rangeSel)),
      h('div', { id: 'alarms' }),
      h('div', { class: 'grid2' }, charts.queued, charts.rates),
      box('Totals', {}, h('div', { class: 'figures', id: 'totals' })),
      box('Node', {}, h('div', { id: 'node' })),
      box('Listeners', {}, h('div', { id: 'listeners' })),
      definitionsBox());
  }, async () => {
    const incr = range === 60 ? 5 : 30;
    // Node figures are for monitors and administrators, as in RabbitMQ.
    const [o, nodes] = await Promise.all([get('/overview' + query(chartQuery(range, incr))),
      state.isMonitor ? get('/nodes') : Promise.resolve(null)]);
    drawQueued($('.chart', charts.queued), o.queue_totals || {});
    drawRates($('.chart', charts.rates), o.message_stats, ['publish', 'deliver', 'ack']);
    const t = o.object_totals || {};
    clear($('#totals'),
      figure('total-connections', 'Connections', fmtNum(t.connections)),
      figure('total-channels', 'Channels', fmtNum(t.channels)),
      figure('total-exchanges', 'Exchanges', fmtNum(t.exchanges)),
      figure('total-queues', 'Queues', fmtNum(t.queues)),
      figure('total-consumers', 'Consumers', fmtNum(t.consumers)),
      figure('total-messages', 'Messages', fmtNum((o.queue_totals || {}).messages || 0)));
    if (!nodes) {
      clear($('#node'), h('p', { class: 'muted' }, 'Node figures need the monitoring or administrator tag.'));
    }
    const n = (nodes || [])[0] || {};
    const alarms = [];
    if (n.mem_alarm) alarms.push(`Memory alarm: ${fmtBytes(n.mem_used)} used, the high watermark is ${fmtBytes(n.mem_limit)}. Publishers are blocked.`);
    if (n.disk_free_alarm) alarms.push(`Disk alarm: ${fmtBytes(n.disk_free)} free, the limit is ${fmtBytes(n.disk_free_limit)}. Publishers are blocked.`);
    clear($('#alarms'), alarms.map((a) => h('p', { class: 'figure alarm', role: 'alert' }, a)));
    if (nodes) clear($('#node'), h('table', { class: 'list', dataset: { list: 'nodes' } },
      h('thead', {}, h('tr', {}, ['Name', 'Memory', 'Disk free', 'File descriptors', 'Uptime', 'Alarms'].map((c) => h('th', {}, c)))),
      h('tbody', {}, nodes.map((node) => h('tr', { dataset: { name: node.name } },
        h('td', {}, node.name),
        h('td', { dataset: { col: 'memory' } }, `${fmtBytes(node.mem_used)} of ${fmtBytes(node.mem_limit)} high watermark`),
        h('td', { dataset: { col: 'disk' } }, node.disk_free === undefined ? 'unknown' : `${fmtBytes(node.disk_free)} (limit ${fmtBytes(node.disk_free_limit)})`),
        h('td', {}, node.fd_used === undefined ? '' : `${fmtNum(node.fd_used)} of ${fmtNum(node.fd_total)}`),
        h('td', {}, node.uptime === undefined ? '' : fmtDuration(node.uptime / 1000)),
        h('td', { class: node.mem_alarm || node.disk_free_alarm ? 'error' : 'state-ok' },
          [node.mem_alarm ? 'memory' : '', node.disk_free_alarm ? 'disk' : ''].filter(Boolean).join(', ') || 'none'))))));
    clear($('#listeners'), h('table', { class: 'list', dataset: { list: 'listeners' } },
      h('thead', {}, h('tr', {}, ['Protocol', 'Bound to', 'Port'].map((c) => h('th', {}, c)))),
      h('tbody', {}, (o.listeners || []).map((l) => h('tr', { dataset: { name: l.protocol } },
        h('td', {}, l.protocol), h('td', {}, l.ip_address), h('td', { dataset: { col: 'port' } }, String(l.port)))))));
  });
}

/** Export and import of definitions, on the overview as in RabbitMQ's UI. */
function definitionsBox() {
  const exportForm = form('export-definitions', [
    field('Virtual host', select('vhost', [['', 'All']].concat((state.vhosts || []).map((v) => [v, v])), '')),
  ], 'Download broker definitions', async (v) => {
    const defs = await get(v.vhost ? `/definitions/${enc(v.vhost)}` : '/definitions');
    const blob = new Blob([JSON.stringify(defs, null, 2)], { type: 'application/json' });
    const a = h('a', { href: URL.createObjectURL(blob), download: `warren-definitions${v.vhost ? '-' + v.vhost.replace(/[^\w.-]/g, '_') : ''}.json` });
    document.body.append(a);
    a.click();
    a.remove();
    return 'Definitions downloaded.';
  });
  const importForm = form('import-definitions', [
    field('Definitions file', h('input', { type: 'file', name: 'file', accept: '.json,application/json', required: true }),
      'A JSON file exported from Warren or RabbitMQ.'),
    field('Virtual host', select('vhost', [['', 'All']].concat((state.vhosts || []).map((v) => [v, v])), '')),
  ], 'Upload broker definitions', async (v) => {
    const file = v.file && v.file[0];
    if (!file) throw new ApiError(400, 'Choose a file first');
    let defs;
    try { defs = JSON.parse(await file.text()); } catch (e) { throw new ApiError(400, `${file.name} is not JSON: ${e.message}`); }
    await api('POST', v.vhost ? `/definitions/${enc(v.vhost)}` : '/definitions', defs);
    await loadVhosts();
    return 'Your definitions were imported successfully.';
  });
  return box('Export and import definitions', { id: 'definitions' },
    h('div', { class: 'grid2' }, exportForm, importForm));
}

// ---------------------------------------------------------------------------------------------
// Connections and channels

const CONNECTION_COLUMNS = [
  textCol('name', 'Name', (c) => h('a', { href: `#/connections/${enc(c.name)}` }, c.name)),
  vhostCol(),
  textCol('user', 'User'),
  textCol('client', 'Client', (c) => {
    const p = c.client_properties || {};
    return [p.product, p.version].filter(Boolean).join(' ') + (p.connection_name ? ` (${p.connection_name})` : '');
  }, 'client_properties.product'),
  stateCol(),
  textCol('protocol', 'Protocol', (c) => `${c.protocol || ''}${c.ssl ? ' TLS' : ''}`),
  col('channels', 'Channels'),
  col('recv', 'From client', 'recv_oct_details.rate', (r) => `${fmtBytes(r || 0)}/s`),
  col('send', 'To client', 'send_oct_details.rate', (r) => `${fmtBytes(r || 0)}/s`),
];

function connectionsPage() {
  const list = listing({
    name: 'connections', title: 'Connections', noun: 'connections', paged: true,
    empty: 'No clients are connected.', path: () => (state.vhost ? `/vhosts/${enc(state.vhost)}/connections` : '/connections'),
    columns: CONNECTION_COLUMNS,
  });
  return page('connections', 'connections', 'Connections', (main) => append(main, h('h1', {}, 'Connections'), list.element), list.load);
}

function connectionPage(name) {
  const channels = listing({
    name: 'channels', title: 'Channels', noun: 'channels', empty: 'This connection has no channels open.',
    path: () => `/connections/${enc(name)}/channels`, columns: CHANNEL_COLUMNS,
  });
  return page('connection', 'connections', name, (main) => {
    append(main, h('h1', {}, 'Connection ', h('small', {}, name)), box('Details', {}, h('div', { id: 'connection-details' })),
      channels.element,
      box('Close this connection', {}, form('close-connection', [
        field('Reason', input('reason', { value: 'Closed via management plugin' })),
      ], 'Force close', async (v) => {
        if (!window.confirm(`Close connection ${name}?`)) return 'Not closed.';
        await api('DELETE', `/connections/${enc(name)}`, undefined, { 'X-Reason': v.reason });
        location.hash = '#/connections';
        return 'Connection closed.';
      })));
  }, async () => {
    const c = await get(`/connections/${enc(name)}` + query(chartQuery(60, 5)));
    const p = c.client_properties || {};
    clear($('#connection-details'), kvTable([
      ['Virtual host', c.vhost], ['User', c.user], ['State', c.state], ['Peer', `${c.peer_host}:${c.peer_port}`],
      ['Client', [p.product, p.version, p.platform].filter(Boolean).join(', ')],
      ['Connection name', p.connection_name], ['Protocol', c.protocol], ['Heartbeat', `${c.timeout} s`],
      ['Frame max', fmtNum(c.frame_max)], ['Channel max', fmtNum(c.channel_max)],
      ['Received', `${fmtBytes(c.recv_oct)} (${fmtBytes((c.recv_oct_details || {}).rate || 0)}/s)`],
      ['Sent', `${fmtBytes(c.send_oct)} (${fmtBytes((c.send_oct_details || {}).rate || 0)}/s)`],
      ['Connected at', c.connected_at ? new Date(c.connected_at).toLocaleString() : ''],
    ]));
    await channels.load();
  });
}

const CHANNEL_COLUMNS = [
  textCol('name', 'Channel', (c) => (c.connection_details
    ? h('a', { href: `#/connections/${enc(c.connection_details.name)}` }, c.name) : c.name)),
  vhostCol(),
  textCol('user', 'User'),
  textCol('mode', 'Mode', (c) => [c.confirm ? 'C' : '', c.transactional ? 'T' : ''].join(''), false),
  stateCol(),
  col('prefetch', 'Prefetch', 'prefetch_count'),
  col('unacked', 'Unacked', 'messages_unacknowledged'),
  col('unconfirmed', 'Unconfirmed', 'messages_unconfirmed'),
  col('consumers', 'Consumers', 'consumer_count'),
  rateCol('publish', 'Publish', 'publish'),
  rateCol('confirm', 'Confirm', 'confirm'),
  rateCol('deliver', 'Deliver / get', 'deliver_get'),
  rateCol('ack', 'Ack', 'ack'),
];

function channelsPage() {
  const list = listing({
    name: 'channels', title: 'Channels', noun: 'channels', paged: true, empty: 'No channels are open.',
    path: () => (state.vhost ? `/vhosts/${enc(state.vhost)}/channels` : '/channels'), columns: CHANNEL_COLUMNS,
  });
  return page('channels', 'channels', 'Channels', (main) => append(main, h('h1', {}, 'Channels'), list.element), list.load);
}

// ---------------------------------------------------------------------------------------------
// Exchanges

function exchangesPage() {
  const list = listing({
    name: 'exchanges', title: 'Exchanges', noun: 'exchanges', paged: true, path: () => vhostPath('/exchanges'),
    columns: [
      vhostCol(),
      textCol('name', 'Name', (e) => exchangeLink(e.vhost, e.name)),
      textCol('type', 'Type'),
      textCol('features', 'Features', features, false),
      rateCol('in', 'Message rate in', 'publish_in'),
      rateCol('out', 'Message rate out', 'publish_out'),
    ],
  });
  const types = ((state.overview || {}).exchange_types || []).map((t) => t.name);
  const add = form('add-exchange', [
    field('Virtual host', vhostSelect()),
    field('Name', input('name', { required: true })),
    field('Type', select('type', types.length ? types : ['direct', 'fanout', 'headers', 'topic'], 'direct')),
    field('Durability', select('durable', [['true', 'Durable'], ['false', 'Transient']], 'true')),
    field('Auto delete', select('auto_delete', [['false', 'No'], ['true', 'Yes']], 'false')),
    field('Internal', select('internal', [['false', 'No'], ['true', 'Yes']], 'false')),
    field('Arguments', h('textarea', { name: 'arguments', placeholder: 'alternate-exchange = my-ae' }), ARGS_HINT),
  ], 'Add exchange', async (v) => {
    await api('PUT', `/exchanges/${enc(v.vhost)}/${enc(v.name)}`, {
      type: v.type, durable: v.durable === 'true', auto_delete: v.auto_delete === 'true', internal: v.internal === 'true', arguments: parseArgs(v.arguments),
    });
    return `Exchange ${v.name} added.`;
  });
  return page('exchanges', 'exchanges', 'Exchanges', (main) => append(main, h('h1', {}, 'Exchanges'), list.element, formBox('Add a new exchange', add)), list.load);
}

function bindingColumns(unbind, side) {
  return [
    textCol(side, side === 'source' ? 'From' : 'To', (b) => (side === 'source' ? exchangeLink(b.vhost, b.source)
      : b.destination_type === 'queue' ? queueLink(b.vhost, b.destination) : exchangeLink(b.vhost, b.destination))),
    textCol('routing_key', 'Routing key'),
    textCol('arguments', 'Arguments', (b) => (Object.keys(b.arguments || {}).length ? JSON.stringify(b.arguments) : '')),
    { key: 'unbind', label: '', cell: (b) => (b.source === '' ? h('span', { class: 'muted' }, 'default binding') : unbind(b)) },
  ];
}

function unbindButton(b) {
  return confirmButton('Unbind', `Remove the binding from ${b.source} to ${b.destination} with key "${b.routing_key}"?`, async () => {
    const kind = b.destination_type === 'queue' ? 'q' : 'e';
    await api('DELETE', `/bindings/${enc(b.vhost)}/e/${enc(b.source)}/${kind}/${enc(b.destination)}/${enc(b.properties_key)}`);
    refresh();
  });
}

/** The publish form RabbitMQ's exchange and queue pages share. */
function publishForm(vhost, exchange, routingKey) {
  return form('publish', [
    routingKey === undefined ? field('Routing key', input('routing_key')) : null,
    field('Delivery mode', select('delivery_mode', [['1', '1 - Non-persistent'], ['2', '2 - Persistent']], '2')),
    field('Headers', h('textarea', { name: 'headers', placeholder: 'x-trace = on' }), ARGS_HINT),
    field('Properties', h('textarea', { name: 'properties', placeholder: 'content_type = text/plain' }),
      'content_type, correlation_id, reply_to, expiration, message_id, type, priority...'),
    field('Payload', h('textarea', { name: 'payload', rows: 4 })),
    field('Payload encoding', select('payload_encoding', [['string', 'String (default)'], ['base64', 'Base64']], 'string')),
  ].filter(Boolean), 'Publish message', async (v) => {
    const properties = parseArgs(v.properties);
    properties.delivery_mode = Number(v.delivery_mode);
    const headers = parseArgs(v.headers);
    if (Object.keys(headers).length) properties.headers = headers;
    const res = await api('POST', `/exchanges/${enc(vhost)}/${enc(exchange || 'amq.default')}/publish`, {
      properties, routing_key: routingKey === undefined ? v.routing_key : routingKey, payload: v.payload, payload_encoding: v.payload_encoding,
    });
    return res && res.routed ? 'Message published.' : 'Message published, but not routed.';
  });
}

function exchangePage(vhost, name) {
  const shown = name === 'amq.default' ? '' : name;
  const bindings = listing({
    name: 'bindings', title: 'Bindings from this exchange', noun: 'bindings', empty: 'No bindings from this exchange.',
    path: () => `/exchanges/${enc(vhost)}/${enc(name)}/bindings/source`, columns: bindingColumns(unbindButton, 'destination'),
    rowName: (b) => b.destination, key: (b) => b.destination + ' ' + b.routing_key,
  });
  const bind = form('add-binding', [
    field('To', select('destination_type', [['q', 'Queue'], ['e', 'Exchange']], 'q')),
    field('Name', input('destination', { required: true })),
    field('Routing key', input('routing_key')),
    field('Arguments', h('textarea', { name: 'arguments' }), ARGS_HINT),
  ], 'Bind', async (v) => {
    await api('POST', `/bindings/${enc(vhost)}/e/${enc(name)}/${v.destination_type}/${enc(v.destination)}`, { routing_key: v.routing_key, arguments: parseArgs(v.arguments) });
    return 'Binding added.';
  });
  return page('exchange', 'exchanges', `Exchange ${name}`, (main) => {
    append(main, h('h1', {}, 'Exchange ', h('small', {}, `${shown || '(AMQP default)'} in ${vhost}`)),
      box('Message rates', { id: 'chart-rates' }, h('div', { class: 'chart' })),
      box('Details', {}, h('div', { id: 'exchange-details' })),
      bindings.element,
      shown ? formBox('Add binding from this exchange', bind) : null,
      formBox('Publish message', publishForm(vhost, name)),
      shown && !name.startsWith('amq.') ? box('Delete this exchange', {}, confirmButton('Delete', `Delete exchange ${name}?`, async () => {
        await api('DELETE', `/exchanges/${enc(vhost)}/${enc(name)}`);
        location.hash = '#/exchanges';
        showStatus(`Exchange ${name} deleted.`, true);
      }, { id: 'delete-exchange' })) : null);
  }, async () => {
    const e = await get(`/exchanges/${enc(vhost)}/${enc(name)}` + query(chartQuery(60, 5)));
    const s = e.message_stats || {};
    drawChart($('#chart-rates .chart'), [['publish_in', 'Publish (in)'], ['publish_out', 'Publish (out)']].map(([k, label]) => ({
      label, points: ratePoints(s[`${k}_details`]), current: (s[`${k}_details`] || {}).rate || 0,
    })), fmtRate);
    clear($('#exchange-details'), kvTable([
      ['Type', e.type], ['Features', features(e)], ['Policy', e.policy || ''],
      ['Arguments', Object.keys(e.arguments || {}).length ? h('pre', {}, JSON.stringify(e.arguments, null, 1)) : ''],
    ]));
    await bindings.load();
  });
}

// ---------------------------------------------------------------------------------------------
// Queues

const QUEUE_FIELDS = ['name', 'vhost', 'type', 'durable', 'auto_delete', 'exclusive', 'arguments', 'policy', 'state',
  'messages', 'messages_ready', 'messages_unacknowledged', 'consumers',
  'message_stats.publish_details', 'message_stats.deliver_get_details', 'message_stats.ack_details'];

function queuesPage() {
  const list = listing({
    name: 'queues', title: 'Queues', noun: 'queues', paged: true, path: () => vhostPath('/queues'), fields: QUEUE_FIELDS,
    columns: [
      vhostCol(),
      textCol('name', 'Name', (q) => queueLink(q.vhost, q.name)),
      textCol('type', 'Type'),
      textCol('features', 'Features', features, false),
      stateCol(),
      col('ready', 'Ready', 'messages_ready'),
      col('unacked', 'Unacked', 'messages_unacknowledged'),
      col('messages', 'Total', 'messages'),
      col('consumers', 'Consumers', 'consumers'),
      rateCol('incoming', 'Incoming', 'publish'),
      rateCol('deliver', 'Deliver / get', 'deliver_get'),
      rateCol('ack', 'Ack', 'ack'),
    ],
  });
  const add = form('add-queue', [
    field('Virtual host', vhostSelect()),
    field('Name', input('name', { required: true })),
    field('Type', select('type', [['classic', 'Classic']], 'classic')),
    field('Durability', select('durable', [['true', 'Durable'], ['false', 'Transient']], 'true')),
    field('Auto delete', select('auto_delete', [['false', 'No'], ['true', 'Yes']], 'false')),
    field('Arguments', h('textarea', { name: 'arguments', placeholder: 'x-max-length = 1000\nx-dead-letter-exchange = dlx' }), ARGS_HINT),
  ], 'Add queue', async (v) => {
    await api('PUT', `/queues/${enc(v.vhost)}/${enc(v.name)}`, {
      durable: v.durable === 'true', auto_delete: v.auto_delete === 'true', arguments: parseArgs(v.arguments),
    });
    return `Queue ${v.name} added.`;
  });
  return page('queues', 'queues', 'Queues', (main) => append(main, h('h1', {}, 'Queues'), list.element, formBox('Add a new queue', add)), list.load);
}

const CONSUMER_COLUMNS = ['Channel', 'Consumer tag', 'Ack required', 'Exclusive', 'Prefetch count', 'Active', 'Arguments'];

function queuePage(vhost, name) {
  const path = `/queues/${enc(vhost)}/${enc(name)}`;
  let missing = false;
  const bindings = listing({
    name: 'bindings', title: 'Bindings', noun: 'bindings', path: () => `${path}/bindings`, columns: bindingColumns(unbindButton, 'source'),
    rowName: (b) => b.source, key: (b) => b.source + ' ' + b.routing_key,
  });
  const bind = form('add-binding', [
    field('From exchange', input('source', { required: true })),
    field('Routing key', input('routing_key')),
    field('Arguments', h('textarea', { name: 'arguments' }), ARGS_HINT),
  ], 'Bind', async (v) => {
    await api('POST', `/bindings/${enc(vhost)}/e/${enc(v.source)}/q/${enc(name)}`, { routing_key: v.routing_key, arguments: parseArgs(v.arguments) });
    return 'Binding added.';
  });
  const getForm = form('get', [
    field('Ack mode', select('ackmode', [
      ['ack_requeue_true', 'Nack message requeue true'], ['reject_requeue_true', 'Reject requeue true'],
      ['ack_requeue_false', 'Automatic ack'], ['reject_requeue_false', 'Reject requeue false'],
    ], 'ack_requeue_true')),
    field('Encoding', select('encoding', [['auto', 'Auto string / base64'], ['base64', 'Base64']], 'auto')),
    field('Messages', input('count', { type: 'number', min: 1, value: 1 })),
  ], 'Get messages', async (v, f) => {
    const msgs = await api('POST', `${path}/get`, { count: Number(v.count) || 1, ackmode: v.ackmode, encoding: v.encoding, truncate: 50000 });
    const out = f.querySelector('.messages') || f.appendChild(h('div', { class: 'messages' }));
    out.style.gridColumn = '1 / -1';
    clear(out, msgs.map((m, i) => h('div', { class: 'message' },
      h('b', {}, `Message ${i + 1}`), ' ', h('span', { class: 'muted' }, `${fmtNum(m.message_count)} messages left in the queue`),
      kvTable([
        ['Exchange', m.exchange || '(AMQP default)'], ['Routing key', m.routing_key], ['Redelivered', String(m.redelivered)],
        ['Properties', h('pre', {}, JSON.stringify(m.properties || {}, null, 1))],
        ['Payload', `${fmtNum(m.payload_bytes)} bytes, encoding ${m.payload_encoding}`],
      ]),
      h('pre', { class: 'payload' }, m.payload))));
    return msgs.length ? `${msgs.length} message${msgs.length === 1 ? '' : 's'} fetched.` : 'Queue is empty.';
  });
  return page('queue', 'queues', `Queue ${name}`, (main) => {
    append(main,
      h('h1', {}, 'Queue ', h('small', {}, `${name} in ${vhost}`)),
      h('div', { class: 'figures' },
        figure('queue-messages', 'Total', ''), figure('queue-ready', 'Ready', ''), figure('queue-unacked', 'Unacked', ''),
        figure('queue-consumers', 'Consumers', ''), figure('queue-bytes', 'Message bytes', ''), figure('queue-state', 'State', '')),
      h('div', { class: 'grid2', style: 'margin-top:16px' }, chartBox('chart-queued', 'Queued messages'), chartBox('chart-rates', 'Message rates')),
      box('Details', {}, h('div', { id: 'queue-details' })),
      box('Consumers', {}, h('div', { id: 'queue-consumers-list' })),
      bindings.element,
      formBox('Add binding to this queue', bind),
      formBox('Publish message', publishForm(vhost, '', name), true),
      formBox('Get messages', getForm, true),
      box('Purge and delete', {},
        h('div', { class: 'controls' },
          confirmButton('Purge messages', `Purge every ready message of queue ${name}?`, async () => {
            const r = $('#purge-result');
            r.classList.remove('error');
            await api('DELETE', `${path}/contents`);
            r.textContent = 'Queue purged.';
            refresh();
          }, { id: 'purge' }),
          confirmButton('Delete queue', `Delete queue ${name} and its messages?`, async () => {
            await api('DELETE', path);
            location.hash = '#/queues';
            showStatus(`Queue ${name} deleted.`, true);
          }, { id: 'delete-queue' }),
          h('span', { id: 'purge-result', class: 'result', role: 'status' }))));
  }, async () => {
    let q;
    try {
      q = await get(path + query(chartQuery(60, 5)));
      missing = false;
    } catch (e) {
      if (e.status !== 404) throw e;
      if (!missing) showStatus(`Queue ${name} does not exist in virtual host ${vhost} (any more).`);
      missing = true;
      return;
    }
    $('#queue-messages').textContent = fmtNum(q.messages);
    $('#queue-ready').textContent = fmtNum(q.messages_ready);
    $('#queue-unacked').textContent = fmtNum(q.messages_unacknowledged);
    $('#queue-consumers').textContent = fmtNum(q.consumers);
    $('#queue-bytes').textContent = fmtBytes(q.message_bytes || 0);
    $('#queue-state').textContent = q.state || '';
    drawQueued($('#chart-queued .chart'), q);
    drawRates($('#chart-rates .chart'), q.message_stats, ['publish', 'deliver', 'ack']);
    clear($('#queue-details'), kvTable([
      ['Type', q.type], ['Features', features(q)], ['Policy', q.policy || ''],
      ['Effective policy definition', Object.keys(q.effective_policy_definition || {}).length ? JSON.stringify(q.effective_policy_definition) : ''],
      ['Exclusive owner', q.owner_pid_details ? q.owner_pid_details.name : ''],
      ['Consumer utilisation', q.consumer_utilisation === undefined || q.consumer_utilisation === null ? '' : `${Math.round(q.consumer_utilisation * 100)}%`],
      ['Memory', fmtBytes(q.memory)],
      ['Ready bytes', fmtBytes(q.message_bytes_ready)], ['Unacked bytes', fmtBytes(q.message_bytes_unacknowledged)],
      ['Paged out', q.messages_paged_out === undefined ? '' : `${fmtNum(q.messages_paged_out)} messages, ${fmtBytes(q.message_bytes_paged_out)}`],
    ]));
    const list = q.consumer_details || [];
    clear($('#queue-consumers-list'), h('table', { class: 'list', dataset: { list: 'consumers' } },
      h('thead', {}, h('tr', {}, CONSUMER_COLUMNS.map((c) => h('th', {}, c)))),
      h('tbody', {}, list.length ? list.map((c) => h('tr', { dataset: { name: c.consumer_tag, vhost } },
        h('td', {}, c.channel_details ? h('a', { href: `#/connections/${enc(c.channel_details.connection_name)}` }, c.channel_details.name) : ''),
        h('td', {}, c.consumer_tag), h('td', {}, String(c.ack_required)), h('td', {}, String(c.exclusive)),
        h('td', { class: 'num' }, fmtNum(c.prefetch_count)), h('td', {}, String(c.active)),
        h('td', {}, Object.keys(c.arguments || {}).length ? JSON.stringify(c.arguments) : '')))
        : h('tr', {}, h('td', { class: 'empty', colspan: CONSUMER_COLUMNS.length }, 'No consumers.')))));
    await bindings.load();
  });
}

// ---------------------------------------------------------------------------------------------
// Admin

function adminNav(current) {
  const items = [['users', 'Users'], ['vhosts', 'Virtual hosts'], ['policies', 'Policies'], ['limits', 'Limits']];
  return h('div', { class: 'subnav' }, items.map(([k, label]) => h('a', { href: `#/admin/${k}`, class: k === current ? 'active' : '' }, label)));
}

/** A button that deletes (or, with `label` Clear, clears) what `path` names, after asking. */
function removeButton(what, question, path, label) {
  return confirmButton(label || 'Delete', question, async () => {
    await api('DELETE', path);
    showStatus(`${what} ${label ? 'cleared' : 'deleted'}.`, true);
    refresh();
  });
}

function usersPage() {
  const users = listing({
    name: 'users', title: 'Users', noun: 'users', path: () => '/users',
    columns: [
      textCol('name', 'Name'),
      textCol('tags', 'Tags', (u) => tags(Array.isArray(u.tags) ? u.tags : String(u.tags || '').split(',').filter(Boolean))),
      textCol('password', 'Has password', (u) => (u.password_hash ? 'yes' : 'no'), false),
      { key: 'delete', label: '', cell: (u) => removeButton(`User ${u.name}`, `Delete user ${u.name}?`, `/users/${enc(u.name)}`) },
    ],
  });
  const permissions = listing({
    name: 'permissions', title: 'Permissions', noun: 'permissions', path: () => '/permissions',
    rowName: (p) => p.user, key: (p) => `${p.user} ${p.vhost}`, sort: 'user',
    columns: [
      textCol('user', 'User'), vhostCol(),
      textCol('configure', 'Configure regexp'), textCol('write', 'Write regexp'), textCol('read', 'Read regexp'),
      { key: 'clear', label: '', cell: (p) => removeButton(`Permissions of ${p.user} in ${p.vhost}`, `Clear the permissions of ${p.user} in ${p.vhost}?`, `/permissions/${enc(p.vhost)}/${enc(p.user)}`, 'Clear') },
    ],
  });
  const userSelect = select('user', []);
  const addUser = form('add-user', [
    field('Username', input('username', { required: true, autocomplete: 'off' })),
    field('Password', input('password', { type: 'password', autocomplete: 'new-password' }), 'Leave empty for a user who cannot log in with a password.'),
    field('Tags', input('tags', { placeholder: 'administrator, monitoring, policymaker, management' }),
      'Comma-separated. management: the UI for their own vhosts; monitoring: all of it, read-only; administrator: everything.'),
  ], 'Add user', async (v) => {
    const body = { tags: v.tags.split(',').map((t) => t.trim()).filter(Boolean).join(',') };
    if (v.password) body.password = v.password;
    else body.password_hash = '';
    await api('PUT', `/users/${enc(v.username)}`, body);
    await fillUsers();
    return `User ${v.username} added.`;
  });
  const setPermission = form('set-permission', [
    field('User', userSelect),
    field('Virtual host', vhostSelect()),
    field('Configure regexp', input('configure', { value: '.*' })),
    field('Write regexp', input('write', { value: '.*' })),
    field('Read regexp', input('read', { value: '.*' })),
  ], 'Set permission', async (v) => {
    await api('PUT', `/permissions/${enc(v.vhost)}/${enc(v.user)}`, { configure: v.configure, write: v.write, read: v.read });
    return `Permissions of ${v.user} in ${v.vhost} set.`;
  });
  async function fillUsers() {
    const names = (await get('/users?columns=name')).map((u) => u.name);
    const keep = userSelect.value;
    clear(userSelect, names.map((n) => h('option', { value: n }, n)));
    if (names.includes(keep)) userSelect.value = keep;
  }
  return page('users', 'admin', 'Users', (main) => {
    append(main, h('h1', {}, 'Admin'), adminNav('users'), users.element, formBox('Add a user', addUser, true),
      permissions.element, formBox('Set permission', setPermission, true));
    fillUsers().catch(reportError);
  }, async () => { await users.load(); await permissions.load(); });
}

function vhostsPage() {
  const list = listing({
    name: 'vhosts', title: 'Virtual hosts', noun: 'virtual hosts', path: () => '/vhosts',
    columns: [
      textCol('name', 'Name'),
      textCol('description', 'Description'),
      textCol('tags', 'Tags', (v) => tags(v.tags)),
      col('ready', 'Ready', 'messages_ready'),
      col('unacked', 'Unacked', 'messages_unacknowledged'),
      col('messages', 'Total', 'messages'),
      rateCol('publish', 'Publish', 'publish'),
      rateCol('deliver', 'Deliver / get', 'deliver_get'),
      { key: 'delete', label: '', cell: (v) => removeButton(`Virtual host ${v.name}`, `Delete virtual host ${v.name} and everything in it?`, `/vhosts/${enc(v.name)}`) },
    ],
  });
  const add = form('add-vhost', [
    field('Name', input('name', { required: true })),
    field('Description', input('description')),
    field('Tags', input('tags'), 'Comma-separated.'),
  ], 'Add virtual host', async (v) => {
    await api('PUT', `/vhosts/${enc(v.name)}`, { description: v.description, tags: v.tags });
    await loadVhosts();
    return `Virtual host ${v.name} added.`;
  });
  return page('vhosts', 'admin', 'Virtual hosts', (main) => append(main, h('h1', {}, 'Admin'), adminNav('vhosts'), list.element, formBox('Add a new virtual host', add, true)), list.load);
}

function policiesPage() {
  const policyList = (kind, title) => listing({
    name: kind, title, noun: title.toLowerCase(), path: () => vhostPath(`/${kind}`), rowName: (p) => p.name,
    columns: [
      vhostCol(), textCol('name', 'Name'), textCol('pattern', 'Pattern'), textCol('apply-to', 'Apply to'),
      textCol('definition', 'Definition', (p) => JSON.stringify(p.definition), false), col('priority', 'Priority'),
      { key: 'delete', label: '', cell: (p) => removeButton(`Policy ${p.name}`, `Delete policy ${p.name}?`, `/${kind}/${enc(p.vhost)}/${enc(p.name)}`) },
    ],
  });
  const policies = policyList('policies', 'Policies');
  const operator = policyList('operator-policies', 'Operator policies');
  const policyForm = (kind, id) => form(id, [
    field('Virtual host', vhostSelect()),
    field('Name', input('name', { required: true })),
    field('Pattern', input('pattern', { required: true, placeholder: '^amq\\.' })),
    field('Apply to', select('apply-to', kind === 'policies' ? ['all', 'queues', 'exchanges'] : ['queues'], kind === 'policies' ? 'all' : 'queues')),
    field('Priority', input('priority', { type: 'number', value: 0 })),
    field('Definition', h('textarea', { name: 'definition', required: true, placeholder: 'max-length = 1000\ndead-letter-exchange = dlx' }), ARGS_HINT),
  ], kind === 'policies' ? 'Add / update policy' : 'Add / update operator policy', async (v) => {
    await api('PUT', `/${kind}/${enc(v.vhost)}/${enc(v.name)}`, {
      pattern: v.pattern, 'apply-to': v['apply-to'], priority: Number(v.priority) || 0, definition: parseArgs(v.definition),
    });
    return `Policy ${v.name} set.`;
  });
  return page('policies', 'admin', 'Policies', (main) => append(main, h('h1', {}, 'Admin'), adminNav('policies'),
    policies.element, formBox('Add / update a policy', policyForm('policies', 'add-policy'), true),
    state.isAdmin ? operator.element : null, state.isAdmin ? formBox('Add / update an operator policy', policyForm('operator-policies', 'add-operator-policy')) : null),
  async () => { await policies.load(); if (state.isAdmin) await operator.load(); });
}

function limitsPage() {
  const limitList = (kind, title, owner) => listing({
    name: kind, title, noun: title.toLowerCase(), path: () => `/${kind}`, rowName: (l) => l[owner], key: (l) => l[owner], sort: owner,
    columns: [
      textCol(owner, owner === 'vhost' ? 'Virtual host' : 'User'),
      textCol('value', 'Limits', (l) => Object.entries(l.value || {}).map(([k, v]) => h('span', { class: 'tag' }, `${k}: ${v}`)), false),
      { key: 'clear', label: '', cell: (l) => Object.keys(l.value || {}).map((k) => removeButton(`Limit ${k} of ${l[owner]}`, `Clear ${k} of ${l[owner]}?`, `/${kind}/${enc(l[owner])}/${k}`, `Clear ${k}`)) },
    ],
  });
  const vhostLimits = limitList('vhost-limits', 'Virtual host limits', 'vhost');
  const userLimits = limitList('user-limits', 'User limits', 'user');
  const setVhost = form('set-vhost-limit', [
    field('Virtual host', vhostSelect()),
    field('Limit', select('limit', ['max-connections', 'max-queues'], 'max-connections')),
    field('Value', input('value', { type: 'number', required: true, min: -1 }), 'A negative value means no limit, 0 refuses all.'),
  ], 'Set / update limit', async (v) => {
    await api('PUT', `/vhost-limits/${enc(v.vhost)}/${v.limit}`, { value: Number(v.value) });
    return `Limit ${v.limit} of ${v.vhost} set.`;
  });
  const setUser = form('set-user-limit', [
    field('User', input('user', { required: true })),
    field('Limit', select('limit', ['max-connections', 'max-channels'], 'max-connections')),
    field('Value', input('value', { type: 'number', required: true, min: -1 })),
  ], 'Set / update limit', async (v) => {
    await api('PUT', `/user-limits/${enc(v.user)}/${v.limit}`, { value: Number(v.value) });
    return `Limit ${v.limit} of ${v.user} set.`;
  });
  return page('limits', 'admin', 'Limits', (main) => append(main, h('h1', {}, 'Admin'), adminNav('limits'),
    vhostLimits.element, formBox('Set a virtual host limit', setVhost, true), userLimits.element, formBox('Set a user limit', setUser, true)),
  async () => { await vhostLimits.load(); await userLimits.load(); });
}

// ---------------------------------------------------------------------------------------------
// Start

function init() {
  $('#login').addEventListener('submit', login);
  $('#logout').addEventListener('click', () => {
    // The next user starts at the overview, not on a page the last one had open.
    history.replaceState(null, '', '#/');
    logout('Logged out.');
  });
  const refreshSel = $('#refresh');
  refreshSel.value = String(state.refreshMs);
  refreshSel.addEventListener('change', () => {
    state.refreshMs = Number(refreshSel.value);
    localStorage.setItem(REFRESH_KEY, refreshSel.value);
    startTimer();
  });
  $('#vhost').addEventListener('change', () => {
    state.vhost = $('#vhost').value;
    sessionStorage.setItem(VHOST_KEY, state.vhost);
    route();
  });
  window.addEventListener('hashchange', route);
  if (state.auth) {
    start().catch((e) => logout(e.status === 0 ? e.message : 'Log in again.'));
  } else {
    logout();
  }
}

init();
