// The conversation sidebar (conversation page and list page): the caller's conversations, newest
// activity first, with a preview, a relative time and an unread badge; search by title (the
// server's `q`), the archived ones, a workspace switcher (remembered in localStorage) with the open
// conversations of that workspace one can join, and "New conversation".
//
// Data: GET /api/conversations/ (docs/protocol.md §7) — one call per refresh; a second one only
// while a search or the archived view is shown (the unfiltered list gives the unread total for
// the tab's title and the list page's own list, which listens to `sidebar:data`). Refreshed when
// the page's socket delivers anything (the `chat:*` window events of chat.js), at most once per
// REFRESH_GAP_MS, every POLL_MS, and when the tab comes back into view.
import { el } from './dom.js';
import { Drawer } from './drawer.js';
import { NewConversationDialog } from './new-conversation.js';
import { api, badgeText, showError, workspaceIdOf } from './restapi.js';
import { setUnreadTotal } from './unread-title.js';

const REFRESH_GAP_MS = 2000;
const POLL_MS = 60_000;
const SEARCH_DEBOUNCE_MS = 250;
const WORKSPACE_KEY = 'chat.sidebar.workspace';
const LIVE_EVENTS = ['chat:notification', 'chat:notifications-read', 'chat:reset', 'chat:conversation-changed'];
// The steps of an answer being written change nothing the sidebar shows (its preview is the last
// message, its order moves with the run's start and end): no refresh per streamed chunk.
const QUIET_EVENTS = new Set(['agent_thinking', 'tool_executing', 'tool_completed', 'agent_delta', 'approval_resolved']);

function relativeTime(iso) {
  const then = Date.parse(iso);
  if (!iso || Number.isNaN(then)) return '';
  const seconds = Math.max(0, (Date.now() - then) / 1000);
  if (seconds < 60) return 'now';
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h`;
  if (seconds < 7 * 86400) return new Date(then).toLocaleDateString([], { weekday: 'short' });
  return new Date(then).toLocaleDateString([], { month: 'short', day: 'numeric' });
}

function previewOf(item) {
  const last = item.last_message;
  if (!last) return { who: '', text: 'No messages yet' };
  const who = (last.author && last.author.username) || '';
  const text = last.deleted ? 'message deleted' : (last.preview || '');
  return { who, text };
}

class Sidebar {
  constructor(root) {
    this.root = root;
    this.current = root.dataset.current || '';
    this.list = root.querySelector('[data-testid="sidebar-list"]');
    this.empty = root.querySelector('[data-testid="sidebar-empty"]');
    this.search = root.querySelector('[data-testid="sidebar-search"]');
    this.archivedButton = root.querySelector('[data-testid="sidebar-archived"]');
    this.workspaceSelect = root.querySelector('[data-testid="sidebar-workspace"]');
    this.openSection = root.querySelector('[data-testid="sidebar-open"]');
    this.openList = root.querySelector('[data-testid="sidebar-open-list"]');
    this.openError = root.querySelector('[data-testid="sidebar-open-error"]');
    this.toggleBadge = document.querySelector('[data-testid="sidebar-toggle-unread"]');
    this.chatApp = document.getElementById('chat-app');

    this.all = []; // the unfiltered list: the unread total
    this.shown = null; // the searched / archived list, when one is asked for
    this.workspaces = [];
    this.workspace = localStorage.getItem(WORKSPACE_KEY) || '';
    this.archived = false;
    this.lastRefresh = 0;
    this.timer = 0;
    this.inflight = null;

    this.drawer = new Drawer({
      panel: root,
      toggle: document.querySelector('[data-testid="sidebar-toggle"]'),
      close: root.querySelector('[data-testid="sidebar-close"]'),
      backdrop: document.querySelector('[data-testid="sidebar-backdrop"]'),
      onOpen: () => this.search.focus(),
    });
    const dialog = document.querySelector('[data-testid="new-conversation-dialog"]');
    this.newDialog = dialog ? new NewConversationDialog(dialog) : null;
    root.querySelector('[data-testid="sidebar-new"]').addEventListener('click', () => {
      if (this.newDialog) this.newDialog.open(this.workspaces, this.workspace);
    });

    let searchTimer = 0;
    this.search.addEventListener('input', () => {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(() => this.refresh(), SEARCH_DEBOUNCE_MS);
    });
    this.archivedButton.addEventListener('click', () => {
      this.archived = !this.archived;
      this.archivedButton.setAttribute('aria-pressed', String(this.archived));
      this.refresh();
    });
    this.workspaceSelect.addEventListener('change', () => {
      this.workspace = this.workspaceSelect.value;
      if (this.workspace) localStorage.setItem(WORKSPACE_KEY, this.workspace);
      else localStorage.removeItem(WORKSPACE_KEY);
      this.render();
      this.loadOpen();
    });

    for (const name of LIVE_EVENTS) window.addEventListener(name, () => this.requestRefresh());
    window.addEventListener('chat:event', (event) => {
      if (!QUIET_EVENTS.has(event.detail && event.detail.type)) this.requestRefresh();
    });
    window.addEventListener('focus', () => this.requestRefresh());
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible') this.requestRefresh();
    });
    setInterval(() => { if (document.visibilityState === 'visible') this.requestRefresh(); }, POLL_MS);
    // The open conversation's own count is the page's (it knows what is on screen before the
    // server has the read marker): follow it without a round trip.
    if (this.chatApp) {
      new MutationObserver(() => this.render())
        .observe(this.chatApp, { attributes: true, attributeFilter: ['data-unread'] });
    }

    this.loadWorkspaces();
    this.refresh();
  }

  /** A refresh at most once per REFRESH_GAP_MS: the first ask runs at once, later ones coalesce. */
  requestRefresh() {
    if (this.timer) return;
    const wait = Math.max(0, this.lastRefresh + REFRESH_GAP_MS - Date.now());
    this.timer = setTimeout(() => {
      this.timer = 0;
      this.refresh();
    }, wait);
  }

  async refresh() {
    this.lastRefresh = Date.now();
    const q = this.search.value.trim();
    const filtered = Boolean(q) || this.archived;
    const params = new URLSearchParams();
    if (q) params.set('q', q);
    if (this.archived) params.set('archived', '1');
    const ticket = Symbol('refresh');
    this.inflight = ticket;
    const [all, shown] = await Promise.all([
      api('GET', '/api/conversations/'),
      filtered ? api('GET', `/api/conversations/?${params}`) : Promise.resolve(null),
    ]);
    if (this.inflight !== ticket) return; // a newer refresh (another search) answers instead
    if (all.ok && Array.isArray(all.body)) this.all = all.body;
    this.shown = shown && shown.ok && Array.isArray(shown.body) ? shown.body : null;
    this.filterError = shown && !shown.ok ? shown.error : '';
    this.render();
    window.dispatchEvent(new CustomEvent('sidebar:data', { detail: { items: this.all } }));
  }

  unreadOf(item) {
    if (item.id === this.current && this.chatApp && this.chatApp.dataset.unread !== undefined) {
      return Number(this.chatApp.dataset.unread) || 0;
    }
    return Number(item.unread) || 0;
  }

  render() {
    const filtered = this.search.value.trim() || this.archived;
    let items = filtered ? (this.shown || []) : this.all;
    if (this.workspace) items = items.filter((item) => workspaceIdOf(item) === this.workspace);
    this.list.replaceChildren(...items.map((item) => el('li', {}, this.renderItem(item))));
    let emptyText = '';
    if (this.filterError) emptyText = this.filterError;
    else if (!items.length) {
      if (this.search.value.trim()) emptyText = 'No conversation matches this title.';
      else if (this.archived) emptyText = 'No archived conversations.';
      else if (this.workspace) emptyText = 'You are in no conversation of this workspace yet.';
      else emptyText = 'No conversations yet.';
    }
    this.empty.textContent = emptyText;
    this.empty.hidden = !emptyText;
    const total = this.all.filter((item) => !item.archived).reduce((sum, item) => sum + this.unreadOf(item), 0);
    setUnreadTotal(total);
    this.root.dataset.unreadTotal = String(total);
    if (this.toggleBadge) {
      this.toggleBadge.hidden = total === 0;
      this.toggleBadge.textContent = badgeText(total);
    }
  }

  renderItem(item) {
    const unread = this.unreadOf(item);
    const { who, text } = previewOf(item);
    const isCurrent = item.id === this.current;
    const title = item.title || 'Untitled';
    return el('a', {
      class: `sb-item${unread ? ' has-unread' : ''}${isCurrent ? ' is-current' : ''}`,
      href: `/c/${encodeURIComponent(item.id)}/`,
      testid: 'sidebar-item',
      'data-conversation-id': item.id,
      'data-unread': String(unread),
      'aria-current': isCurrent ? 'page' : null,
    },
    el('span', { class: 'sb-icon', 'aria-hidden': 'true' }, title.charAt(0).toUpperCase()),
    el('span', { class: 'sb-main' },
      el('span', { class: 'sb-row' },
        el('span', { class: 'sb-title', testid: 'sidebar-item-title' }, title),
        el('time', { class: 'sb-time', datetime: item.last_activity_at || null, testid: 'sidebar-item-time' },
          relativeTime(item.last_activity_at))),
      el('span', { class: 'sb-row' },
        el('span', { class: 'sb-preview', testid: 'sidebar-item-preview' },
          who ? el('b', {}, `${who}: `) : null, text),
        el('span', {
          class: 'sb-badge', testid: 'sidebar-unread', hidden: unread === 0, 'aria-label': `${unread} unread`,
        }, badgeText(unread)))));
  }

  async loadWorkspaces() {
    const result = await api('GET', '/api/workspaces/');
    if (!result.ok || !Array.isArray(result.body)) return;
    this.workspaces = result.body.map((w) => ({ ...w, id: String(w.id) }));
    this.workspaceSelect.replaceChildren(
      new Option('All workspaces', ''),
      ...this.workspaces.map((w) => new Option(w.name, w.id)),
    );
    if (!this.workspaces.some((w) => w.id === this.workspace)) {
      this.workspace = ''; // a workspace left since: back to all
      localStorage.removeItem(WORKSPACE_KEY);
    }
    this.workspaceSelect.value = this.workspace;
    this.render();
    this.loadOpen();
  }

  /** "Open conversations in <workspace>" that the caller has not joined. */
  async loadOpen() {
    showError(this.openError, '');
    const workspace = this.workspaces.find((w) => w.id === this.workspace);
    if (!workspace) {
      this.openSection.hidden = true;
      return;
    }
    const result = await api('GET', `/api/workspaces/${encodeURIComponent(workspace.id)}/conversations/`);
    if (workspace.id !== this.workspace) return; // switched again meanwhile
    const items = result.ok && Array.isArray(result.body) ? result.body : [];
    this.openSection.querySelector('[data-testid="sidebar-open-workspace"]').textContent = workspace.name;
    this.openList.replaceChildren(...items.map((item) => this.renderOpen(item)));
    this.openSection.hidden = items.length === 0;
  }

  renderOpen(item) {
    const join = el('button', {
      type: 'button', class: 'btn btn-ghost btn-xs', testid: 'sidebar-join', 'data-conversation-id': item.id,
    }, 'Join');
    join.addEventListener('click', async () => {
      join.disabled = true;
      const result = await api('POST', `/api/conversations/${encodeURIComponent(item.id)}/join/`);
      if (result.ok) {
        window.location.assign(`/c/${encodeURIComponent(item.id)}/`);
        return;
      }
      join.disabled = false;
      showError(this.openError, result.error);
      this.openSection.hidden = false;
    });
    return el('li', { class: 'sb-open-item', testid: 'sidebar-open-item', 'data-conversation-id': item.id },
      el('span', { class: 'sb-icon sb-icon-open', 'aria-hidden': 'true' }, '#'),
      el('span', { class: 'sb-title' }, item.title || 'Untitled'),
      join);
  }
}

const root = document.querySelector('[data-sidebar]');
if (root) window.__sidebar = new Sidebar(root);
