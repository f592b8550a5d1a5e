// Messages written but not yet seen in the transcript (the outbox), keyed by client_msg_id.
// Sending is idempotent: a retry reuses the same client_msg_id, so a send whose reply was lost is
// stored once (docs/protocol.md §3, Idempotency). Offline, a message waits here and goes out after
// the next (re)subscribe; the outbox survives a reload of the tab (sessionStorage).

import { el, avatar } from './dom.js';
import { uuid4 } from './util.js';
import { BACKOFF_CAP_MS } from './connection.js';

const SEND_TIMEOUT_MS = 8000;

export class Outbox {
  constructor(view) {
    this.view = view;
    this.pending = new Map();
    this.sendReplies = []; // what each send was answered (for tests: whether it started a run)
    this.storageKey = `chat.pending.${view.conversationId}`;
    this.node = el('div', { class: 'outbox', testid: 'outbox' });
    view.q('transcript').after(this.node);
  }

  get size() {
    return this.pending.size;
  }

  add(text) {
    const p = { id: uuid4(), text, state: 'waiting', inflight: false, attempts: 0, error: null, node: null };
    this.pending.set(p.id, p);
    this.save();
    this.render(p);
    this.trySend(p);
  }

  async trySend(p) {
    const view = this.view;
    if (!this.pending.has(p.id) || p.inflight) return;
    if (!view.synced) {
      p.state = 'waiting';
      this.render(p);
      return; // sent after the next successful (re)subscribe
    }
    p.inflight = true;
    p.attempts += 1;
    p.state = 'sending';
    p.error = null;
    this.render(p);
    try {
      const reply = await view.client.request({
        type: 'send', conversation: view.conversationId, client_msg_id: p.id, text: p.text,
      }, SEND_TIMEOUT_MS);
      p.inflight = false;
      const seq = reply.message && reply.message.seq;
      this.sendReplies.push({ client_msg_id: p.id, seq, run_id: reply.run_id || null });
      if (reply.run_id) view.ranRun(reply.run_id, reply.message && reply.message.id);
      if (!this.pending.has(p.id)) return;
      if (seq <= view.transcript.lastSeq && view.synced) {
        this.delivered(p.id); // its event has already been rendered
        return;
      }
      p.state = 'sent';
      this.render(p);
    } catch (err) {
      p.inflight = false;
      if (!this.pending.has(p.id)) return;
      if (err.code === 'closed') {
        p.state = 'waiting';
      } else if (err.code === 'timeout') {
        p.state = 'retrying';
        setTimeout(() => this.trySend(p), 500);
      } else if (err.code === 'rate_limited' || err.code === 'unavailable' || err.code === 'internal') {
        p.state = 'retrying';
        p.retryReason = err.code === 'rate_limited' ? 'Sending too fast' : 'Server busy';
        p.detail = err.code === 'rate_limited' ? err.message : '';
        const wait = err.retryAfterMs || Math.min(BACKOFF_CAP_MS, 1000 * 2 ** Math.min(p.attempts, 4));
        setTimeout(() => this.trySend(p), wait);
      } else {
        p.state = 'failed';
        p.error = err.message || err.code;
      }
      this.render(p);
    }
  }

  flush() {
    for (const p of this.pending.values()) {
      if (p.state !== 'failed' && !p.inflight) this.trySend(p);
    }
  }

  disconnected() {
    for (const p of this.pending.values()) {
      p.inflight = false;
      if (p.state !== 'failed') p.state = 'waiting';
      this.render(p);
    }
  }

  render(p) {
    if (!this.pending.has(p.id)) return;
    const view = this.view;
    if (!p.node) {
      p.statusEl = el('span', { class: 'pending-status', testid: 'pending-status' });
      p.actionsEl = el('span', { class: 'pending-actions' });
      p.node = el('article', { class: 'msg msg-mine msg-pending', testid: 'pending-message', 'data-client-msg-id': p.id },
        avatar(view.username),
        el('div', { class: 'msg-body' },
          el('div', { class: 'msg-head' },
            el('span', { class: 'msg-author', text: view.username }),
            el('span', { class: 'msg-you', text: 'you' }),
            p.statusEl, p.actionsEl),
          el('div', { class: 'msg-text', text: p.text })));
      view.withScroll(() => this.node.append(p.node));
    }
    p.node.dataset.state = p.state;
    const labels = {
      waiting: 'Waiting for connection…', sending: 'Sending…', sent: 'Sent',
      retrying: p.retryReason ? `${p.retryReason} — retrying…` : 'Retrying…',
      failed: `Not sent: ${p.error || 'error'}`,
    };
    p.statusEl.textContent = labels[p.state] || p.state;
    // The server's words say which limit was hit and for how long (a tooltip: the row stays short).
    p.statusEl.title = p.state === 'retrying' && p.detail ? p.detail : '';
    p.actionsEl.replaceChildren();
    if (p.state === 'failed') {
      p.actionsEl.append(
        el('button', { type: 'button', class: 'btn btn-ghost btn-xs', text: 'Retry',
          onclick: () => { p.state = 'waiting'; this.trySend(p); } }),
        el('button', { type: 'button', class: 'btn btn-ghost btn-xs', text: 'Discard',
          onclick: () => this.delivered(p.id) }));
    }
  }

  // Its message event arrived (or it was discarded): it leaves the outbox.
  delivered(id) {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    if (p.node) p.node.remove();
    this.save();
    this.view.updateEmpty();
  }

  save() {
    try {
      const items = Array.from(this.pending.values(), (p) => ({ id: p.id, text: p.text }));
      if (items.length) sessionStorage.setItem(this.storageKey, JSON.stringify(items));
      else sessionStorage.removeItem(this.storageKey);
    } catch (err) { /* storage unavailable: pending messages live in memory only */ }
  }

  restore() {
    let items = [];
    try {
      items = JSON.parse(sessionStorage.getItem(this.storageKey) || '[]');
    } catch (err) {
      items = [];
    }
    if (!Array.isArray(items) || !this.view.canWrite) return;
    for (const item of items) {
      if (!item || typeof item.id !== 'string' || typeof item.text !== 'string') continue;
      const p = { id: item.id, text: item.text, state: 'waiting', inflight: false, attempts: 0, error: null, node: null };
      this.pending.set(p.id, p);
      this.render(p);
    }
  }
}
