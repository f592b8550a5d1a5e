// The "Members" dialog of the conversation menu: who is in the conversation and with which role.
// Owners invite by username (member or viewer), change roles and remove; members and viewers see
// the list only. The server checks every change (GET/POST /api/conversations/{id}/members/,
// PATCH/DELETE …/members/{user_id}/); its refusals (unknown user, the last owner…) show inline.
import { el } from './dom.js';
import { api, showError, wireDialog } from './restapi.js';

const ROLES = [['owner', 'Owner'], ['member', 'Member'], ['viewer', 'Viewer']];

export class MembersDialog {
  constructor(dialog, { conversationId, isOwner, onChange }) {
    this.dialog = dialog;
    this.path = `/api/conversations/${encodeURIComponent(conversationId)}/members/`;
    this.isOwner = isOwner;
    this.onChange = onChange;
    this.list = dialog.querySelector('[data-testid="member-list"]');
    this.error = dialog.querySelector('[data-testid="members-error"]');
    this.form = dialog.querySelector('[data-testid="invite-form"]');
    this.me = Number(document.getElementById('chat-app').dataset.userId);
    wireDialog(dialog);
    this.form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.invite();
    });
  }

  async open() {
    showError(this.error, '');
    this.form.hidden = !this.isOwner();
    this.form.reset();
    this.dialog.showModal();
    await this.load();
    const first = this.isOwner() ? this.form.elements.username : this.dialog.querySelector('[data-testid="members-close"]');
    first.focus();
  }

  async load() {
    const result = await api('GET', this.path);
    if (!result.ok) {
      showError(this.error, result.error);
      return;
    }
    const rows = Array.isArray(result.body) ? result.body : (result.body && result.body.members) || [];
    this.list.replaceChildren(...rows.map((row) => this.renderRow(row)));
  }

  renderRow(row) {
    const user = row.user || {};
    const editable = this.isOwner();
    const role = editable
      ? this.roleSelect(user, row.role)
      : el('span', { class: `role role-${row.role}`, testid: 'member-role' }, row.role);
    const remove = editable && user.id !== this.me
      ? el('button', {
        type: 'button', class: 'btn btn-ghost btn-xs', testid: 'member-remove',
        'aria-label': `Remove ${user.username}`,
      }, 'Remove')
      : null;
    if (remove) remove.addEventListener('click', () => this.remove(user));
    return el('li', { class: 'member-row', testid: 'member-row', 'data-username': user.username, 'data-role': row.role },
      el('span', { class: 'avatar avatar-sm', 'aria-hidden': 'true' }, (user.username || '?').charAt(0).toUpperCase()),
      el('span', { class: 'member-name', testid: 'member-name' }, user.username || 'deleted user',
        user.id === this.me ? el('span', { class: 'msg-you' }, 'you') : null),
      role,
      remove);
  }

  roleSelect(user, current) {
    const select = el('select', { class: 'member-role-select', testid: 'member-role-select', 'aria-label': `Role of ${user.username}` },
      ...ROLES.map(([value, label]) => el('option', { value, selected: value === current }, label)));
    select.addEventListener('change', async () => {
      showError(this.error, '');
      const result = await api('PATCH', `${this.path}${encodeURIComponent(user.id)}/`, { role: select.value });
      if (!result.ok) {
        showError(this.error, result.error);
        select.value = current;
        return;
      }
      await this.load();
      this.onChange();
    });
    return select;
  }

  async remove(user) {
    showError(this.error, '');
    const result = await api('DELETE', `${this.path}${encodeURIComponent(user.id)}/`);
    if (!result.ok) {
      showError(this.error, result.error);
      return;
    }
    await this.load();
    this.onChange();
  }

  async invite() {
    const username = this.form.elements.username.value.trim();
    if (!username) {
      showError(this.error, 'Type the username of the person to invite.');
      return;
    }
    showError(this.error, '');
    const submit = this.form.querySelector('[type="submit"]');
    submit.disabled = true;
    const result = await api('POST', this.path, { username, role: this.form.elements.role.value });
    submit.disabled = false;
    if (!result.ok) {
      showError(this.error, result.error);
      return;
    }
    this.form.reset();
    await this.load();
    this.onChange();
  }
}
