// The sidebar's "New conversation" dialog: title, workspace, private or open to the workspace,
// with or without the assistant → POST /api/conversations/, then the page of the new conversation.
import { api, showError, wireDialog } from './restapi.js';

export class NewConversationDialog {
  constructor(dialog) {
    this.dialog = dialog;
    this.form = dialog.querySelector('form');
    this.title = this.form.elements.title;
    this.workspace = this.form.elements.workspace;
    this.agent = this.form.elements.agent;
    this.error = dialog.querySelector('[data-testid="new-dialog-error"]');
    this.submit = dialog.querySelector('[data-testid="new-dialog-submit"]');
    wireDialog(dialog);
    this.title.addEventListener('input', () => showError(this.error, ''));
    this.form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.create();
    });
  }

  /** Open it with `workspaces` ([{id, name, role}]) to pick from, `preferred` selected. */
  open(workspaces, preferred) {
    this.form.reset();
    showError(this.error, '');
    const writable = workspaces.filter((w) => w.role !== 'viewer');
    // The caller's personal workspace (the server names it "<username>'s workspace" and makes it on
    // the first conversation created without a workspace: value '' stands for it until then).
    const me = ((document.querySelector('[data-testid="current-user"]') || {}).textContent || '').trim();
    const personal = writable.find((w) => w.personal || w.name === `${me}'s workspace`);
    const options = writable.map((w) => new Option(w === personal ? `${w.name} (personal)` : w.name, w.id));
    if (!personal) options.unshift(new Option('Personal (just you)', ''));
    this.workspace.replaceChildren(...options);
    const chosen = writable.find((w) => w.id === preferred) || personal;
    this.workspace.value = chosen ? chosen.id : '';
    this.workspace.closest('.field').hidden = options.length < 2;
    this.dialog.showModal();
    this.title.focus();
  }

  async create() {
    const title = this.title.value.trim();
    if (!title) {
      showError(this.error, 'Give the conversation a title.');
      this.title.focus();
      return;
    }
    showError(this.error, '');
    this.submit.disabled = true;
    const body = {
      title,
      agent: this.agent.checked,
      visibility: this.form.elements.visibility.value || 'private',
    };
    if (this.workspace.value) body.workspace = this.workspace.value;
    const result = await api('POST', '/api/conversations/', body);
    this.submit.disabled = false;
    if (result.ok && result.body && result.body.id) {
      window.location.assign(`/c/${encodeURIComponent(result.body.id)}/`);
      return;
    }
    showError(this.error, result.error);
  }
}
