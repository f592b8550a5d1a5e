// The other people in the conversation (docs/protocol.md §5, §10): presence (who is a member and
// who is online, in the header), who is typing, and their read markers for the receipts (collab.js).

import { el, avatar } from './dom.js';
import { renderWatchers } from './runs.js';

export class People {
  constructor(view) {
    this.view = view;
    this.members = new Map(); // user id -> { user, online }
    this.typists = new Map(); // user id -> { name, timer }
    this.typingEl = view.q('typing');
    this.presenceEl = view.q('presence');
  }

  // ---- typing (ephemeral) ----

  onTyping(data) {
    const user = data.user || {};
    if (user.id === this.view.userId) return;
    const existing = this.typists.get(user.id);
    if (existing) clearTimeout(existing.timer);
    if (data.state === 'start') {
      const timer = setTimeout(() => {
        this.typists.delete(user.id);
        this.renderTyping();
      }, data.expires_ms || 6000);
      this.typists.set(user.id, { name: user.username, timer });
    } else {
      this.typists.delete(user.id);
    }
    this.renderTyping();
  }

  renderTyping() {
    const names = Array.from(this.typists.values(), (t) => t.name);
    if (!names.length) {
      this.typingEl.replaceChildren();
      return;
    }
    const who = names.length === 1 ? `${names[0]} is` : names.length === 2 ? `${names[0]} and ${names[1]} are` : 'Several people are';
    this.typingEl.replaceChildren(el('span', { class: 'typing-dots', 'aria-hidden': 'true' }, el('i'), el('i'), el('i')), ` ${who} typing…`);
  }

  // ---- presence ----

  async refresh() {
    const view = this.view;
    try {
      const reply = await view.client.request({ type: 'presence', conversation: view.conversationId });
      this.members.clear();
      for (const member of reply.members || []) {
        if (!member.user) continue;
        this.members.set(member.user.id, { user: member.user, online: Boolean(member.online) });
        view.receipts.setMember(member.user, { lastReadSeq: member.last_read_seq, online: member.online, seq: view.transcript.lastSeq });
      }
      this.render();
    } catch (err) { /* presence is decoration */ }
  }

  onPresence(data) {
    const view = this.view;
    for (const user of data.joined || []) {
      const member = this.members.get(user.id) || { user, online: false };
      member.online = true;
      this.members.set(user.id, member);
      // Subscribed now: their socket has (or is replaying) everything up to here.
      view.receipts.present(user.id, view.transcript.lastSeq);
    }
    for (const user of data.left || []) {
      const member = this.members.get(user.id);
      if (member) member.online = false;
      const typist = this.typists.get(user.id);
      if (typist) {
        clearTimeout(typist.timer);
        this.typists.delete(user.id);
        this.renderTyping();
      }
    }
    this.render();
  }

  disconnected() {
    for (const typist of this.typists.values()) clearTimeout(typist.timer);
    this.typists.clear();
    this.renderTyping();
    for (const member of this.members.values()) member.online = member.user.id === this.view.userId;
    this.render();
  }

  // A durable event reached this page: every member present now has it too.
  delivered(seq) {
    for (const member of this.members.values()) {
      if (member.online) this.view.receipts.present(member.user.id, seq);
    }
  }

  onRead(data) {
    const view = this.view;
    const user = data.user || {};
    if (typeof data.seq !== 'number') return;
    if (user.id === view.userId) {
      view.readTracker.moved(data.seq); // another tab or device of this user read up to here
    } else {
      view.receipts.setMarker(user, data.seq);
      view.scheduleReceipts();
    }
  }

  mentionCandidates() {
    const view = this.view;
    const people = Array.from(this.members.values())
      .filter((m) => m.user.id !== view.userId)
      .map((m) => ({ name: m.user.username, label: m.online ? 'online' : '', kind: 'user' }))
      .sort((a, b) => a.name.localeCompare(b.name));
    const agent = view.agent ? [{ name: 'assistant', label: 'the assistant', kind: 'agent' }] : [];
    return [...agent, ...people];
  }

  render() {
    const view = this.view;
    for (const run of view.transcript.runs.values()) if (run.status === 'running') renderWatchers(run, this.members);
    view.composer.updatePlaceholder();
    view.scheduleReceipts();
    const members = Array.from(this.members.values())
      .sort((a, b) => Number(b.online) - Number(a.online) || a.user.username.localeCompare(b.user.username));
    this.presenceEl.replaceChildren(...members.map((m) => {
      const state = m.online ? 'online' : 'offline';
      return el('li', { class: `presence-member ${m.online ? 'is-online' : ''}`, testid: 'presence-member',
        'data-username': m.user.username, 'data-online': m.online ? 'true' : 'false',
        title: `${m.user.username} — ${state}` },
      avatar(m.user.username),
      // The dot is decoration; a screen reader hears the name and the state.
      el('span', { class: 'visually-hidden', text: `${m.user.username}, ${state}` }));
    }));
  }
}
