// The notifications bell in the top bar of every page (docs/protocol.md §9): the unread count, the
// newest notifications, "mark all read". It reads GET /api/me/notifications/ and marks read with
// POST /api/me/notifications/read/ (every device follows). On the conversation page the socket's
// frames arrive as window events from chat.js ('chat:notification', 'chat:notifications-read');
// elsewhere the list is refreshed when the tab comes back into view and every minute.
const root = document.querySelector('[data-notifications]');
const LIST_SIZE = 20;
const POLL_MS = 60_000;

const KIND_LABELS = {
  mention: 'mentioned you',
  agent_finished: 'The assistant finished',
  approval_requested: 'Approval needed',
  added_to_conversation: 'Added to a conversation',
  role_changed: 'Role changed',
  test: 'Test notification',
  webhook_disabled: 'Webhook disabled',
};

function csrfToken() {
  const input = document.querySelector('input[name="csrfmiddlewaretoken"]');
  return input ? input.value : '';
}

function node(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === 'text') el.textContent = value;
    else if (key === 'class') el.className = value;
    else el.setAttribute(key, value);
  }
  for (const child of children) if (child) el.append(child);
  return el;
}

function relativeTime(iso) {
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 60) return 'just now';
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return new Date(iso).toLocaleDateString();
}

class Bell {
  constructor(el) {
    this.el = el;
    this.button = el.querySelector('[data-testid="notifications-bell"]');
    this.badge = el.querySelector('[data-testid="notifications-unread"]');
    this.panel = el.querySelector('[data-testid="notifications-panel"]');
    this.list = el.querySelector('[data-testid="notifications-list"]');
    this.markAll = el.querySelector('[data-testid="notifications-mark-read"]');
    this.items = [];
    this.unread = 0;
    this.readUpTo = 0;
    this.head = 0;
    this.button.addEventListener('click', () => this.toggle());
    this.markAll.addEventListener('click', () => this.markRead(this.head));
    document.addEventListener('click', (event) => {
      if (!this.panel.hidden && !this.el.contains(event.target)) this.toggle(false);
    });
    document.addEventListener('keydown', (event) => {
      if (event.key === 'Escape' && !this.panel.hidden) this.toggle(false);
    });
    window.addEventListener('chat:notification', (event) => this.onFrame(event.detail));
    window.addEventListener('chat:notifications-read', (event) => this.onRead(event.detail));
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible') this.refresh();
    });
    setInterval(() => { if (document.visibilityState === 'visible') this.refresh(); }, POLL_MS);
    this.refresh();
  }

  async refresh() {
    try {
      const response = await fetch(`/api/me/notifications/?limit=${LIST_SIZE}`, {
        credentials: 'same-origin', headers: { Accept: 'application/json' },
      });
      if (!response.ok) return;
      const page = await response.json();
      this.items = page.notifications;
      this.unread = page.unread;
      this.readUpTo = page.read_up_to_seq;
      this.head = page.head_seq;
      this.render();
    } catch (err) {
      // Offline: the next refresh or socket frame catches up.
    }
  }

  onFrame(frame) {
    if (!frame || typeof frame.seq !== 'number' || frame.seq <= this.head) return;
    this.head = frame.seq;
    this.items = [{ seq: frame.seq, ts: frame.ts, data: frame.data, read: false }, ...this.items].slice(0, LIST_SIZE);
    this.unread += 1;
    this.render();
  }

  onRead(data) {
    if (!data) return;
    this.readUpTo = Math.max(this.readUpTo, data.up_to_seq);
    this.unread = data.unread;
    for (const item of this.items) item.read = item.seq <= this.readUpTo;
    this.render();
  }

  async markRead(upTo) {
    const response = await fetch('/api/me/notifications/read/', {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json', 'X-CSRFToken': csrfToken(), Accept: 'application/json' },
      body: JSON.stringify({ up_to_seq: upTo }),
    });
    if (response.ok) {
      const body = await response.json();
      this.onRead({ up_to_seq: body.read_up_to_seq, unread: body.unread });
    }
  }

  toggle(open = this.panel.hidden) {
    this.panel.hidden = !open;
    this.button.setAttribute('aria-expanded', String(open));
  }

  render() {
    this.badge.hidden = this.unread === 0;
    this.badge.textContent = this.unread > 99 ? '99+' : String(this.unread);
    this.button.setAttribute('aria-label', `Notifications, ${this.unread} unread`);
    this.markAll.disabled = this.unread === 0;
    if (!this.items.length) {
      this.list.replaceChildren(node('li', { class: 'notif-empty', text: 'Nothing yet.' }));
      return;
    }
    this.list.replaceChildren(...this.items.map((item) => this.renderItem(item)));
  }

  renderItem(item) {
    const data = item.data || {};
    const actor = data.actor && data.actor.username;
    const label = data.kind === 'mention' && actor ? `${actor} mentioned you` : (KIND_LABELS[data.kind] || data.kind);
    const href = data.conversation ? `/c/${encodeURIComponent(data.conversation)}/` : null;
    const body = node('span', { class: 'notif-body' },
      node('span', { class: 'notif-title', text: label }),
      node('span', { class: 'notif-preview', text: data.preview || '' }),
      node('span', { class: 'notif-time', text: relativeTime(data.created_at || item.ts) }));
    const classes = ['notif-item', item.read ? 'is-read' : 'is-unread', `priority-${data.priority || 'normal'}`];
    const inner = href ? node('a', { href, class: 'notif-link' }, body) : body;
    return node('li', { class: classes.join(' '), 'data-testid': 'notification-item', 'data-kind': data.kind || '' }, inner);
  }
}

if (root) {
  window.notificationBell = new Bell(root);
  // A device that allowed push keeps its subscription fresh (settings.js makes it).
  if ('serviceWorker' in navigator && 'Notification' in window && Notification.permission === 'granted') {
    navigator.serviceWorker.register('/sw.js').catch(() => {});
  }
}
