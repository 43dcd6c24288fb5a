// What the browser keeps: each conversation's title and text (the server keeps
// its state, not its text), the current conversation and the settings.
// All in localStorage; the API key is kept apart, in sessionStorage (api.js).

const CHATS = 'metastate.chats';
const CURRENT = 'metastate.current';
const SETTINGS = 'metastate.settings';

function load(key, fallback) {
  try {
    const v = JSON.parse(localStorage.getItem(key));
    return v && typeof v === 'object' ? v : fallback;
  } catch {
    return fallback;
  }
}

function save(key, value) {
  try {
    localStorage.setItem(key, JSON.stringify(value));
  } catch { /* storage full or disabled: the page still works for this visit */ }
}

/** A new session id: what the server accepts ([A-Za-z0-9._:-], 1-128). */
export function newId() {
  const b = new Uint8Array(8);
  crypto.getRandomValues(b);
  return 'chat-' + Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

export const chats = {
  all: () => load(CHATS, {}),
  get(id) {
    return this.all()[id] || null;
  },
  put(id, chat) {
    const all = this.all();
    all[id] = { ...chat, updated: Date.now() };
    save(CHATS, all);
  },
  remove(id) {
    const all = this.all();
    delete all[id];
    save(CHATS, all);
  },
};

export const current = {
  get: () => localStorage.getItem(CURRENT) || '',
  set: (id) => (id ? localStorage.setItem(CURRENT, id) : localStorage.removeItem(CURRENT)),
};

export const SETTING_FIELDS = ['temperature', 'top_p', 'top_k', 'max_tokens', 'presence_penalty',
  'frequency_penalty', 'penalty_decay', 'state', 'system'];

export const settings = {
  get: () => load(SETTINGS, {}),
  set: (s) => save(SETTINGS, s),
};

/** The request fields the settings give (empty ones are left to the server). */
export function samplingParams(s, { chat }) {
  const out = {};
  for (const k of ['temperature', 'top_p', 'presence_penalty', 'frequency_penalty', 'penalty_decay']) {
    if (s[k] !== undefined && s[k] !== '') out[k] = Number(s[k]);
  }
  for (const k of ['top_k', 'max_tokens']) {
    if (s[k] !== undefined && s[k] !== '') out[k] = Math.trunc(Number(s[k]));
  }
  if (s.state) out.state = s.state;
  if (!chat && out.max_tokens === undefined) out.max_tokens = 200;
  return out;
}
