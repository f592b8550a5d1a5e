// Small helpers shared by the chat page's modules: the plug-in event hook, ids, times and the
// canonical JSON used to show tool arguments and results.

// The plug-in hook (see ChatView's constructor): a window event `chat:<name>` with `detail`.
export function emit(name, detail) {
  window.dispatchEvent(new CustomEvent(`chat:${name}`, { detail }));
}

export function uuid4() {
  if (window.crypto && typeof window.crypto.randomUUID === 'function') return window.crypto.randomUUID();
  // Non-secure contexts have no randomUUID; getRandomValues works everywhere.
  const bytes = window.crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

export function formatTime(ts) {
  if (!ts) return '';
  const date = new Date(ts);
  if (Number.isNaN(date.getTime())) return '';
  const sameDay = date.toDateString() === new Date().toDateString();
  const time = date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  return sameDay ? time : `${date.toLocaleDateString([], { month: 'short', day: 'numeric' })} ${time}`;
}

// Keys sorted: a live frame and the same event read back from the database (PostgreSQL jsonb
// reorders keys) must render identically, or two clients would show different transcripts.
export function canonical(value) {
  if (Array.isArray(value)) return value.map(canonical);
  if (value && typeof value === 'object') {
    const out = {};
    for (const key of Object.keys(value).sort()) out[key] = canonical(value[key]);
    return out;
  }
  return value;
}

export function pretty(value) {
  if (value === undefined) return '';
  try {
    return JSON.stringify(canonical(value), null, 2);
  } catch (err) {
    return String(value);
  }
}

export function preview(value, max = 80) {
  let text;
  if (value && typeof value === 'object' && !Array.isArray(value)) {
    const keys = Object.keys(value);
    if (keys.length === 1) text = typeof value[keys[0]] === 'string' ? value[keys[0]] : JSON.stringify(canonical(value[keys[0]]));
    else if ('value' in value) text = JSON.stringify(canonical(value.value));
    else text = JSON.stringify(canonical(value));
  } else {
    text = typeof value === 'string' ? value : JSON.stringify(value);
  }
  text = text === undefined ? '' : text;
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}
