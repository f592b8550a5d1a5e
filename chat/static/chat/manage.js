// The conversation menu in the chat page's header (the `chat-actions` slot): rename and visibility
// (owners), archive / unarchive (anyone, their own membership), members, leave (non-owners), delete
// (owners, confirmed, then back to the list). Through the REST API (docs/protocol.md §7); the
// server decides — a refusal is shown in the dialog, never hidden.
import { el } from './dom.js';
import { MembersDialog } from './members.js';
import { api, showError, wireDialog } from './restapi.js';
import { setBaseTitle } from './unread-title.js';

const app = document.getElementById('chat-app');
const slot = document.querySelector('[data-testid="chat-actions"]');

function changed() {
  // The sidebar listens (a refresh, like a socket event).
  window.dispatchEvent(new CustomEvent('chat:conversation-changed'));
}

class ConversationMenu {
  constructor() {
    this.id = app.dataset.conversationId;
    this.path = `/api/conversations/${encodeURIComponent(this.id)}/`;
    this.role = app.dataset.role;
    this.state = { title: app.dataset.title, visibility: 'private', archived: false };
    this.button = el('button', {
      type: 'button', class: 'btn btn-ghost btn-sm menu-trigger', testid: 'chat-menu-button',
      'aria-haspopup': 'menu', 'aria-expanded': 'false', 'aria-label': 'Conversation menu',
    }, el('span', { 'aria-hidden': 'true' }, '⋯'));
    this.menu = el('div', { class: 'menu', role: 'menu', testid: 'chat-menu', hidden: true });
    slot.replaceChildren(this.button, this.menu);
    slot.classList.add('chat-actions');
    this.button.addEventListener('click', () => this.toggle());
    this.menu.addEventListener('keydown', (event) => this.onMenuKey(event));
    document.addEventListener('click', (event) => {
      if (!this.menu.hidden && !slot.contains(event.target)) this.toggle(false);
    });

    this.rename = document.querySelector('[data-testid="rename-dialog"]');
    this.confirm = document.querySelector('[data-testid="confirm-dialog"]');
    wireDialog(this.rename);
    wireDialog(this.confirm);
    this.rename.querySelector('form').addEventListener('submit', (event) => {
      event.preventDefault();
      this.saveTitle();
    });
    this.confirm.querySelector('form').addEventListener('submit', (event) => {
      event.preventDefault();
      if (this.confirmAction) this.confirmAction();
    });
    this.members = new MembersDialog(document.querySelector('[data-testid="members-dialog"]'), {
      conversationId: this.id,
      isOwner: () => this.role === 'owner',
      onChange: changed,
    });
    window.addEventListener('chat:event', (event) => this.onEvent(event.detail));
    this.load();
  }

  // Another owner's change, live (docs/protocol.md §4): the header follows it; the members list too
  // when it is open. The menu's items are rebuilt from this state each time it opens.
  onEvent(frame) {
    if (!frame || !frame.data) return;
    const me = Number(app.dataset.userId);
    if (frame.type === 'conversation_updated') {
      this.state.visibility = frame.data.visibility;
      slot.dataset.visibility = frame.data.visibility;
      if (frame.data.title !== this.state.title) this.showTitle(frame.data.title);
    } else if (frame.type === 'member_role_changed' && frame.data.user && frame.data.user.id === me) {
      this.role = frame.data.role;
    }
    if (frame.type.startsWith('member_') && this.members.dialog.open) this.members.load();
  }

  async load() {
    const result = await api('GET', this.path);
    if (!result.ok || !result.body) return;
    const body = result.body;
    this.state = {
      title: body.title || this.state.title,
      visibility: body.visibility || 'private',
      archived: Boolean(body.archived),
    };
    if (body.role) this.role = body.role;
    if (body.archived === undefined) {
      // The detail has no archive flag: the archived list says whether this one is in it.
      const archived = await api('GET', '/api/conversations/?archived=1');
      this.state.archived = archived.ok && Array.isArray(archived.body) && archived.body.some((item) => item.id === this.id);
    }
    slot.dataset.visibility = this.state.visibility;
    slot.dataset.archived = String(this.state.archived);
  }

  items() {
    const owner = this.role === 'owner';
    const open = this.state.visibility === 'open';
    return [
      owner && ['rename', 'Rename…', () => this.openRename()],
      owner && ['visibility', open ? 'Make private' : 'Open to the workspace', () => this.toggleVisibility()],
      ['archive', this.state.archived ? 'Unarchive' : 'Archive', () => this.toggleArchive()],
      ['members', 'Members…', () => this.members.open()],
      !owner && ['leave', 'Leave…', () => this.askLeave()],
      owner && ['delete', 'Delete…', () => this.askDelete()],
    ].filter(Boolean);
  }

  toggle(open = this.menu.hidden) {
    if (open) {
      this.menu.replaceChildren(...this.items().map(([key, label, action]) => {
        const item = el('button', {
          type: 'button', role: 'menuitem', class: `menu-item${key === 'delete' ? ' menu-item-danger' : ''}`,
          testid: `chat-menu-${key}`, tabindex: '-1',
        }, label);
        item.addEventListener('click', () => {
          this.toggle(false);
          action();
        });
        return item;
      }));
    }
    this.menu.hidden = !open;
    this.button.setAttribute('aria-expanded', String(open));
    if (open) this.menu.querySelector('[role="menuitem"]').focus();
  }

  onMenuKey(event) {
    const items = Array.from(this.menu.querySelectorAll('[role="menuitem"]'));
    const index = items.indexOf(document.activeElement);
    const move = { ArrowDown: 1, ArrowUp: -1 }[event.key];
    if (move) {
      event.preventDefault();
      items[(index + move + items.length) % items.length].focus();
    } else if (event.key === 'Home' || event.key === 'End') {
      event.preventDefault();
      items[event.key === 'Home' ? 0 : items.length - 1].focus();
    } else if (event.key === 'Escape' || event.key === 'Tab') {
      if (event.key === 'Escape') event.preventDefault();
      this.toggle(false);
      if (event.key === 'Escape') this.button.focus();
    }
  }

  openRename() {
    const input = this.rename.querySelector('[data-testid="rename-title"]');
    input.value = this.state.title;
    showError(this.rename.querySelector('[role="alert"]'), '');
    this.rename.showModal();
    input.select();
  }

  async saveTitle() {
    const input = this.rename.querySelector('[data-testid="rename-title"]');
    const error = this.rename.querySelector('[role="alert"]');
    const title = input.value.trim();
    if (!title) {
      showError(error, 'The title cannot be empty.');
      return;
    }
    const result = await api('PATCH', this.path, { title });
    if (!result.ok) {
      showError(error, result.error);
      return;
    }
    this.showTitle((result.body && result.body.title) || title);
    this.rename.close();
    changed();
  }

  showTitle(title) {
    const previous = this.state.title;
    this.state.title = title;
    const composer = document.querySelector('[data-testid="composer"]');
    if (composer && previous && composer.placeholder.startsWith(`Message ${previous}…`)) {
      composer.placeholder = `Message ${title}…${composer.placeholder.slice(`Message ${previous}…`.length)}`;
    }
    const heading = document.querySelector('.chat-header [data-testid="conversation-title"]');
    if (heading) heading.textContent = title;
    app.dataset.title = title;
    setBaseTitle(`${title} · Chatcore`); // the tab's title, with the unread count in front
  }

  async toggleVisibility() {
    const visibility = this.state.visibility === 'open' ? 'private' : 'open';
    const result = await api('PATCH', this.path, { visibility });
    if (!result.ok) {
      this.notice(result.error, 'warn');
      return;
    }
    this.state.visibility = visibility;
    slot.dataset.visibility = visibility;
    this.notice(visibility === 'open' ? 'Members of the workspace can now find and join it.' : 'Only its members can see it now.');
    changed();
  }

  async toggleArchive() {
    const archived = !this.state.archived;
    const result = await api('PATCH', this.path, { archived });
    if (!result.ok) {
      this.notice(result.error, 'warn');
      return;
    }
    this.state.archived = archived;
    slot.dataset.archived = String(archived);
    this.notice(archived ? 'Archived: it is listed under Archived in the sidebar.' : 'Back in your conversation list.');
    changed();
  }

  askConfirm({ title, text, action, label, run }) {
    this.confirm.querySelector('[data-testid="confirm-title"]').textContent = title;
    this.confirm.querySelector('[data-testid="confirm-text"]').textContent = text;
    const submit = this.confirm.querySelector('[data-testid="confirm-submit"]');
    submit.textContent = label;
    submit.dataset.action = action;
    const error = this.confirm.querySelector('[role="alert"]');
    showError(error, '');
    this.confirmAction = async () => {
      submit.disabled = true;
      const result = await run();
      submit.disabled = false;
      if (!result.ok) {
        showError(error, result.error);
        return;
      }
      window.location.assign('/');
    };
    this.confirm.showModal();
    this.confirm.querySelector('[data-testid="confirm-cancel"]').focus();
  }

  askDelete() {
    this.askConfirm({
      title: 'Delete this conversation?',
      text: `“${this.state.title}” disappears for every member at once. This cannot be undone from the page.`,
      action: 'delete',
      label: 'Delete',
      run: () => api('DELETE', this.path),
    });
  }

  askLeave() {
    const me = app.dataset.userId;
    this.askConfirm({
      title: 'Leave this conversation?',
      text: `You will no longer see “${this.state.title}” unless someone adds you again.`,
      action: 'leave',
      label: 'Leave',
      run: () => api('DELETE', `${this.path}members/${encodeURIComponent(me)}/`),
    });
  }

  // A one-line status under the header (role=status): what a menu action did or why it failed.
  notice(text, kind = 'info') {
    let line = document.querySelector('[data-testid="chat-menu-notice"]');
    if (!line) {
      line = el('div', { role: 'status', testid: 'chat-menu-notice' });
      document.querySelector('.chat-header').after(line);
    }
    line.className = `banner banner-${kind}`;
    line.dataset.kind = kind;
    line.textContent = text;
    line.hidden = !text;
    clearTimeout(this.noticeTimer);
    this.noticeTimer = setTimeout(() => { line.hidden = true; }, 6000);
  }
}

if (app && slot) window.__chatMenu = new ConversationMenu();
