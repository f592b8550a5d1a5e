// Error toasts without noise: one toast per distinct error (its code and, for rate limits, the limit
// it names), updated in place when the same error comes again instead of stacking up, at most
// MAX_VISIBLE on screen (the oldest goes), each dismissed by itself after a while or by its button.

import { el } from './dom.js';

const MAX_VISIBLE = 3;
const DISMISS_MS = 6000;

export class Toasts {
  constructor() {
    this.container = el('div', { class: 'toasts', testid: 'toasts' }); // each toast is its own role=alert
    document.body.append(this.container);
    this.byKey = new Map(); // key -> { node, textEl, timer, count }
  }

  // `key` groups repeats (default: the message itself). Returns the toast's node.
  show(message, { key = message, kind = 'error' } = {}) {
    let toast = this.byKey.get(key);
    if (toast) {
      toast.count += 1;
      toast.textEl.textContent = message;
      toast.node.dataset.count = String(toast.count);
      clearTimeout(toast.timer);
    } else {
      const textEl = el('span', { class: 'toast-text', text: message });
      const node = el('div', { class: `toast toast-${kind}`, testid: 'toast', role: 'alert', 'data-key': key, 'data-count': '1' },
        textEl,
        el('button', { type: 'button', class: 'toast-close', 'aria-label': 'Dismiss', text: '×',
          onclick: () => this.dismiss(key) }));
      toast = { node, textEl, timer: null, count: 1 };
      this.byKey.set(key, toast);
      this.container.append(node);
      while (this.byKey.size > MAX_VISIBLE) this.dismiss(this.byKey.keys().next().value);
    }
    toast.timer = setTimeout(() => this.dismiss(key), DISMISS_MS);
    return toast.node;
  }

  // A server error ({code, message, limit}) or a RequestError: keyed by its code and limit, so
  // "sending too fast" and "agent-run quota reached" are two toasts, and ten of either are one.
  error(err, prefix = '') {
    const code = err.code || 'error';
    const text = err.message || code;
    return this.show(prefix ? `${prefix}: ${text}` : text, { key: `${code}|${err.limit || ''}|${prefix}` });
  }

  dismiss(key) {
    const toast = this.byKey.get(key);
    if (!toast) return;
    clearTimeout(toast.timer);
    toast.node.remove();
    this.byKey.delete(key);
  }
}
