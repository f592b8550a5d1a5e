// The chat view (/c/<id>/): a chat.v1 client (docs/protocol.md) in plain ES2020 modules, no
// framework, no build. This module wires the parts together and owns the sync:
//
// * First load: `history` (newest page, history.js) is rendered, then `subscribe` with since_seq =
//   the last seq of that page, so the server replays whatever happened in between. Every reconnect
//   subscribes again with since_seq = the last seq seen.
// * A durable event with seq <= the last one seen is ignored (transcript.js), so a replay never
//   duplicates anything; events that arrive while a sync is under way wait in a buffer.
// * `recovered: false` (too much missed): the newest history page is reloaded and a notice is shown.
//
// The parts: connection.js (the socket), transcript.js + runs.js (rendering), markdown.js,
// history.js (paging), outbox.js + composer.js (writing), actions.js (per-message actions),
// people.js (presence, typing), collab.js (read state, receipts, drafts, mentions), toasts.js.
//
// Plug-ins (approvals.js, sidebar) listen to window events 'chat:event' (each durable event
// applied, in seq order), 'chat:reset' (the transcript is rebuilt), 'chat:active-runs' (subscribe's
// active_runs), 'chat:notification', 'chat:notifications-read', and send commands with
// window.chatHooks.request(frame), which resolves to the reply.

import { el } from './dom.js';
import { AgentModeControl, ReadTracker, Receipts, titleWithCount } from './collab.js';
import { Client } from './connection.js';
import { emit } from './util.js';
import { Toasts } from './toasts.js';
import { Transcript } from './transcript.js';
import { History } from './history.js';
import { Outbox } from './outbox.js';
import { Composer } from './composer.js';
import { People } from './people.js';
import { Actions } from './actions.js';
import { showConnection } from './status.js';

const STICK_TO_BOTTOM_PX = 120;
const HIGHLIGHT_MS = 2000;

class ChatView {
  constructor(root) {
    this.root = root;
    this.conversationId = root.dataset.conversationId;
    this.role = root.dataset.role;
    this.canWrite = this.role === 'owner' || this.role === 'member';
    this.username = root.dataset.username;
    this.userId = Number(root.dataset.userId);
    this.agent = root.dataset.agent || '';
    this.agentMode = root.dataset.agentMode || 'auto';
    this.baseTitle = document.title;

    this.q = (testid) => document.querySelector(`[data-testid="${testid}"]`);
    this.scroller = this.q('scroller');
    this.staleBanner = this.q('stale-banner');
    this.skippedNotice = this.q('skipped-notice');
    this.loadingEl = this.q('transcript-loading');
    this.emptyEl = this.q('transcript-empty');
    // Screen readers hear each finished message or answer once, here; the transcript itself is not
    // a live region (a streaming answer would be read out chunk by chunk).
    this.liveEl = el('div', { class: 'visually-hidden', testid: 'announcer', role: 'log', 'aria-live': 'polite' });
    root.append(this.liveEl);

    this.stats = { duplicatesIgnored: 0, gaps: 0, resyncs: 0 };
    this.loaded = false;
    this.synced = false;
    this.syncing = false;
    this.buffer = [];
    this.everSynced = false;
    this.myRuns = new Set(); // runs this page started (send, regenerate): their Stop is ours

    this.toasts = new Toasts();
    this.readTracker = new ReadTracker({
      scroller: this.scroller,
      send: (seq) => this.synced && this.client.send({ type: 'read', conversation: this.conversationId, seq }),
      onChange: () => this.updateUnread(),
    });
    this.actions = new Actions(this);
    this.transcript = new Transcript(this);
    this.receipts = new Receipts({ transcript: this.transcript.node, userId: this.userId });
    this.receiptsFrame = 0;
    this.people = new People(this);
    this.members = this.people.members;
    this.outbox = new Outbox(this);
    this.composer = new Composer(this);
    this.history = new History(this);
    this.modeControl = new AgentModeControl({
      root: this.root,
      conversationId: this.conversationId,
      onChange: (mode) => { this.agentMode = mode; this.root.dataset.agentMode = mode; this.composer.updatePlaceholder(); },
      onError: (message) => this.toasts.show(message),
    });

    const scheme = window.location.protocol === 'https:' ? 'wss' : 'ws';
    this.client = new Client(`${scheme}://${window.location.host}/ws/chat/`, {
      onState: (state, detail) => this.renderConnection(state, detail),
      onWelcome: (welcome) => this.onWelcome(welcome),
      onFrame: (frame) => this.onFrame(frame),
      onDisconnect: () => this.onDisconnect(),
      onServerError: (error) => this.toasts.error(error),
    });

    const close = this.skippedNotice.querySelector('.banner-close');
    if (close) close.addEventListener('click', () => { this.skippedNotice.hidden = true; });
    this.outbox.restore();
    this.composer.focus();
    this.client.connect();

    window.chatHooks = { request: (frame) => this.client.request(frame) };
    // For tests and debugging: read-only view of the sync bookkeeping.
    const view = this;
    window.__chat = {
      get lastSeq() { return view.transcript.lastSeq; },
      get stats() { return { ...view.stats }; },
      get state() { return view.client.state; },
      get synced() { return view.synced; },
      get pending() { return Array.from(view.outbox.pending.keys()); },
      get lastReadSeq() { return view.readTracker.lastReadSeq; },
      get unread() { return view.unreadCount(); },
      get sendReplies() { return view.outbox.sendReplies.map((r) => ({ ...r })); },
      get historyUnit() { return view.history.unit; },
    };
  }

  // ---- connection state ----

  renderConnection(state, detail = {}) {
    showConnection(this, state, detail);
    this.updateStale();
  }

  updateStale() {
    const stale = this.client ? !(this.client.state === 'online' && this.synced) : false;
    this.staleBanner.hidden = !(stale && (this.everSynced || this.client.state === 'offline'));
    this.root.classList.toggle('is-stale', stale && this.everSynced);
  }

  // ---- scrolling ----

  isNearBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < STICK_TO_BOTTOM_PX;
  }

  // Run `fn` (which grows the transcript) keeping the reader where they were: at the bottom if
  // they were there, else on the same content.
  withScroll(fn) {
    const stick = this.isNearBottom();
    fn();
    if (stick) this.scrollToBottom();
  }

  scrollToBottom() {
    this.scroller.scrollTop = this.scroller.scrollHeight;
  }

  // "↪ in reply to": bring the question into view and flash it.
  focusMessage(messageId) {
    const message = this.transcript.messages.get(messageId);
    if (!message) return;
    message.node.scrollIntoView({ block: 'center' });
    message.node.focus({ preventScroll: true });
    message.node.classList.remove('msg-highlight');
    void message.node.offsetWidth; // restart the animation when clicked twice
    message.node.classList.add('msg-highlight');
    setTimeout(() => message.node.classList.remove('msg-highlight'), HIGHLIGHT_MS);
  }

  updateEmpty() {
    const empty = this.transcript.node.childElementCount === 0 && this.outbox.size === 0;
    this.emptyEl.hidden = !(empty && this.loaded);
    this.loadingEl.hidden = this.loaded;
    this.history.button.hidden = !this.history.hasMore;
  }

  // A finished message or answer, said once to screen readers (live only, not history or replays).
  announce(text) {
    if (!this.synced || this.syncing) return;
    const short = text.length > 300 ? `${text.slice(0, 299)}…` : text;
    this.liveEl.replaceChildren(el('p', { text: short }));
  }

  // This page started (or queued) run `runId` for question `triggerId`.
  ranRun(runId, triggerId) {
    this.myRuns.add(runId);
    const run = this.transcript.runs.get(runId);
    const busy = Array.from(this.transcript.runs.values()).some((r) => r.status === 'running' && r.id !== runId);
    if (run) this.transcript.updateRunControls(run);
    else if (busy) this.withScroll(() => this.transcript.queued(runId, triggerId || null));
  }

  async cancelRun(run) {
    if ((run.status !== 'running' && run.status !== 'queued') || run.cancelRequested) return;
    run.cancelRequested = true;
    this.transcript.updateRunControls(run);
    run.statusEl.textContent = 'Stopping…';
    try {
      await this.client.request({ type: 'cancel', run_id: run.id });
    } catch (err) {
      run.cancelRequested = false;
      this.transcript.updateRunControls(run);
      if (err.code !== 'conflict') this.toasts.error(err, 'Could not stop the run');
    }
  }

  // ---- connection lifecycle ----

  onWelcome(welcome) {
    if (welcome.user && welcome.user.id !== undefined) this.userId = welcome.user.id;
    this.receipts.userId = this.userId;
    this.sync();
  }

  onDisconnect() {
    this.synced = false;
    this.syncing = false;
    this.buffer = [];
    this.outbox.disconnected();
    for (const run of this.transcript.runs.values()) run.cancelRequested = false;
    this.people.disconnected();
    this.updateStale();
  }

  async sync() {
    this.syncing = true;
    this.buffer = [];
    try {
      if (!this.loaded) {
        await this.history.loadNewest();
        this.loaded = true;
        this.updateEmpty();
        this.scrollToBottom();
      }
      const reply = await this.client.request({
        type: 'subscribe', conversation: this.conversationId, since_seq: this.transcript.lastSeq,
      });
      if (reply.recovered === false) {
        // Too much was missed for a replay: start over from the newest history page.
        this.stats.resyncs += 1;
        await this.history.loadNewest();
        this.skippedNotice.hidden = false;
        this.scrollToBottom();
      }
      this.transcript.seedActiveRuns(reply.active_runs || [], this.history.hasMore);
      this.readTracker.moved(reply.last_read_seq || 0);
      if (this.composer.drafts) this.composer.drafts.apply(reply.draft || null);
      emit('active-runs', reply.active_runs || []);
      const buffered = this.buffer;
      this.buffer = [];
      this.withScroll(() => {
        for (const frame of buffered) this.transcript.apply(frame);
      });
      this.syncing = false;
      this.synced = true;
      this.everSynced = true;
      this.updateStale();
      this.updateEmpty();
      this.outbox.flush();
      this.people.refresh();
      this.actions.loadRatings();
      this.updateUnread();
      this.readTracker.refresh();
      this.history.checkNearTop();
    } catch (err) {
      this.syncing = false;
      if (err.code === 'closed') return; // the reconnect resyncs
      if (err.code === 'not_found' || err.code === 'forbidden') {
        this.loaded = true;
        this.updateEmpty();
        this.toasts.show('This conversation is not available to you any more.');
        this.client.fatal = 'forbidden';
        this.client.teardown();
        this.client.setState('offline', { reason: 'forbidden' });
        this.onDisconnect();
        return;
      }
      this.client.drop(`sync failed: ${err.code}`);
    }
  }

  onFrame(frame) {
    if (frame.conversation !== undefined && frame.conversation !== this.conversationId) return;
    switch (frame.type) {
      case 'typing': this.people.onTyping(frame.data || {}); return;
      case 'presence': this.people.onPresence(frame.data || {}); return;
      case 'read': this.people.onRead(frame.data || {}); return;
      case 'draft': if (this.composer.drafts) this.composer.drafts.apply(frame.data || null); return;
      // For the notifications bell (notifications.js).
      case 'notification': emit('notification', frame); return;
      case 'notifications_read': emit('notifications-read', frame.data); return;
      default: break;
    }
    if (typeof frame.seq !== 'number') return;
    if (this.syncing) {
      this.buffer.push(frame);
      return;
    }
    this.withScroll(() => this.transcript.apply(frame));
    this.updateEmpty();
  }

  // ---- read state, receipts, unread (collab.js) ----

  // A durable event reached this page.
  noteDelivered(frame) {
    this.people.delivered(frame.seq);
    this.updateUnread();
    this.scheduleReceipts();
    this.readTracker.refresh();
  }

  unreadCount() {
    return this.transcript.unreadCount(this.readTracker.lastReadSeq, this.userId);
  }

  updateUnread() {
    const count = this.unreadCount();
    this.root.dataset.unread = String(count);
    document.title = titleWithCount(this.baseTitle, count);
  }

  scheduleReceipts() {
    if (this.receiptsFrame) return;
    this.receiptsFrame = requestAnimationFrame(() => {
      this.receiptsFrame = 0;
      this.receipts.render(Array.from(this.members.keys()));
    });
  }

  mentionCandidates() {
    return this.people.mentionCandidates();
  }
}

const root = document.getElementById('chat-app');
if (root) new ChatView(root);
