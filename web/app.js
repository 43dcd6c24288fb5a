// The chat page. Every conversation is a server session (its id is the
// session_id), so a follow-up turn only runs its new tokens; the page shows
// that under each reply. Model and user text only ever enter the document as
// text nodes (el() and textContent), never as markup.
import { apiKey, ApiError, getJSON, request, stream } from './api.js';
import { chats, current, newId, samplingParams, settings, SETTING_FIELDS } from './store.js';

const $ = (id) => document.getElementById(id);

/** Creates an element; string children become text nodes. */
function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k in e && typeof v !== 'string') e[k] = v;
    else e.setAttribute(k, v);
  }
  e.append(...children.filter((c) => c !== null && c !== undefined));
  return e;
}

const SVG = 'http://www.w3.org/2000/svg';
/** A small stroked icon (24x24 path data). */
function icon(d) {
  const svg = document.createElementNS(SVG, 'svg');
  for (const [k, v] of Object.entries({ viewBox: '0 0 24 24', width: '16', height: '16', fill: 'none',
    stroke: 'currentColor', 'stroke-width': '2', 'stroke-linecap': 'round', 'stroke-linejoin': 'round',
    'aria-hidden': 'true' })) svg.setAttribute(k, v);
  const p = document.createElementNS(SVG, 'path');
  p.setAttribute('d', d);
  svg.append(p);
  return svg;
}
const PENCIL = 'M4 20h4L19 9l-4-4L4 16v4zM14 6l4 4';
const TRASH = 'M4 7h16M9 7V4h6v3M6 7l1 13h10l1-13M10 11v6M14 11v6';

const ui = {
  model: null,            // served model id
  sessions: new Map(),    // id -> the server's session entry
  currentId: '',
  busy: null,             // {controller} while a reply streams
  stick: true,            // auto-scroll while the view is at the bottom
  needKey: false,
};

// ---------------------------------------------------------------- notices

function notice(text, kind = 'info') {
  $('notice-text').textContent = text;
  $('notice').className = `notice ${kind}`;
  $('notice').hidden = !text;
}

function showError(e) {
  if (e instanceof ApiError && e.status === 401) askKey(e.message);
  notice(e.message || String(e), 'error');
}

// ---------------------------------------------------------------- API key

function askKey(message) {
  ui.needKey = true;
  const d = $('key-dialog');
  $('key-error').hidden = !message || !apiKey.get();
  $('key-error').textContent = message || '';
  $('key-input').value = '';
  if (!d.open) d.showModal();
}

async function tryKey(ev) {
  ev.preventDefault();
  const key = $('key-input').value.trim();
  if (!key) return;
  apiKey.set(key);
  $('key-submit').disabled = true;
  try {
    await connect();
    $('key-dialog').close();
    $('input').focus();
  } catch (e) {
    $('key-error').textContent = e.message;
    $('key-error').hidden = false;
    $('key-input').select();
  } finally {
    $('key-submit').disabled = false;
  }
}

// ---------------------------------------------------------------- server

/** Reads the model (and the initial states); throws ApiError (401 etc.). */
async function connect() {
  const list = await getJSON('/v1/models');
  const m = list.data?.[0];
  if (!m) throw new ApiError(0, 'The server lists no model.');
  ui.model = m.id;
  ui.needKey = false;
  const sel = $('state-select');
  const keep = settings.get().state || '';
  sel.replaceChildren(el('option', { value: '', text: 'none (zero state)' }),
    ...(m.initial_states || []).map((s) => el('option', { value: s, text: s })));
  sel.value = (m.initial_states || []).includes(keep) ? keep : '';
  notice('');
  await refreshSessions();
  // Last: the name is the sign that the page is ready to send.
  $('model-name').textContent = m.id;
}

// The sidebar's list is aria-busy from the request until it is redrawn, so
// that assistive technology (and the page's tests) know when its entries are
// current: the redraw replaces them, and a click aimed at an old entry lands
// on a detached node.
async function refreshSessions() {
  const list = $('conv-list');
  list.setAttribute('aria-busy', 'true');
  try {
    const data = await getJSON('/v1/sessions');
    ui.sessions = new Map((data.data || []).map((s) => [s.id, s]));
    $('server-note').textContent = `${ui.sessions.size} session${ui.sessions.size === 1 ? '' : 's'} on the server`;
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      list.removeAttribute('aria-busy');
      return askKey(e.message);
    }
    $('server-note').textContent = e.message;
  }
  renderList();
  list.removeAttribute('aria-busy');
}

// ---------------------------------------------------------------- sidebar

function titleOf(id) {
  return chats.get(id)?.title || id;
}

function renderList() {
  const local = chats.all();
  const ids = new Set([...ui.sessions.keys(), ...Object.keys(local)]);
  const when = (id) => Math.max(local[id]?.updated || 0, (ui.sessions.get(id)?.last_used || 0) * 1000);
  const items = [...ids].sort((a, b) => when(b) - when(a)).map((id) => {
    const s = ui.sessions.get(id);
    const sub = s ? `${s.tokens} tokens${s.in_memory ? '' : ' · on disk'}` : 'not on the server';
    const li = el('li', { class: 'conv', 'data-id': id },
      el('button', { type: 'button', class: 'conv-open', onclick: () => select(id), title: id },
        el('span', { class: 'conv-title', text: titleOf(id) }),
        el('span', { class: 'conv-sub', text: sub })),
      el('button', { type: 'button', class: 'icon-btn conv-rename', 'aria-label': `Rename ${titleOf(id)}`,
        title: 'Rename', onclick: () => rename(li, id) }, icon(PENCIL)),
      el('button', { type: 'button', class: 'icon-btn conv-delete', 'aria-label': `Delete ${titleOf(id)}`,
        title: 'Delete', onclick: () => remove(id) }, icon(TRASH)));
    if (id === ui.currentId) li.setAttribute('aria-current', 'true');
    return li;
  });
  $('conv-list').replaceChildren(...items);
  if (!items.length) $('conv-list').append(el('li', { class: 'conv-none muted small', text: 'No conversations yet.' }));
}

function rename(li, id) {
  const input = el('input', { class: 'conv-edit', value: titleOf(id), 'aria-label': 'New title' });
  let done = false;
  const finish = (ok) => {
    if (done) return;
    done = true;
    const t = input.value.trim();
    if (ok && t) chats.put(id, { ...(chats.get(id) || { messages: [], created: Date.now() }), title: t });
    renderList();
    if (id === ui.currentId) $('chat-title').textContent = titleOf(id);
    li.ownerDocument.querySelector(`li[data-id="${CSS.escape(id)}"] .conv-open`)?.focus();
  };
  input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter') finish(true);
    if (e.key === 'Escape') { e.stopPropagation(); e.preventDefault(); finish(false); }
  });
  input.addEventListener('blur', () => finish(true));
  li.replaceChildren(input);
  input.focus();
  input.select();
}

async function remove(id) {
  if (ui.busy && id === ui.currentId) stop();
  if (!confirm(`Delete "${titleOf(id)}"? Its state is removed from the server and its text from this browser.`)) return;
  try {
    await request('DELETE', `/v1/sessions/${encodeURIComponent(id)}`);
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 404)) return showError(e);
  }
  chats.remove(id);
  if (id === ui.currentId) newChat();
  await refreshSessions();
}

function select(id) {
  if (ui.busy) stop();
  ui.currentId = id;
  current.set(id);
  renderThread();
  renderList();
  closeSidebar();
  $('input').focus();
}

function newChat() {
  select(newId());
}

// ---------------------------------------------------------------- thread

/** The stats line's parts as [text, class]. */
function statsParts(st) {
  if (!st) return [];
  const parts = [];
  if (st.completion_tokens !== undefined) parts.push([`${st.completion_tokens} tokens`]);
  if (st.tps) parts.push([`${st.tps.toFixed(1)} tok/s`]);
  if (st.ttft !== undefined) parts.push([`first token ${Math.round(st.ttft)} ms`]);
  if (st.cached !== undefined)
    parts.push([`cached ${st.cached} of ${st.prompt_tokens} prompt tokens`, st.cached > 0 ? 'cached' : '']);
  if (st.stopped) parts.push(['stopped', 'stopped']);
  if (st.finish === 'length') parts.push(['hit max tokens']);
  return parts;
}

const fmtStats = (st) => statsParts(st).map(([t]) => t).join(' · ');

function statsEl(st) {
  const e = el('div', { class: 'stats' });
  statsParts(st).forEach(([t, cls], i) => {
    if (i) e.append(' · ');
    e.append(el('span', { class: cls || '', text: t }));
  });
  if (st?.cached !== undefined) e.dataset.cached = String(st.cached);
  if (st?.completion_tokens !== undefined) e.dataset.tokens = String(st.completion_tokens);
  return e;
}

async function copyText(text, btn) {
  try {
    await navigator.clipboard.writeText(text);
  } catch { // no clipboard API on plain-http origins other than localhost
    const t = el('textarea', { class: 'visually-hidden' });
    t.value = text;
    document.body.append(t);
    t.select();
    document.execCommand('copy');
    t.remove();
  }
  btn.textContent = 'Copied';
  setTimeout(() => { btn.textContent = 'Copy'; }, 1500);
}

/** The element of one message; assistant ones get stats and actions. */
function messageEl(m, last) {
  const bubble = el('div', { class: `bubble${m.role === 'assistant' && !m.content.trim() ? ' blank' : ''}`, text: m.content });
  const art = el('article', { class: `msg ${m.role}`, 'aria-label': m.role === 'user' ? 'You' : 'Assistant' },
    el('div', { class: 'who', text: m.role === 'user' ? 'You' : m.role === 'assistant' ? 'Assistant' : m.role }),
    bubble);
  if (m.role === 'assistant') {
    const copy = el('button', { type: 'button', class: 'btn tiny ghost', text: 'Copy' });
    copy.addEventListener('click', () => copyText(bubble.textContent, copy));
    const actions = el('div', { class: 'actions' }, copy,
      last ? el('button', { type: 'button', class: 'btn tiny ghost regen', text: 'Regenerate', onclick: regenerate }) : null);
    art.append(el('div', { class: 'meta' }, statsEl(m.stats), actions));
  }
  return art;
}

function renderThread() {
  const chat = chats.get(ui.currentId);
  const msgs = chat?.messages || [];
  const lastAssistant = msgs.length && msgs[msgs.length - 1].role === 'assistant';
  $('thread').replaceChildren(...msgs.map((m, i) => messageEl(m, lastAssistant && i === msgs.length - 1)));
  $('empty').hidden = msgs.length > 0;
  $('chat-title').textContent = chat?.title || (ui.sessions.has(ui.currentId) ? ui.currentId : 'New conversation');
  const s = ui.sessions.get(ui.currentId);
  if (!msgs.length && s && !chat?.imported && s.tokens > 0) {
    notice(`Session ${ui.currentId} (${s.tokens} tokens) was started by another client; its text is not in this browser, so a message here starts it over.`);
  } else if (!msgs.length && chat?.imported) {
    notice(`This conversation starts from the imported state (${chat.imported}).`);
  }
  ui.stick = true;
  scrollToEnd();
}

/**
 * Tokens per second of a reply: over the span from its first to its last
 * chunk; when a fast model's reply arrived in one burst (span under 100 ms)
 * that span says nothing, so over the whole request instead.
 */
function rate(n, t0, tFirst, tEnd) {
  if (!tFirst || !n) return 0;
  if (n > 1 && tEnd - tFirst >= 100) return (n - 1) / ((tEnd - tFirst) / 1000);
  return n / ((tEnd - t0) / 1000);
}

/** show(text) appends text to what the next animation frame passes to fn. */
function batched(fn) {
  let pending = '', frame = 0;
  const flush = () => {
    if (frame) cancelAnimationFrame(frame);
    frame = 0;
    if (pending) fn(pending);
    pending = '';
  };
  const show = (t) => {
    pending += t;
    if (!frame) frame = requestAnimationFrame(flush);
  };
  show.flush = flush;
  return show;
}

function scrollToEnd() {
  const m = $('messages');
  if (ui.stick) m.scrollTop = m.scrollHeight;
}

// ---------------------------------------------------------------- chatting

function setBusy(on) {
  const compl = on && !!ui.busy?.completion, chat = on && !compl;
  $('send').hidden = chat;
  $('stop').hidden = !chat;
  $('send').disabled = compl;
  $('complete-run').hidden = compl;
  $('complete-run').disabled = chat;
  $('complete-stop').hidden = !compl;
  document.body.classList.toggle('busy', on);
}

function stop() {
  ui.busy?.controller.abort();
}

/** Sends the conversation to the server and streams the reply into the page. */
async function generate() {
  if (!ui.model) return showError(new ApiError(0, 'Not connected to the server yet.'));
  const id = ui.currentId;
  const chat = chats.get(id);
  const s = settings.get();
  const messages = [
    ...(s.system ? [{ role: 'system', content: s.system }] : []),
    ...chat.messages.map(({ role, content }) => ({ role, content })),
  ];
  const m = { role: 'assistant', content: '' };
  const art = messageEl(m, false);
  art.classList.add('streaming');
  const bubble = art.querySelector('.bubble');
  $('thread').append(art);
  $('empty').hidden = true;
  scrollToEnd();

  const controller = new AbortController();
  ui.busy = { controller };
  setBusy(true);
  const t0 = performance.now();
  let tFirst = 0, tEnd = 0;
  const stats = {};
  // Text is shown once per frame: a fast model sends hundreds of chunks a second.
  const show = batched((t) => {
    bubble.append(t);
    scrollToEnd();
  });
  try {
    const { usage, finish } = await stream('chat', {
      model: ui.model, messages, session_id: id, ...samplingParams(s, { chat: true }),
    }, {
      signal: controller.signal,
      onText: (t) => {
        tEnd = performance.now();
        if (!tFirst) tFirst = tEnd;
        m.content += t;
        show(t);
      },
    });
    show.flush();
    if (usage) {
      stats.completion_tokens = usage.completion_tokens;
      stats.prompt_tokens = usage.prompt_tokens;
      stats.cached = usage.prompt_tokens_details?.cached_tokens ?? 0;
      stats.tps = rate(usage.completion_tokens, t0, tFirst, tEnd);
    }
    stats.finish = finish;
  } catch (e) {
    show.flush();
    if (e.name !== 'AbortError') {
      art.remove();
      ui.busy = null;
      setBusy(false);
      showError(e);
      await refreshSessions();
      return;
    }
    stats.stopped = true;
  }
  if (tFirst) stats.ttft = tFirst - t0;
  m.stats = stats;
  ui.busy = null;
  setBusy(false);
  const now = chats.get(id);
  if (now && (m.content || !stats.stopped)) {
    now.messages.push(m);
    chats.put(id, now);
  }
  if (id === ui.currentId) renderThread();
  await refreshSessions();
}

async function send(text) {
  if (ui.busy || !text.trim()) return;
  const id = ui.currentId;
  const chat = chats.get(id) || { title: '', messages: [], created: Date.now() };
  if (!chat.title) chat.title = text.trim().replace(/\s+/g, ' ').slice(0, 48);
  chat.messages.push({ role: 'user', content: text });
  chats.put(id, chat);
  $('input').value = '';
  autosize();
  notice('');
  renderThread();
  renderList();
  await generate();
}

async function regenerate() {
  if (ui.busy) return;
  const chat = chats.get(ui.currentId);
  if (!chat?.messages.length || chat.messages[chat.messages.length - 1].role !== 'assistant') return;
  chat.messages.pop();
  chats.put(ui.currentId, chat);
  renderThread();
  await generate();
}

// ---------------------------------------------------------------- completion tab

async function complete() {
  if (ui.busy || !ui.model) return;
  const prompt = $('prompt').value;
  if (!prompt) return $('prompt').focus();
  const out = $('complete-text');
  $('complete-prompt').textContent = prompt;
  out.textContent = '';
  $('complete-stats').textContent = '';
  const controller = new AbortController();
  ui.busy = { controller, completion: true };
  setBusy(true);
  const t0 = performance.now();
  let tFirst = 0, tEnd = 0;
  const st = {};
  const show = batched((t) => out.append(t));
  try {
    const { usage, finish } = await stream('completion', {
      model: ui.model, prompt, ...samplingParams(settings.get(), { chat: false }),
    }, {
      signal: controller.signal,
      onText: (t) => {
        tEnd = performance.now();
        if (!tFirst) tFirst = tEnd;
        show(t);
      },
    });
    show.flush();
    if (usage) {
      st.completion_tokens = usage.completion_tokens;
      st.tps = rate(usage.completion_tokens, t0, tFirst, tEnd);
    }
    st.finish = finish;
  } catch (e) {
    show.flush();
    if (e.name === 'AbortError') st.stopped = true;
    else showError(e);
  }
  if (tFirst) st.ttft = tFirst - t0;
  $('complete-stats').textContent = fmtStats(st);
  ui.busy = null;
  setBusy(false);
}

// ---------------------------------------------------------------- state files

async function exportState() {
  const id = ui.currentId;
  // The server decides, not ui.sessions: that list is refreshed only after a
  // reply has been shown, so a click right after a reply would find it stale.
  try {
    const r = await request('GET', `/v1/sessions/${encodeURIComponent(id)}/state`);
    const url = URL.createObjectURL(await r.blob());
    const a = el('a', { href: url, download: `${id}.safetensors` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) {
      notice('This conversation has no state on the server yet: send a message first.');
    } else {
      showError(e);
    }
  }
}

async function importState(file) {
  if (!file) return;
  const id = newId();
  try {
    await request('PUT', `/v1/sessions/${encodeURIComponent(id)}/state`, {
      body: await file.arrayBuffer(),
    });
  } catch (e) {
    return showError(e);
  }
  chats.put(id, { title: `Imported: ${file.name}`, messages: [], created: Date.now(), imported: file.name });
  await refreshSessions();
  select(id);
}

// ---------------------------------------------------------------- settings

function openSettings() {
  const f = $('settings-form');
  const s = settings.get();
  for (const k of SETTING_FIELDS) f.elements[k].value = s[k] ?? '';
  f.elements.api_key.value = apiKey.get();
  $('settings').returnValue = ''; // Escape keeps the last value: start from "not saved"
  $('settings').showModal();
}

async function closeSettings() {
  if ($('settings').returnValue !== 'save') return;
  const f = $('settings-form');
  const s = {};
  for (const k of SETTING_FIELDS) if (f.elements[k].value !== '') s[k] = f.elements[k].value;
  settings.set(s);
  const key = f.elements.api_key.value.trim();
  if (key !== apiKey.get()) {
    apiKey.set(key);
    try { await connect(); } catch (e) { showError(e); }
  }
}

// ---------------------------------------------------------------- layout

function openSidebar() {
  document.body.classList.add('sidebar-open');
  $('scrim').hidden = false;
  $('toggle-sidebar').setAttribute('aria-expanded', 'true');
  $('sidebar').querySelector('button')?.focus();
}

function closeSidebar() {
  if (!document.body.classList.contains('sidebar-open')) return;
  document.body.classList.remove('sidebar-open');
  $('scrim').hidden = true;
  $('toggle-sidebar').setAttribute('aria-expanded', 'false');
}

function showTab(which) {
  const chat = which === 'chat';
  $('tab-chat').setAttribute('aria-selected', String(chat));
  $('tab-complete').setAttribute('aria-selected', String(!chat));
  $('tab-chat').tabIndex = chat ? 0 : -1;
  $('tab-complete').tabIndex = chat ? -1 : 0;
  $('panel-chat').hidden = !chat;
  $('panel-complete').hidden = chat;
}

function autosize() {
  const t = $('input');
  t.style.height = 'auto';
  t.style.height = `${Math.min(t.scrollHeight + 2, 220)}px`;
  t.style.overflowY = t.scrollHeight > 218 ? 'auto' : 'hidden';
}

function wire() {
  $('composer').addEventListener('submit', (e) => {
    e.preventDefault();
    send($('input').value);
  });
  $('input').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send($('input').value);
    } else if (e.key === 'Escape' && ui.busy) {
      stop();
    }
  });
  $('input').addEventListener('input', autosize);
  $('stop').addEventListener('click', stop);
  $('complete-stop').addEventListener('click', stop);
  $('complete-run').addEventListener('click', complete);
  $('prompt').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) complete();
  });
  $('new-chat').addEventListener('click', newChat);
  $('messages').addEventListener('scroll', () => {
    const m = $('messages');
    ui.stick = m.scrollHeight - m.scrollTop - m.clientHeight < 40;
  });
  $('open-settings').addEventListener('click', openSettings);
  $('settings').addEventListener('close', closeSettings);
  $('settings-cancel').addEventListener('click', () => $('settings').close('cancel'));
  $('settings-reset').addEventListener('click', () => {
    for (const k of SETTING_FIELDS) $('settings-form').elements[k].value = '';
  });
  $('key-form').addEventListener('submit', tryKey);
  $('key-dialog').addEventListener('cancel', () => notice('This server needs an API key: enter it in Settings.', 'error'));
  $('export-state').addEventListener('click', exportState);
  $('import-state').addEventListener('click', () => $('import-file').click());
  $('import-file').addEventListener('change', (e) => {
    importState(e.target.files[0]);
    e.target.value = '';
  });
  $('notice-close').addEventListener('click', () => notice(''));
  $('toggle-sidebar').addEventListener('click', () =>
    document.body.classList.contains('sidebar-open') ? closeSidebar() : openSidebar());
  $('scrim').addEventListener('click', closeSidebar);
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape') closeSidebar();
  });
  $('tab-chat').addEventListener('click', () => showTab('chat'));
  $('tab-complete').addEventListener('click', () => showTab('complete'));
  for (const t of [$('tab-chat'), $('tab-complete')]) {
    t.addEventListener('keydown', (e) => {
      if (e.key !== 'ArrowLeft' && e.key !== 'ArrowRight') return;
      const other = t.id === 'tab-chat' ? 'complete' : 'chat';
      showTab(other);
      $(other === 'chat' ? 'tab-chat' : 'tab-complete').focus();
    });
  }
}

async function main() {
  wire();
  ui.currentId = current.get() || newId();
  current.set(ui.currentId);
  renderThread();
  renderList();
  try {
    await connect();
  } catch (e) {
    showError(e);
  }
  renderThread();
  $('input').focus();
}

main();
