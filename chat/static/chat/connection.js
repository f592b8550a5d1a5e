// The socket of a chat.v1 client (docs/protocol.md §1–§3): connect, welcome, request/reply with
// timeouts, heartbeat, reconnect with exponential backoff and full jitter, online/offline.
// It knows nothing about conversations: the view hands it handlers.

export const PROTOCOL = 'chat.v1';
export const BACKOFF_BASE_MS = 500;
export const BACKOFF_CAP_MS = 15000;
const REPLY_TIMEOUT_MS = 10000;
const PING_TIMEOUT_MS = 10000;

export class RequestError extends Error {
  constructor(code, message, retryAfterMs, limit) {
    super(message || code);
    this.code = code;
    this.retryAfterMs = retryAfterMs;
    this.limit = limit; // which limit a rate_limited error hit, when the server names it
  }
}

// --- the socket: connect, request/reply, heartbeat, backoff, online/offline ---------------------

export class Client {
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
          pending.reject(new RequestError(error.code || 'internal', error.message, error.retry_after_ms, error.limit));
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
