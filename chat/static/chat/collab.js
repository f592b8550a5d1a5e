// Working together in the chat view (docs/protocol.md §8, §10): read state sent as messages scroll
// into view, the unread count in the tab title, "seen by" from the other members' markers, the
// delivery state of the user's own last message, drafts shared by the user's tabs and devices,
// @mention autocomplete and the owner's agent-mode control. chat.js owns the socket and the
// transcript and wires these parts in; each part only reads what chat.js hands it.

import { el, avatar } from './dom.js';

// A `read` goes out this long after the newest visible message changed: scrolling through a long
// history sends one command, not one per message (each counts against the `commands` rate).
const READ_DEBOUNCE_MS = 400;
// A draft is saved this long after the last keystroke (and at once when the page is hidden).
const DRAFT_DEBOUNCE_MS = 800;
// Suggestions shown at most.
const MENTION_MAX = 8;

export const AGENT_MODE_LABELS = {
  auto: 'Answers when addressed in a group',
  always: 'Answers every message',
  mention: 'Answers only when @mentioned',
  off: 'Never answers',
};

// ---- read state -------------------------------------------------------------------------------------

// A message counts as seen once at least half of it (or half of the viewport, for a tall one) is on
// screen while the page is visible. The tracker keeps the set of nodes on screen, so a page that
// becomes visible again (another tab was in front) marks what it shows without waiting for a scroll.
export class ReadTracker {
  constructor({ scroller, send, onChange }) {
    this.send = send; // (seq) => void: the `read` command
    this.onChange = onChange; // () => void: the marker moved (title, receipts)
    this.lastReadSeq = 0;
    this.visible = new Set();
    this.timer = null;
    this.observer = new IntersectionObserver((entries) => this.onIntersect(entries), {
      root: scroller, threshold: [0, 0.25, 0.5, 0.75, 1],
    });
    document.addEventListener('visibilitychange', () => this.refresh());
    window.addEventListener('focus', () => this.refresh());
  }

  observe(node) {
    this.observer.observe(node);
  }

  reset() {
    this.observer.disconnect();
    this.visible.clear();
  }

  onIntersect(entries) {
    for (const entry of entries) {
      const root = entry.rootBounds;
      const seen = entry.isIntersecting && (entry.intersectionRatio >= 0.5
        || (root && entry.intersectionRect.height >= root.height * 0.5));
      if (seen) this.visible.add(entry.target);
      else this.visible.delete(entry.target);
    }
    this.refresh();
  }

  // The newest seq on screen, if the page is being looked at.
  refresh() {
    if (document.visibilityState !== 'visible') return;
    let newest = 0;
    for (const node of this.visible) {
      if (!node.isConnected) {
        this.visible.delete(node);
        continue;
      }
      newest = Math.max(newest, Number(node.dataset.seq) || 0);
    }
    if (newest > this.lastReadSeq) this.schedule(newest);
  }

  schedule(seq) {
    this.wanted = Math.max(this.wanted || 0, seq);
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      const wanted = this.wanted;
      this.wanted = 0;
      if (wanted > this.lastReadSeq && this.send(wanted)) this.moved(wanted);
    }, READ_DEBOUNCE_MS);
  }

  // The marker as the server has it (subscribe's `last_read_seq`, or a `read` from another device).
  // Never backwards, like the server's.
  moved(seq) {
    if (seq <= this.lastReadSeq) return;
    this.lastReadSeq = seq;
    this.onChange();
  }
}

// The unread count in the tab title: "(3) Launch plan · Chatcore".
export function titleWithCount(baseTitle, count) {
  return count > 0 ? `(${count > 999 ? '999+' : count}) ${baseTitle}` : baseTitle;
}

// ---- receipts: seen by, delivery state ------------------------------------------------------------

// "Delivered" is what the server can honestly know without acknowledgements from clients: a member
// got a message once one of their sockets was subscribed to the conversation after it was stored
// (presence says so; a subscribed socket receives every event, with no gap) or they have read it.
// This page tracks, per member, the newest seq it saw them present at, and their read marker.
export class Receipts {
  constructor({ transcript, userId }) {
    this.transcript = transcript;
    this.userId = userId;
    this.markers = new Map(); // user id -> read marker
    this.presentAt = new Map(); // user id -> newest seq while the member was present
    this.names = new Map(); // user id -> username
  }

  setMember(user, { lastReadSeq, online, seq }) {
    if (!user || user.id === this.userId) return;
    this.names.set(user.id, user.username);
    if (typeof lastReadSeq === 'number') this.setMarker(user, lastReadSeq);
    if (online) this.present(user.id, seq);
  }

  setMarker(user, seq) {
    if (!user || user.id === this.userId) return;
    this.names.set(user.id, user.username);
    this.markers.set(user.id, Math.max(this.markers.get(user.id) || 0, seq));
  }

  present(userId, seq) {
    if (userId === this.userId) return;
    this.presentAt.set(userId, Math.max(this.presentAt.get(userId) || 0, seq));
  }

  // Rebuild every "seen by" row and the delivery line (cheap: one pass over the transcript).
  render(memberIds) {
    for (const row of this.transcript.querySelectorAll('[data-testid="seen-by"], [data-testid="delivery-state"]')) row.remove();
    const nodes = Array.from(this.transcript.querySelectorAll('[data-receipt-seq]'))
      .sort((a, b) => Number(a.dataset.receiptSeq) - Number(b.dataset.receiptSeq));
    if (!nodes.length) return;
    const seqs = nodes.map((node) => Number(node.dataset.receiptSeq));
    const readers = new Map();
    for (const [userId, marker] of this.markers) {
      // The last message at or below the member's marker: where their avatar sits.
      let lo = 0;
      let hi = seqs.length - 1;
      let at = -1;
      while (lo <= hi) {
        const mid = (lo + hi) >> 1;
        if (seqs[mid] <= marker) { at = mid; lo = mid + 1; } else { hi = mid - 1; }
      }
      if (at < 0) continue;
      if (!readers.has(at)) readers.set(at, []);
      readers.get(at).push(this.names.get(userId) || String(userId));
    }
    for (const [index, names] of readers) {
      names.sort();
      const body = nodes[index].querySelector('.msg-body') || nodes[index];
      body.append(el('div', { class: 'seen-by', testid: 'seen-by', 'data-users': names.join(','), title: `Seen by ${names.join(', ')}` },
        el('span', { class: 'seen-by-label', text: 'Seen by' }),
        ...names.map((name) => avatar(name))));
    }
    this.renderDelivery(nodes, memberIds);
  }

  // Under the user's own newest message: sent / delivered to N of M / read by K.
  renderDelivery(nodes, memberIds) {
    const mine = nodes.filter((node) => node.dataset.mine === 'true');
    const last = mine[mine.length - 1];
    if (!last) return;
    const seq = Number(last.dataset.receiptSeq);
    const others = memberIds.filter((id) => id !== this.userId);
    const read = others.filter((id) => (this.markers.get(id) || 0) >= seq).length;
    const delivered = others.filter((id) => (this.markers.get(id) || 0) >= seq || (this.presentAt.get(id) || 0) >= seq).length;
    let label = 'Sent';
    if (others.length && read === others.length) label = others.length === 1 ? 'Read' : 'Read by everyone';
    else if (others.length) label = `Delivered to ${delivered} of ${others.length}${read ? ` · read by ${read}` : ''}`;
    const body = last.querySelector('.msg-body') || last;
    body.append(el('div', {
      class: 'delivery', testid: 'delivery-state', 'data-delivered': delivered, 'data-read': read,
      'data-members': others.length, text: label,
      title: 'Delivered: a device of theirs was connected to this conversation after it was sent, or they read it',
    }));
  }
}

// ---- drafts -----------------------------------------------------------------------------------------

// Last write wins across the user's tabs and devices: a draft from elsewhere replaces the composer
// only while this tab has no unsaved edit of its own (its own save, newer, will win instead).
export class DraftSync {
  constructor({ textarea, save, afterApply }) {
    this.textarea = textarea;
    this.save = save; // (text) => Promise
    this.afterApply = afterApply;
    this.synced = ''; // the text the server has, as far as this tab knows
    this.dirty = false;
    this.timer = null;
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'hidden') this.flush();
    });
  }

  edited() {
    this.dirty = true;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.flush(), DRAFT_DEBOUNCE_MS);
  }

  async flush() {
    clearTimeout(this.timer);
    this.timer = null;
    const text = this.textarea.value;
    if (!this.dirty) return;
    if (text === this.synced) {
      this.dirty = false;
      return;
    }
    try {
      await this.save(text);
      this.synced = text;
      if (this.textarea.value === text) this.dirty = false;
    } catch (err) { /* offline: saved on the next edit, or after reconnecting */ }
  }

  // The message was sent: nothing is left to draft, on any device.
  cleared() {
    clearTimeout(this.timer);
    this.dirty = true;
    this.flush();
  }

  // From subscribe's reply (null: no draft saved) or a `draft` event of another device.
  apply(draft) {
    const text = draft && typeof draft.text === 'string' ? draft.text : '';
    if (this.dirty && this.textarea.value !== this.synced) return;
    this.synced = text;
    this.dirty = false;
    if (this.textarea.value !== text) {
      this.textarea.value = text;
      this.afterApply();
    }
  }
}

// ---- @mentions --------------------------------------------------------------------------------------

// The `@word` just before the caret, as the server parses mentions (docs/protocol.md §8).
const MENTION_AT_CARET = /(^|[^\p{L}\p{N}_])@([\p{L}\p{N}_.@+-]*)$/u;

export class MentionPicker {
  constructor({ textarea, candidates }) {
    this.textarea = textarea;
    this.candidates = candidates; // () => [{ name, label, kind }]
    this.items = [];
    this.active = 0;
    this.list = el('ul', { class: 'mention-list', testid: 'mention-list', role: 'listbox', hidden: true });
    textarea.closest('form').append(this.list);
    textarea.setAttribute('aria-autocomplete', 'list');
    textarea.addEventListener('input', () => this.update());
    textarea.addEventListener('click', () => this.update());
    textarea.addEventListener('blur', () => setTimeout(() => this.close(), 150));
    // Capture: the composer's own Enter-to-send must not see a key that picks a suggestion.
    textarea.addEventListener('keydown', (event) => this.onKey(event), true);
  }

  get open() {
    return !this.list.hidden;
  }

  query() {
    const caret = this.textarea.selectionStart;
    if (caret !== this.textarea.selectionEnd) return null;
    const match = MENTION_AT_CARET.exec(this.textarea.value.slice(0, caret));
    return match ? { prefix: match[2], start: caret - match[2].length - 1, end: caret } : null;
  }

  update() {
    const q = this.query();
    if (!q) {
      this.close();
      return;
    }
    const prefix = q.prefix.toLowerCase();
    this.items = this.candidates()
      .filter((c) => c.name.toLowerCase().startsWith(prefix))
      .slice(0, MENTION_MAX);
    if (!this.items.length) {
      this.close();
      return;
    }
    this.active = Math.min(this.active, this.items.length - 1);
    this.render();
  }

  render() {
    this.list.replaceChildren(...this.items.map((item, index) => el('li', {
      class: `mention-item ${index === this.active ? 'is-active' : ''}`, role: 'option', testid: 'mention-option',
      'data-name': item.name, 'aria-selected': index === this.active ? 'true' : 'false',
      onmousedown: (event) => { event.preventDefault(); this.pick(index); },
    }, avatar(item.name, item.kind), el('span', { class: 'mention-name', text: `@${item.name}` }),
    item.label ? el('span', { class: 'mention-label', text: item.label }) : null)));
    this.list.hidden = false;
  }

  close() {
    this.list.hidden = true;
    this.items = [];
    this.active = 0;
  }

  onKey(event) {
    if (!this.open || event.isComposing) return;
    const keys = { ArrowDown: 1, ArrowUp: -1 };
    if (event.key in keys) {
      this.active = (this.active + keys[event.key] + this.items.length) % this.items.length;
      this.render();
    } else if (event.key === 'Enter' || event.key === 'Tab') {
      this.pick(this.active);
    } else if (event.key === 'Escape') {
      this.close();
    } else {
      return;
    }
    event.preventDefault();
    event.stopImmediatePropagation();
  }

  pick(index) {
    const item = this.items[index];
    const q = this.query();
    if (!item || !q) return;
    const value = this.textarea.value;
    const insert = `@${item.name} `;
    this.textarea.value = value.slice(0, q.start) + insert + value.slice(q.end);
    const caret = q.start + insert.length;
    this.textarea.setSelectionRange(caret, caret);
    this.close();
    this.textarea.dispatchEvent(new Event('input', { bubbles: true }));
    this.textarea.focus();
  }
}

// ---- the agent's mode (owners change it) ----------------------------------------------------------

export class AgentModeControl {
  constructor({ root, conversationId, onChange, onError }) {
    this.select = root.querySelector('[data-testid="agent-mode"]');
    this.label = root.querySelector('[data-testid="agent-mode-label"]');
    this.conversationId = conversationId;
    this.onChange = onChange;
    this.onError = onError;
    this.mode = root.dataset.agentMode || 'auto';
    if (this.select) this.select.addEventListener('change', () => this.change(this.select.value));
  }

  async change(mode) {
    const before = this.mode;
    this.select.disabled = true;
    try {
      const csrf = document.querySelector('input[name="csrfmiddlewaretoken"]');
      const response = await fetch(`/api/conversations/${encodeURIComponent(this.conversationId)}/`, {
        method: 'PATCH',
        credentials: 'same-origin',
        headers: { 'Content-Type': 'application/json', Accept: 'application/json', 'X-CSRFToken': csrf ? csrf.value : '' },
        body: JSON.stringify({ agent_mode: mode }),
      });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) throw new Error((body.error && body.error.message) || `HTTP ${response.status}`);
      this.mode = body.agent_mode;
      this.onChange(this.mode);
    } catch (err) {
      this.select.value = before;
      this.onError(`Could not change when the assistant answers: ${err.message}`);
    } finally {
      this.select.disabled = false;
      this.select.title = AGENT_MODE_LABELS[this.select.value] || '';
    }
  }
}
