// The chat view (/c/<id>/): a chat.v1 client (docs/protocol.md) in plain ES2020, no framework, no build.
//
// How the transcript stays exact:
// * First load: `history` (newest page) is rendered, then `subscribe` with since_seq = the last seq of
//   that page, so the server replays whatever happened in between. Every reconnect subscribes again
//   with since_seq = the last seq seen.
// * A durable event with seq <= the last one seen is ignored, so a replay never duplicates anything.
// * `recovered: false` (too much missed): the newest history page is reloaded and a notice is shown.
// * Runs are rendered from their events (deltas included); `active_runs` only fills in a run whose
//   events are older than the loaded page. agent_completed replaces the streamed text with its text.
// All user-supplied text goes through textContent, never innerHTML.

import { el, avatar } from './dom.js';
import { AgentModeControl, DraftSync, MentionPicker, ReadTracker, Receipts, titleWithCount } from './collab.js';

const PROTOCOL = 'chat.v1';
const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 15000;
const REPLY_TIMEOUT_MS = 10000;
const SEND_TIMEOUT_MS = 8000;
const PING_TIMEOUT_MS = 10000;
const HISTORY_LIMIT = 100;
const TYPING_RESEND_MS = 3000;
const STICK_TO_BOTTOM_PX = 120;

// --- small helpers ---------------------------------------------------------------------------------

// The plug-in hook (see ChatView's constructor): a window event `chat:<name>` with `detail`.
function emit(name, detail) {
  window.dispatchEvent(new CustomEvent(`chat:${name}`, { detail }));
}

function uuid4() {
  if (window.crypto && typeof window.crypto.randomUUID === 'function') return window.crypto.randomUUID();
  // Non-secure contexts have no randomUUID; getRandomValues works everywhere.
  const bytes = window.crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function formatTime(ts) {
  if (!ts) return '';
  const date = new Date(ts);
  if (Number.isNaN(date.getTime())) return '';
  const sameDay = date.toDateString() === new Date().toDateString();
  const time = date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  return sameDay ? time : `${date.toLocaleDateString([], { month: 'short', day: 'numeric' })} ${time}`;
}

// Keys sorted: a live frame and the same event read back from the database (PostgreSQL jsonb
// reorders keys) must render identically, or two clients would show different transcripts.
function canonical(value) {
  if (Array.isArray(value)) return value.map(canonical);
  if (value && typeof value === 'object') {
    const out = {};
    for (const key of Object.keys(value).sort()) out[key] = canonical(value[key]);
    return out;
  }
  return value;
}

function pretty(value) {
  if (value === undefined) return '';
  try {
    return JSON.stringify(canonical(value), null, 2);
  } catch (err) {
    return String(value);
  }
}

function preview(value, max = 80) {
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

class RequestError extends Error {
  constructor(code, message, retryAfterMs) {
    super(message || code);
    this.code = code;
    this.retryAfterMs = retryAfterMs;
  }
}

// --- the socket: connect, request/reply, heartbeat, backoff, online/offline ---------------------

class Client {
  constructor(url, handlers) {
    this.url = url;
    this.handlers = handlers;
    this.ws = null;
    this.ready = false; // welcome received
    this.attempt = 0;
    this.nextId = 1;
    this.requests = new Map();
    this.reconnectTimer = null;
    this.countdownTimer = null;
    this.heartbeatTimer = null;
    this.heartbeatMs = 25000;
    this.fatal = null;
    this.state = 'connecting';
    window.addEventListener('online', () => this.onBrowserOnline());
    window.addEventListener('offline', () => this.onBrowserOffline());
  }

  setState(state, detail = {}) {
    this.state = state;
    this.handlers.onState(state, detail);
  }

  connect() {
    if (this.ws || this.fatal) return;
    this.clearReconnect();
    if (navigator.onLine === false) {
      this.setState('offline', { reason: 'network' });
      return;
    }
    this.setState('connecting');
    let ws;
    try {
      ws = new WebSocket(this.url, PROTOCOL);
    } catch (err) {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    ws.onmessage = (event) => this.onMessage(ws, event);
    ws.onclose = (event) => this.onClose(ws, event.code, event.reason);
    ws.onerror = () => {}; // a close event follows
  }

  onMessage(ws, event) {
    if (ws !== this.ws) return;
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch (err) {
      console.warn('chat: unparsable frame', event.data);
      return;
    }
    if (!frame || typeof frame !== 'object') return;
    switch (frame.type) {
      case 'welcome':
        this.attempt = 0; // reset the backoff on a successful welcome
        this.lastCloseCode = null;
        this.ready = true;
        if (frame.data && frame.data.heartbeat_ms) this.heartbeatMs = frame.data.heartbeat_ms;
        this.startHeartbeat();
        this.setState('online');
        this.handlers.onWelcome(frame.data || {});
        break;
      case 'reply': {
        const pending = this.requests.get(frame.id);
        if (!pending) return; // a late reply to a request we already gave up on
        this.requests.delete(frame.id);
        clearTimeout(pending.timer);
        if (frame.ok) pending.resolve(frame);
        else {
          const error = frame.error || {};
          pending.reject(new RequestError(error.code || 'internal', error.message, error.retry_after_ms));
        }
        break;
      }
      case 'error':
        console.warn('chat: server error', frame.error);
        this.handlers.onServerError(frame.error || {});
        break;
      default:
        this.handlers.onFrame(frame);
    }
  }

  onClose(ws, code, reason) {
    if (ws !== this.ws) return;
    this.teardown();
    if (code === 4401) {
      this.fatal = 'auth';
      this.setState('offline', { reason: 'auth' });
    } else if (code === 4403) {
      this.fatal = 'forbidden';
      this.setState('offline', { reason: 'forbidden' });
    } else {
      this.lastCloseCode = code;
      this.scheduleReconnect();
    }
    this.handlers.onDisconnect(code, reason);
  }

  teardown() {
    const ws = this.ws;
    this.ws = null;
    this.ready = false;
    clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = null;
    if (ws) {
      ws.onmessage = null;
      ws.onclose = null;
      ws.onerror = null;
      if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) {
        try {
          ws.close(1000);
        } catch (err) { /* already closing */ }
      }
    }
    for (const pending of this.requests.values()) {
      clearTimeout(pending.timer);
      pending.reject(new RequestError('closed', 'the connection closed'));
    }
    this.requests.clear();
  }

  // Give up on the current socket now (dead heartbeat, failed resync) and reconnect with backoff.
  drop(why) {
    if (!this.ws) return;
    console.warn('chat: dropping the connection:', why);
    const ws = this.ws;
    this.onClose(ws, 4000, why);
  }

  scheduleReconnect() {
    this.clearReconnect();
    if (this.fatal) return;
    if (navigator.onLine === false) {
      this.setState('offline', { reason: 'network' });
      return; // the `online` event reconnects
    }
    // Exponential backoff with full jitter.
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** this.attempt);
    // 4429: this user has as many sockets open as the plan allows (other tabs); retrying at once
    // cannot succeed, so wait at least 10 s. 1013: the server is degraded; the jitter suffices.
    const why = this.lastCloseCode;
    const delay = (why === 4429 ? 10000 : 0) + Math.random() * ceiling;
    this.attempt += 1;
    const at = Date.now() + delay;
    const tick = () => {
      this.setState('reconnecting', { seconds: Math.max(0, Math.ceil((at - Date.now()) / 1000)), why });
    };
    tick();
    this.countdownTimer = setInterval(tick, 250);
    this.reconnectTimer = setTimeout(() => {
      this.clearReconnect();
      this.connect();
    }, delay);
  }

  clearReconnect() {
    clearTimeout(this.reconnectTimer);
    clearInterval(this.countdownTimer);
    this.reconnectTimer = null;
    this.countdownTimer = null;
  }

  reconnectNow() {
    if (this.fatal) return;
    this.attempt = 0;
    if (this.ws) return;
    this.connect();
  }

  onBrowserOnline() {
    this.reconnectNow();
  }

  onBrowserOffline() {
    if (this.ws) {
      this.teardown();
      this.handlers.onDisconnect(4000, 'browser offline');
    }
    this.clearReconnect();
    if (!this.fatal) this.setState('offline', { reason: 'network' });
  }

  startHeartbeat() {
    clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = setInterval(() => {
      this.request({ type: 'ping' }, PING_TIMEOUT_MS).catch((err) => {
        if (err.code === 'timeout') this.drop('heartbeat timed out');
      });
    }, this.heartbeatMs);
  }

  send(frame) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  request(frame, timeoutMs = REPLY_TIMEOUT_MS) {
    return new Promise((resolve, reject) => {
      if (!this.ws || !this.ready || this.ws.readyState !== WebSocket.OPEN) {
        reject(new RequestError('closed', 'not connected'));
        return;
      }
      const id = `r${this.nextId++}`;
      const timer = setTimeout(() => {
        if (this.requests.delete(id)) reject(new RequestError('timeout', 'no reply in time'));
      }, timeoutMs);
      this.requests.set(id, { resolve, reject, timer });
      this.ws.send(JSON.stringify({ ...frame, id }));
    });
  }
}

// --- the conversation view ---------------------------------------------------------------------

class ChatView {
  constructor(root) {
    this.root = root;
    this.conversationId = root.dataset.conversationId;
    this.role = root.dataset.role;
    this.canWrite = this.role === 'owner' || this.role === 'member';
    this.username = root.dataset.username;
    this.userId = Number(root.dataset.userId);

    this.q = (testid) => document.querySelector(`[data-testid="${testid}"]`);
    this.transcript = this.q('transcript');
    this.scroller = this.q('scroller');
    this.connectionEl = this.q('connection-state');
    this.connectionLabel = this.connectionEl.querySelector('.connection-label');
    this.staleBanner = this.q('stale-banner');
    this.skippedNotice = this.q('skipped-notice');
    this.loadOlderButton = this.q('load-older');
    this.loadingEl = this.q('transcript-loading');
    this.emptyEl = this.q('transcript-empty');
    this.typingEl = this.q('typing');
    this.presenceEl = this.q('presence');
    this.composerForm = this.q('composer-form');
    this.composer = this.q('composer');
    this.sendButton = this.q('send');

    this.outboxEl = el('div', { class: 'outbox', testid: 'outbox' });
    this.transcript.after(this.outboxEl);
    this.toastEl = el('div', { class: 'toasts', testid: 'toasts', 'aria-live': 'assertive' });
    document.body.append(this.toastEl);

    // Transcript model.
    this.events = []; // every durable event rendered, in seq order
    this.lastSeq = 0;
    this.firstSeq = null;
    this.hasMore = false;
    this.runs = new Map();
    this.messageIds = new Set();
    this.seededRuns = new Map(); // active_runs entries for runs that started before the loaded page
    this.stats = { duplicatesIgnored: 0, gaps: 0, resyncs: 0 };

    // Sync state.
    this.loaded = false;
    this.synced = false;
    this.syncing = false;
    this.buffer = [];
    this.everSynced = false;

    // Outgoing messages not yet seen in the transcript, keyed by client_msg_id.
    this.pending = new Map();
    this.sendReplies = []; // what each send was answered (for tests: whether it started a run)
    this.storageKey = `chat.pending.${this.conversationId}`;

    this.typists = new Map();
    this.lastTypingSent = 0;
    this.members = new Map();

    // Working together (collab.js): read state, receipts, drafts, mentions, the agent's mode.
    this.agent = root.dataset.agent || '';
    this.agentMode = root.dataset.agentMode || 'auto';
    this.baseTitle = document.title;
    this.readTracker = new ReadTracker({
      scroller: this.scroller,
      send: (seq) => this.synced && this.client.send({ type: 'read', conversation: this.conversationId, seq }),
      onChange: () => this.updateUnread(),
    });
    this.receipts = new Receipts({ transcript: this.transcript, userId: this.userId });
    this.receiptsFrame = 0;
    this.drafts = this.canWrite ? new DraftSync({
      textarea: this.composer,
      save: (text) => this.client.request({ type: 'draft', conversation: this.conversationId, text }),
      afterApply: () => this.autosize(),
    }) : null;
    this.mentions = this.canWrite ? new MentionPicker({ textarea: this.composer, candidates: () => this.mentionCandidates() }) : null;
    this.modeControl = new AgentModeControl({
      root: this.root,
      conversationId: this.conversationId,
      onChange: (mode) => { this.agentMode = mode; this.root.dataset.agentMode = mode; this.updatePlaceholder(); },
      onError: (message) => this.toast(message),
    });

    const scheme = window.location.protocol === 'https:' ? 'wss' : 'ws';
    this.client = new Client(`${scheme}://${window.location.host}/ws/chat/`, {
      onState: (state, detail) => this.renderConnection(state, detail),
      onWelcome: (welcome) => this.onWelcome(welcome),
      onFrame: (frame) => this.onFrame(frame),
      onDisconnect: () => this.onDisconnect(),
      onServerError: (error) => this.toast(error.message || error.code || 'Server error'),
    });

    this.bindUi();
    this.restorePending();
    this.client.connect();

    // Plug-ins (approvals.js) listen to window events 'chat:event' (each durable event applied, in seq
    // order), 'chat:reset' (the transcript is rebuilt) and 'chat:active-runs' (subscribe's
    // active_runs), and send commands with window.chatHooks.request(frame), which resolves to the reply.
    window.chatHooks = { request: (frame) => this.client.request(frame) };
    // For tests and debugging: read-only view of the sync bookkeeping.
    const view = this;
    window.__chat = {
      get lastSeq() { return view.lastSeq; },
      get stats() { return { ...view.stats }; },
      get state() { return view.client.state; },
      get synced() { return view.synced; },
      get pending() { return Array.from(view.pending.keys()); },
      get lastReadSeq() { return view.readTracker.lastReadSeq; },
      get unread() { return view.unreadCount(); },
      get sendReplies() { return view.sendReplies.map((r) => ({ ...r })); },
    };
  }

  // ---- UI wiring ----

  bindUi() {
    if (!this.canWrite) {
      this.composer.disabled = true;
      this.sendButton.disabled = true;
      this.composerForm.classList.add('composer-readonly');
      this.composerForm.dataset.readonly = 'true';
    }
    this.composerForm.addEventListener('submit', (event) => {
      event.preventDefault();
      this.submitComposer();
    });
    this.composer.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
        event.preventDefault();
        this.submitComposer();
      }
    });
    this.composer.addEventListener('input', () => {
      this.autosize();
      this.noteTyping();
      if (this.drafts) this.drafts.edited();
    });
    this.composer.addEventListener('blur', () => this.stopTyping());
    this.loadOlderButton.addEventListener('click', () => this.loadOlder());
    const close = this.skippedNotice.querySelector('.banner-close');
    if (close) close.addEventListener('click', () => { this.skippedNotice.hidden = true; });
    this.autosize();
  }

  autosize() {
    this.composer.style.height = 'auto';
    this.composer.style.height = `${Math.min(this.composer.scrollHeight, 220)}px`;
  }

  toast(message, kind = 'error') {
    const node = el('div', { class: `toast toast-${kind}`, testid: 'toast', role: 'alert', text: message });
    this.toastEl.append(node);
    setTimeout(() => node.remove(), 6000);
  }

  renderConnection(state, detail = {}) {
    this.connectionEl.dataset.state = state;
    let label;
    switch (state) {
      case 'online': label = 'Online'; break;
      case 'connecting': label = 'Connecting…'; break;
      case 'reconnecting': {
        const prefix = detail.why === 4429 ? 'Too many open tabs for your plan — reconnecting'
          : detail.why === 1013 ? 'Server busy — reconnecting' : 'Reconnecting';
        label = `${prefix} in ${detail.seconds ?? 0}s`;
        break;
      }
      case 'offline':
        label = detail.reason === 'auth' ? 'Signed out' : detail.reason === 'forbidden' ? 'Refused' : 'Offline';
        break;
      default: label = state;
    }
    this.connectionLabel.textContent = label;
    if (detail.seconds !== undefined) this.connectionEl.dataset.seconds = String(detail.seconds);
    else delete this.connectionEl.dataset.seconds;
    if (state === 'offline' && detail.reason === 'auth') {
      this.staleBanner.replaceChildren('Your session has ended. ',
        el('a', { href: `/login/?next=${encodeURIComponent(window.location.pathname)}`, text: 'Log in again' }),
        ' to keep chatting.');
    }
    this.updateStale();
    this.updateComposer();
  }

  updateStale() {
    const stale = this.client ? !(this.client.state === 'online' && this.synced) : false;
    this.staleBanner.hidden = !(stale && (this.everSynced || this.client.state === 'offline'));
    this.root.classList.toggle('is-stale', stale && this.everSynced);
  }

  updateComposer() {
    if (!this.canWrite) return;
    // Writing while offline is allowed: the message waits in the outbox and is sent on reconnect.
    this.sendButton.disabled = false;
  }

  isNearBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < STICK_TO_BOTTOM_PX;
  }

  withScroll(fn) {
    const stick = this.isNearBottom();
    fn();
    if (stick) this.scrollToBottom();
  }

  scrollToBottom() {
    this.scroller.scrollTop = this.scroller.scrollHeight;
  }

  updateEmpty() {
    const empty = this.transcript.childElementCount === 0 && this.pending.size === 0;
    this.emptyEl.hidden = !(empty && this.loaded);
    this.loadingEl.hidden = this.loaded;
    this.loadOlderButton.hidden = !this.hasMore;
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
    for (const p of this.pending.values()) {
      p.inflight = false;
      if (p.state !== 'failed') p.state = 'waiting';
      this.renderPending(p);
    }
    for (const run of this.runs.values()) run.cancelRequested = false;
    this.typists.clear();
    this.renderTyping();
    for (const member of this.members.values()) member.online = member.user.id === this.userId;
    this.renderPresence();
    this.updateStale();
  }

  async sync() {
    this.syncing = true;
    this.buffer = [];
    try {
      if (!this.loaded) {
        const page = await this.fetchHistory();
        this.resetTranscript(page.events);
        this.hasMore = page.has_more;
        this.loaded = true;
        this.scrollToBottom();
      }
      const reply = await this.client.request({
        type: 'subscribe', conversation: this.conversationId, since_seq: this.lastSeq,
      });
      if (reply.recovered === false) {
        // Too much was missed for a replay: start over from the newest history page.
        this.stats.resyncs += 1;
        const page = await this.fetchHistory();
        this.resetTranscript(page.events);
        this.hasMore = page.has_more;
        this.skippedNotice.hidden = false;
        this.scrollToBottom();
      }
      this.seedActiveRuns(reply.active_runs || []);
      this.readTracker.moved(reply.last_read_seq || 0);
      if (this.drafts) this.drafts.apply(reply.draft || null);
      emit('active-runs', reply.active_runs || []);
      this.syncing = false;
      const buffered = this.buffer;
      this.buffer = [];
      this.withScroll(() => {
        for (const frame of buffered) this.applyEvent(frame);
      });
      this.synced = true;
      this.everSynced = true;
      this.updateStale();
      this.updateEmpty();
      this.flushPending();
      this.refreshPresence();
      this.updateUnread();
      this.readTracker.refresh();
    } catch (err) {
      this.syncing = false;
      if (err.code === 'closed') return; // the reconnect resyncs
      if (err.code === 'not_found' || err.code === 'forbidden') {
        this.loaded = true;
        this.updateEmpty();
        this.toast('This conversation is not available to you any more.');
        this.client.fatal = 'forbidden';
        this.client.teardown();
        this.client.setState('offline', { reason: 'forbidden' });
        this.onDisconnect();
        return;
      }
      this.client.drop(`sync failed: ${err.code}`);
    }
  }

  async fetchHistory(beforeSeq) {
    const frame = { type: 'history', conversation: this.conversationId, limit: HISTORY_LIMIT };
    if (beforeSeq !== undefined && beforeSeq !== null) frame.before_seq = beforeSeq;
    const reply = await this.client.request(frame);
    return { events: reply.events || [], has_more: Boolean(reply.has_more) };
  }

  async loadOlder() {
    if (!this.hasMore || this.firstSeq === null || !this.client.ready) return;
    this.loadOlderButton.disabled = true;
    try {
      const page = await this.fetchHistory(this.firstSeq);
      const before = this.scroller.scrollHeight - this.scroller.scrollTop;
      this.resetTranscript([...page.events, ...this.events]);
      this.hasMore = page.has_more;
      this.scroller.scrollTop = this.scroller.scrollHeight - before;
    } catch (err) {
      if (err.code !== 'closed') this.toast('Could not load earlier messages.');
    } finally {
      this.loadOlderButton.disabled = false;
      this.updateEmpty();
    }
  }

  onFrame(frame) {
    if (frame.conversation !== undefined && frame.conversation !== this.conversationId) return;
    switch (frame.type) {
      case 'typing': this.onTyping(frame.data || {}); return;
      case 'presence': this.onPresence(frame.data || {}); return;
      case 'read': this.onRead(frame.data || {}); return;
      case 'draft': if (this.drafts) this.drafts.apply(frame.data || null); return;
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
    this.withScroll(() => this.applyEvent(frame));
    this.updateEmpty();
  }

  // ---- transcript model ----

  resetTranscript(events) {
    this.readTracker.reset();
    emit('reset');
    this.transcript.replaceChildren();
    this.prePageAnchor = null;
    this.events = [];
    this.runs.clear();
    this.messageIds.clear();
    this.lastSeq = 0;
    this.firstSeq = null;
    const sorted = [...events].sort((a, b) => a.seq - b.seq);
    for (const frame of sorted) this.applyEvent(frame);
    for (const seed of this.seededRuns.values()) this.applySeed(seed);
    this.updateEmpty();
  }

  applyEvent(frame) {
    if (frame.seq <= this.lastSeq) {
      this.stats.duplicatesIgnored += 1;
      return;
    }
    if (this.lastSeq > 0 && frame.seq !== this.lastSeq + 1) {
      this.stats.gaps += 1;
      console.warn(`chat: seq gap ${this.lastSeq} -> ${frame.seq}`);
    }
    this.lastSeq = frame.seq;
    if (this.firstSeq === null) this.firstSeq = frame.seq;
    this.events.push(frame);
    this.render(frame);
    this.noteDelivered(frame.seq);
    emit('event', frame);
  }

  render(frame) {
    const data = frame.data || {};
    switch (frame.type) {
      case 'message': this.renderMessage(frame, data); break;
      case 'agent_started': {
        const run = this.ensureRun(data.run_id, frame);
        run.started = true;
        this.seededRuns.delete(run.id);
        if (data.agent) run.nameEl.textContent = data.agent;
        break;
      }
      case 'agent_thinking': this.addThinking(this.ensureRun(data.run_id, frame), data.text); break;
      case 'tool_executing': this.toolStarted(this.ensureRun(data.run_id, frame), data); break;
      case 'tool_completed': this.toolCompleted(this.ensureRun(data.run_id, frame), data); break;
      case 'agent_delta': {
        const run = this.ensureRun(data.run_id, frame);
        if (frame.seq <= run.deltaSeq) return; // already inside seeded text
        run.deltaSeq = frame.seq;
        run.text += data.text || '';
        this.renderAnswer(run);
        break;
      }
      case 'agent_completed': {
        const run = this.ensureRun(data.run_id, frame);
        run.text = typeof data.text === 'string' ? data.text : run.text; // the whole answer wins
        this.finishRun(run, 'completed');
        if (data.duration_ms !== undefined) run.metaEl.textContent = `${(data.duration_ms / 1000).toFixed(1)}s`;
        break;
      }
      case 'agent_failed': {
        const run = this.ensureRun(data.run_id, frame);
        const error = data.error || {};
        run.errorEl.hidden = false;
        run.errorEl.textContent = `The assistant failed: ${error.message || error.code || 'unknown error'}`;
        this.finishRun(run, 'failed');
        break;
      }
      case 'agent_cancelled': {
        const run = this.ensureRun(data.run_id, frame);
        if (typeof data.partial_text === 'string' && data.partial_text) run.text = data.partial_text;
        const by = data.by && data.by.username ? ` by ${data.by.username}` : '';
        run.errorEl.hidden = false;
        run.errorEl.textContent = `Cancelled${by}.`;
        this.finishRun(run, 'cancelled');
        break;
      }
      default:
        break; // an event type this page does not know: ignore it (forward compatible)
    }
    const run = data.run_id ? this.runs.get(data.run_id) : null;
    if (run && frame.type !== 'message') {
      // The run's block is "read" up to its newest event; its answer is a message for receipts.
      run.node.dataset.seq = String(Math.max(Number(run.node.dataset.seq) || 0, frame.seq));
      if (frame.type === 'agent_completed') run.node.dataset.receiptSeq = String(frame.seq);
    }
  }

  renderMessage(frame, data) {
    if (data.id && this.messageIds.has(data.id)) return;
    if (data.id) this.messageIds.add(data.id);
    const author = data.author || {};
    const name = author.username || (author.kind === 'agent' ? 'assistant' : 'unknown');
    const mine = author.kind !== 'agent' && author.id === this.userId;
    const mentionsMe = Array.isArray(data.mentions) && data.mentions.includes(this.userId);
    const node = el('article', {
      class: `msg ${mine ? 'msg-mine' : ''} ${author.kind === 'agent' ? 'msg-agent' : ''} ${mentionsMe ? 'msg-mentions-me' : ''}`,
      testid: 'message',
      'data-seq': frame.seq,
      'data-receipt-seq': frame.seq,
      'data-mine': mine ? 'true' : 'false',
      'data-message-id': data.id,
      'data-author': name,
      'data-kind': author.kind || 'user',
      'data-mentions': Array.isArray(data.mentions) ? data.mentions.join(',') : '',
    },
    avatar(name, author.kind),
    el('div', { class: 'msg-body' },
      el('div', { class: 'msg-head' },
        el('span', { class: 'msg-author', testid: 'message-author', text: name }),
        mine ? el('span', { class: 'msg-you', text: 'you' }) : null,
        el('time', { class: 'msg-time', datetime: frame.ts || data.created_at, text: formatTime(frame.ts || data.created_at) })),
      el('div', { class: 'msg-text', testid: 'message-text' }, ...this.withMentions(data.text || ''))));
    this.transcript.append(node);
    this.readTracker.observe(node);
    if (mine && data.client_msg_id && this.pending.has(data.client_msg_id)) this.removePending(data.client_msg_id);
  }

  // A run's block goes where its agent_started is. A run first seen through a later event started
  // before the loaded page, so its block goes on top, above everything that started on the page.
  ensureRun(runId, frame) {
    let run = this.runs.get(runId);
    if (run) return run;
    const startsHere = Boolean(frame && frame.type === 'agent_started');
    const nameEl = el('span', { class: 'msg-author', testid: 'run-agent', text: 'assistant' });
    const statusEl = el('span', { class: 'run-status', testid: 'run-status', text: 'Thinking…' });
    const metaEl = el('span', { class: 'msg-time' });
    const cancelEl = el('button', { type: 'button', class: 'btn btn-ghost btn-xs run-cancel', testid: 'cancel', hidden: true, text: 'Stop' });
    const stepsEl = el('div', { class: 'run-steps', testid: 'run-steps' });
    const answerEl = el('div', { class: 'answer', testid: 'agent-answer', 'data-state': 'pending' });
    const errorEl = el('div', { class: 'run-error', testid: 'run-error', hidden: true });
    // Co-viewing: who is watching while the run is live (the members present in the conversation).
    const watchersEl = el('span', { class: 'run-watchers', testid: 'run-watchers', hidden: true });
    const node = el('article', { class: 'msg msg-agent run', testid: 'agent-run', 'data-run-id': runId, 'data-status': 'running' },
      avatar('assistant', 'agent'),
      el('div', { class: 'msg-body' },
        el('div', { class: 'msg-head' }, nameEl, statusEl, metaEl, watchersEl, cancelEl),
        stepsEl, answerEl, errorEl));
    run = {
      id: runId, node, nameEl, statusEl, metaEl, cancelEl, stepsEl, answerEl, errorEl, watchersEl,
      text: '', deltaSeq: 0, status: 'running', calls: new Map(), cancelRequested: false, started: false,
    };
    cancelEl.addEventListener('click', () => this.cancelRun(run));
    this.runs.set(runId, run);
    if (startsHere) {
      this.transcript.append(node);
    } else {
      // Runs of a conversation run one after another, so runs that started before the page are
      // first seen in the order they started: each goes below the previous one.
      if (this.prePageAnchor && this.prePageAnchor.isConnected) this.prePageAnchor.after(node);
      else this.transcript.prepend(node);
      this.prePageAnchor = node;
    }
    const seed = this.seededRuns.get(runId);
    if (!startsHere && seed) this.seedText(run, seed);
    this.updateRunControls(run);
    this.readTracker.observe(node);
    return run;
  }

  addThinking(run, text) {
    run.stepsEl.append(el('div', { class: 'step step-thinking', testid: 'thinking' },
      el('span', { class: 'step-text', text: text || '' })));
    if (run.status === 'running' && !run.text) run.statusEl.textContent = 'Thinking…';
  }

  toolStarted(run, data) {
    const call = this.toolCall(run, data.call_id, data.tool);
    call.argsEl.textContent = pretty(data.arguments);
    call.argsPreviewEl.textContent = preview(data.arguments, 60);
    if (run.status === 'running') run.statusEl.textContent = `Using ${data.tool}…`;
  }

  toolCompleted(run, data) {
    const call = this.toolCall(run, data.call_id, data.tool);
    const ok = data.ok !== false;
    call.node.dataset.status = ok ? 'ok' : 'error';
    call.statusEl.textContent = ok ? '✓' : '✕';
    call.statusEl.title = ok ? 'succeeded' : 'failed';
    call.resultEl.textContent = pretty(data.result);
    call.resultPreviewEl.textContent = `→ ${preview(data.result, 60)}`;
    call.resultWrap.hidden = false;
    if (data.duration_ms !== undefined) call.durationEl.textContent = `${data.duration_ms} ms`;
    if (run.status === 'running' && !run.text) run.statusEl.textContent = 'Thinking…';
  }

  toolCall(run, callId, tool) {
    let call = run.calls.get(callId);
    if (call) return call;
    const statusEl = el('span', { class: 'tool-status', testid: 'tool-status', 'aria-hidden': 'true' },
      el('span', { class: 'spinner' }));
    const argsPreviewEl = el('span', { class: 'tool-preview', testid: 'tool-arguments-preview' });
    const resultPreviewEl = el('span', { class: 'tool-preview tool-preview-result', testid: 'tool-result-preview' });
    const durationEl = el('span', { class: 'tool-duration' });
    const argsEl = el('pre', { class: 'code', testid: 'tool-arguments' });
    const resultEl = el('pre', { class: 'code', testid: 'tool-result' });
    const resultWrap = el('div', { class: 'tool-section', hidden: true },
      el('div', { class: 'tool-section-label', text: 'Result' }), resultEl);
    const node = el('details', { class: 'step tool-call', testid: 'tool-call', 'data-call-id': callId, 'data-tool': tool, 'data-status': 'running' },
      el('summary', {},
        statusEl,
        el('span', { class: 'tool-name', testid: 'tool-name', text: tool || 'tool' }),
        argsPreviewEl, resultPreviewEl, durationEl),
      el('div', { class: 'tool-detail' },
        el('div', { class: 'tool-section' }, el('div', { class: 'tool-section-label', text: 'Arguments' }), argsEl),
        resultWrap));
    call = { node, statusEl, argsEl, resultEl, resultWrap, argsPreviewEl, resultPreviewEl, durationEl };
    run.calls.set(callId, call);
    run.stepsEl.append(node);
    return call;
  }

  renderAnswer(run) {
    run.answerEl.textContent = run.text;
    if (run.status === 'running') {
      run.answerEl.dataset.state = run.text ? 'streaming' : 'pending';
      if (run.text) run.statusEl.textContent = 'Writing…';
    }
  }

  finishRun(run, status) {
    run.status = status;
    this.seededRuns.delete(run.id);
    run.node.dataset.status = status;
    run.answerEl.dataset.state = status === 'completed' ? 'final' : status;
    run.answerEl.textContent = run.text;
    run.answerEl.hidden = !run.text && status !== 'completed';
    run.statusEl.textContent = status === 'completed' ? '' : status === 'failed' ? 'Failed' : 'Stopped';
    run.statusEl.dataset.status = status;
    for (const call of run.calls.values()) {
      if (call.node.dataset.status === 'running') {
        call.node.dataset.status = 'abandoned';
        call.statusEl.textContent = '–';
      }
    }
    this.updateRunControls(run);
  }

  updateRunControls(run) {
    const active = run.status === 'running';
    run.cancelEl.hidden = !(active && this.canWrite);
    run.cancelEl.disabled = run.cancelRequested;
    run.node.classList.toggle('run-active', active);
    this.renderWatchers(run);
  }

  // Co-viewing (docs/protocol.md §10): while a run is live, who is watching it is who is present.
  renderWatchers(run) {
    const watching = run.status === 'running'
      ? Array.from(this.members.values()).filter((m) => m.online).map((m) => m.user.username).sort()
      : [];
    run.watchersEl.hidden = !watching.length;
    run.watchersEl.dataset.users = watching.join(',');
    run.watchersEl.title = watching.length ? `Watching: ${watching.join(', ')}` : '';
    run.watchersEl.replaceChildren(...watching.map((name) => avatar(name)),
      watching.length ? el('span', { class: 'run-watchers-label', text: 'watching' }) : null);
  }

  // `active_runs` only matters for a run that started before the loaded page (its earliest deltas
  // are not on the page): its `text` covers every agent_delta up to its `seq`, and deltas at or below
  // that seq are then skipped. Every other run is rendered from its events; active_runs just marks it
  // active. A run not on the page at all either started before it (then its `seq` is below the page)
  // or starts after it and its agent_started is about to be replayed.
  seedText(run, seed) {
    if (run.started || run.status !== 'running') return;
    if (seed.agent) run.nameEl.textContent = seed.agent;
    if ((seed.seq || 0) > run.deltaSeq) {
      run.text = seed.text || '';
      run.deltaSeq = seed.seq || 0;
      this.renderAnswer(run);
    }
  }

  applySeed(seed) {
    const run = this.runs.get(seed.run_id);
    if (run) {
      this.seedText(run, seed);
    } else if ((seed.seq || 0) > 0 && this.firstSeq !== null && seed.seq < this.firstSeq) {
      this.ensureRun(seed.run_id, null); // applies the seed
    } // else: created (and seeded) when its next event arrives, if it is not an agent_started
  }

  seedActiveRuns(activeRuns) {
    for (const active of activeRuns) {
      if (active.status === 'queued') continue; // not started: its agent_started will come as an event
      const run = this.runs.get(active.run_id);
      if (run && (run.started || run.status !== 'running')) {
        this.updateRunControls(run);
        continue;
      }
      if (!run && !this.hasMore) continue; // the page holds the whole history: events will cover it
      this.seededRuns.set(active.run_id, active);
      this.applySeed(active);
    }
  }

  async cancelRun(run) {
    if (run.status !== 'running' || run.cancelRequested) return;
    run.cancelRequested = true;
    this.updateRunControls(run);
    run.statusEl.textContent = 'Stopping…';
    try {
      await this.client.request({ type: 'cancel', run_id: run.id });
    } catch (err) {
      run.cancelRequested = false;
      this.updateRunControls(run);
      if (err.code !== 'conflict') this.toast(`Could not stop the run: ${err.message}`);
    }
  }

  // ---- sending (idempotent: a retry reuses the same client_msg_id) ----

  submitComposer() {
    if (!this.canWrite) return;
    const text = this.composer.value.trim();
    if (!text) return;
    if (this.mentions) this.mentions.close();
    const p = { id: uuid4(), text, state: 'waiting', inflight: false, attempts: 0, error: null, node: null };
    this.pending.set(p.id, p);
    this.savePending();
    this.composer.value = '';
    this.autosize();
    this.stopTyping();
    if (this.drafts) this.drafts.cleared();
    this.withScroll(() => this.renderPending(p));
    this.scrollToBottom();
    this.updateEmpty();
    this.trySend(p);
  }

  async trySend(p) {
    if (!this.pending.has(p.id) || p.inflight) return;
    if (!this.synced) {
      p.state = 'waiting';
      this.renderPending(p);
      return; // sent after the next successful (re)subscribe
    }
    p.inflight = true;
    p.attempts += 1;
    p.state = 'sending';
    p.error = null;
    this.renderPending(p);
    try {
      const reply = await this.client.request({
        type: 'send', conversation: this.conversationId, client_msg_id: p.id, text: p.text,
      }, SEND_TIMEOUT_MS);
      p.inflight = false;
      this.sendReplies.push({ client_msg_id: p.id, seq: reply.message && reply.message.seq, run_id: reply.run_id || null });
      if (!this.pending.has(p.id)) return;
      if (reply.message && reply.message.seq <= this.lastSeq && this.synced) {
        this.removePending(p.id); // its event has already been rendered
        return;
      }
      p.state = 'sent';
      this.renderPending(p);
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
        const wait = err.retryAfterMs || Math.min(BACKOFF_CAP_MS, 1000 * 2 ** Math.min(p.attempts, 4));
        setTimeout(() => this.trySend(p), wait);
      } else {
        p.state = 'failed';
        p.error = err.message || err.code;
      }
      this.renderPending(p);
    }
  }

  flushPending() {
    for (const p of this.pending.values()) {
      if (p.state !== 'failed' && !p.inflight) this.trySend(p);
    }
  }

  renderPending(p) {
    if (!this.pending.has(p.id)) return;
    if (!p.node) {
      p.statusEl = el('span', { class: 'pending-status', testid: 'pending-status' });
      p.actionsEl = el('span', { class: 'pending-actions' });
      p.node = el('article', { class: 'msg msg-mine msg-pending', testid: 'pending-message', 'data-client-msg-id': p.id },
        avatar(this.username),
        el('div', { class: 'msg-body' },
          el('div', { class: 'msg-head' },
            el('span', { class: 'msg-author', text: this.username }),
            el('span', { class: 'msg-you', text: 'you' }),
            p.statusEl, p.actionsEl),
          el('div', { class: 'msg-text', text: p.text })));
      this.outboxEl.append(p.node);
    }
    p.node.dataset.state = p.state;
    const labels = {
      waiting: 'Waiting for connection…', sending: 'Sending…', sent: 'Sent',
      retrying: p.retryReason ? `${p.retryReason} — retrying…` : 'Retrying…',
      failed: `Not sent: ${p.error || 'error'}`,
    };
    p.statusEl.textContent = labels[p.state] || p.state;
    p.actionsEl.replaceChildren();
    if (p.state === 'failed') {
      p.actionsEl.append(
        el('button', { type: 'button', class: 'btn btn-ghost btn-xs', text: 'Retry',
          onclick: () => { p.state = 'waiting'; this.trySend(p); } }),
        el('button', { type: 'button', class: 'btn btn-ghost btn-xs', text: 'Discard',
          onclick: () => this.removePending(p.id) }));
    }
  }

  removePending(id) {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    if (p.node) p.node.remove();
    this.savePending();
    this.updateEmpty();
  }

  savePending() {
    try {
      const items = Array.from(this.pending.values(), (p) => ({ id: p.id, text: p.text }));
      if (items.length) sessionStorage.setItem(this.storageKey, JSON.stringify(items));
      else sessionStorage.removeItem(this.storageKey);
    } catch (err) { /* storage unavailable: pending messages live in memory only */ }
  }

  restorePending() {
    let items = [];
    try {
      items = JSON.parse(sessionStorage.getItem(this.storageKey) || '[]');
    } catch (err) {
      items = [];
    }
    if (!Array.isArray(items) || !this.canWrite) return;
    for (const item of items) {
      if (!item || typeof item.id !== 'string' || typeof item.text !== 'string') continue;
      const p = { id: item.id, text: item.text, state: 'waiting', inflight: false, attempts: 0, error: null, node: null };
      this.pending.set(p.id, p);
      this.renderPending(p);
    }
  }

  // ---- typing & presence (ephemeral) ----

  noteTyping() {
    if (!this.canWrite || !this.synced) return;
    const now = Date.now();
    if (!this.composer.value.trim()) {
      this.stopTyping();
      return;
    }
    if (now - this.lastTypingSent < TYPING_RESEND_MS) return;
    this.lastTypingSent = now;
    this.client.send({ type: 'typing', conversation: this.conversationId, state: 'start' });
  }

  stopTyping() {
    if (!this.lastTypingSent) return;
    this.lastTypingSent = 0;
    if (this.canWrite && this.synced) this.client.send({ type: 'typing', conversation: this.conversationId, state: 'stop' });
  }

  onTyping(data) {
    const user = data.user || {};
    if (user.id === this.userId) return;
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

  async refreshPresence() {
    try {
      const reply = await this.client.request({ type: 'presence', conversation: this.conversationId });
      this.members.clear();
      for (const member of reply.members || []) {
        if (!member.user) continue;
        this.members.set(member.user.id, { user: member.user, online: Boolean(member.online) });
        this.receipts.setMember(member.user, { lastReadSeq: member.last_read_seq, online: member.online, seq: this.lastSeq });
      }
      this.renderPresence();
    } catch (err) { /* presence is decoration */ }
  }

  onPresence(data) {
    for (const user of data.joined || []) {
      const member = this.members.get(user.id) || { user, online: false };
      member.online = true;
      this.members.set(user.id, member);
      // Subscribed now: their socket has (or is replaying) everything up to here.
      this.receipts.present(user.id, this.lastSeq);
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
    this.renderPresence();
  }

  // ---- working together: read state, receipts, mentions, the agent's mode (collab.js) ----

  onRead(data) {
    const user = data.user || {};
    if (typeof data.seq !== 'number') return;
    if (user.id === this.userId) {
      this.readTracker.moved(data.seq); // another tab or device of this user read up to here
    } else {
      this.receipts.setMarker(user, data.seq);
      this.scheduleReceipts();
    }
  }

  // A durable event reached this page: every member present now has it too.
  noteDelivered(seq) {
    for (const member of this.members.values()) {
      if (member.online) this.receipts.present(member.user.id, seq);
    }
    this.updateUnread();
    this.scheduleReceipts();
    this.readTracker.refresh();
  }

  unreadCount() {
    const marker = this.readTracker.lastReadSeq;
    let count = 0;
    for (const frame of this.events) {
      if (frame.seq <= marker) continue;
      const author = (frame.data && frame.data.author) || {};
      if ((frame.type === 'message' && author.id !== this.userId) || frame.type === 'agent_completed') count += 1;
    }
    return count;
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
    const people = Array.from(this.members.values())
      .filter((m) => m.user.id !== this.userId)
      .map((m) => ({ name: m.user.username, label: m.online ? 'online' : '', kind: 'user' }))
      .sort((a, b) => a.name.localeCompare(b.name));
    const agent = this.agent ? [{ name: 'assistant', label: 'the assistant', kind: 'agent' }] : [];
    return [...agent, ...people];
  }

  // The text with each `@name` as its own span (highlighted), all of it as text nodes.
  withMentions(text) {
    const parts = [];
    const pattern = /(^|[^\p{L}\p{N}_])(@[\p{L}\p{N}_.@+-]+)/gu;
    let at = 0;
    for (const match of text.matchAll(pattern)) {
      const start = match.index + match[1].length;
      if (start > at) parts.push(text.slice(at, start));
      parts.push(el('span', { class: 'mention', text: match[2] }));
      at = start + match[2].length;
    }
    if (at < text.length) parts.push(text.slice(at));
    return parts;
  }

  // The composer says how to reach the assistant when a plain message will not.
  updatePlaceholder() {
    if (!this.canWrite || !this.agent) return;
    const humans = this.members.size;
    const base = `Message ${this.root.dataset.title || ''}…`;
    let hint = '(Enter to send, Shift+Enter for a new line)';
    if (this.agentMode === 'off') hint = '— the assistant is off';
    else if (this.agentMode === 'mention' || (this.agentMode === 'auto' && humans > 1)) hint = '— type @assistant to ask the assistant';
    this.composer.placeholder = `${base}  ${hint}`;
    this.root.dataset.agentHint = hint;
  }

  renderPresence() {
    for (const run of this.runs.values()) if (run.status === 'running') this.renderWatchers(run);
    this.updatePlaceholder();
    this.scheduleReceipts();
    const members = Array.from(this.members.values())
      .sort((a, b) => Number(b.online) - Number(a.online) || a.user.username.localeCompare(b.user.username));
    this.presenceEl.replaceChildren(...members.map((m) => {
      const item = el('li', { class: `presence-member ${m.online ? 'is-online' : ''}`, testid: 'presence-member',
        'data-username': m.user.username, 'data-online': m.online ? 'true' : 'false',
        title: `${m.user.username} — ${m.online ? 'online' : 'offline'}` }, avatar(m.user.username));
      return item;
    }));
  }
}

const root = document.getElementById('chat-app');
if (root) new ChatView(root);
