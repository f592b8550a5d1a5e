// Per-message actions (docs/protocol.md §3 edit, delete, feedback, regenerate): a small toolbar on
// each message and answer, shown on hover and on keyboard focus (its buttons are in the tab order).
// * every message: Copy (its text, as written)
// * the user's own messages: Edit (inline: Enter saves, Esc cancels) and Delete (confirmed inline);
//   owners may delete anyone's (moderation)
// * answers: Regenerate (members who may send), thumbs up / down (private to the rater; the state
//   comes from GET /api/conversations/{id}/feedback/), Delete for owners
// The server has the last word: a refused action shows its error and changes nothing; an accepted
// edit or delete shows when its event arrives (the same for every member).

import { el } from './dom.js';
import { copyButton } from './markdown.js';

function button(label, testid, onclick, attrs = {}) {
  return el('button', { type: 'button', class: 'msg-action', testid, title: label, 'aria-label': label, onclick, ...attrs });
}

export class Actions {
  constructor(view) {
    this.view = view;
    this.ratings = new Map(); // answer message id -> 'up' | 'down'
    this.ratingsLoaded = false;
  }

  toolbar(label, ...buttons) {
    return el('div', { class: 'msg-actions', role: 'toolbar', 'aria-label': label, testid: 'message-actions' }, ...buttons);
  }

  // (Re)build a message's toolbar: after it is rendered, edited or deleted.
  forMessage(message) {
    const view = this.view;
    const body = message.node.querySelector('.msg-body');
    const old = body.querySelector(':scope > .msg-actions');
    if (old) old.remove();
    if (message.deleted || !message.id) return;
    const buttons = [copyButton(() => message.text, { label: 'Copy', testid: 'action-copy', className: 'msg-action' })];
    if (message.mine && view.canWrite) buttons.push(button('Edit', 'action-edit', () => this.edit(message), { text: 'Edit' }));
    if ((message.mine && view.canWrite) || view.role === 'owner') {
      buttons.push(button('Delete', 'action-delete', (event) => this.confirmDelete(event.currentTarget, message.id), { text: 'Delete' }));
    }
    body.append(this.toolbar(`Actions for ${message.author.username}'s message`, ...buttons));
  }

  forRun(run) {
    const view = this.view;
    run.actionsEl.replaceChildren();
    if (run.status === 'running' || run.status === 'queued') return;
    const buttons = [];
    if (run.text && !run.deleted) buttons.push(copyButton(() => run.text, { label: 'Copy', testid: 'action-copy', className: 'msg-action' }));
    if (view.canWrite && run.triggerId) {
      buttons.push(button('Regenerate the answer', 'action-regenerate', (event) => this.regenerate(event.currentTarget, run), { text: 'Regenerate' }));
    }
    if (run.messageId && !run.deleted) {
      const rating = this.ratings.get(run.messageId) || null;
      for (const [value, symbol, label] of [['up', '👍', 'Good answer'], ['down', '👎', 'Bad answer']]) {
        buttons.push(button(label, `action-rate-${value}`, () => this.rate(run, value), {
          text: symbol, 'aria-pressed': rating === value ? 'true' : 'false', class: `msg-action msg-rate${rating === value ? ' is-on' : ''}`,
        }));
      }
      if (view.role === 'owner') {
        buttons.push(button('Delete', 'action-delete', (event) => this.confirmDelete(event.currentTarget, run.messageId), { text: 'Delete' }));
      }
    }
    if (buttons.length) run.actionsEl.append(this.toolbar('Actions for the answer', ...buttons));
  }

  async command(frame, what) {
    const view = this.view;
    try {
      return await view.client.request({ conversation: view.conversationId, ...frame });
    } catch (err) {
      view.toasts.error(err, `Could not ${what}`);
      return null;
    }
  }

  // ---- edit ----

  edit(message) {
    if (message.editing) return;
    message.editing = true;
    const area = el('textarea', { class: 'msg-editor', testid: 'message-editor', 'aria-label': 'Edit message', rows: '2' });
    area.value = message.text;
    const close = () => {
      message.editing = false;
      form.remove();
      message.textEl.hidden = false;
      const again = message.node.querySelector('[data-testid="action-edit"]');
      if (again) again.focus();
    };
    const save = async () => {
      const text = area.value.trim();
      if (!text || text === message.text) {
        close();
        return;
      }
      area.disabled = true;
      const reply = await this.command({ type: 'edit', message_id: message.id, text }, 'edit the message');
      area.disabled = false;
      if (reply) close(); // the message_edited event shows the new text
    };
    area.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        save();
      } else if (event.key === 'Escape') {
        event.preventDefault();
        close();
      }
    });
    const form = el('div', { class: 'msg-edit', testid: 'message-edit' }, area,
      el('div', { class: 'msg-edit-actions' },
        el('span', { class: 'msg-edit-hint', text: 'Enter to save · Esc to cancel' }),
        el('button', { type: 'button', class: 'btn btn-ghost btn-xs', testid: 'edit-cancel', text: 'Cancel', onclick: close }),
        el('button', { type: 'button', class: 'btn btn-primary btn-xs', testid: 'edit-save', text: 'Save', onclick: save })));
    message.textEl.hidden = true;
    message.textEl.after(form);
    area.focus();
    area.setSelectionRange(area.value.length, area.value.length);
  }

  // ---- delete: the button asks "Delete?" in place; a second choice confirms ----

  confirmDelete(trigger, messageId) {
    const bar = trigger.closest('.msg-actions');
    const restore = () => {
      confirm.remove();
      bar.hidden = false;
      trigger.focus();
    };
    const yes = el('button', { type: 'button', class: 'btn btn-xs btn-danger', testid: 'delete-confirm', text: 'Delete',
      onclick: async () => {
        yes.disabled = true;
        const reply = await this.command({ type: 'delete', message_id: messageId }, 'delete the message');
        if (!reply) restore();
        else confirm.remove(); // the message_deleted event rebuilds the message
      } });
    const confirm = el('div', { class: 'msg-confirm', role: 'group', 'aria-label': 'Confirm deletion', testid: 'delete-prompt' },
      el('span', { text: 'Delete this message for everyone?' }), yes,
      el('button', { type: 'button', class: 'btn btn-ghost btn-xs', testid: 'delete-cancel', text: 'Cancel', onclick: restore }));
    bar.hidden = true;
    bar.after(confirm);
    yes.focus();
  }

  // ---- answers ----

  async regenerate(trigger, run) {
    trigger.disabled = true;
    const reply = await this.command({ type: 'regenerate', run_id: run.id }, 'regenerate the answer');
    trigger.disabled = false;
    if (reply && reply.run_id) this.view.ranRun(reply.run_id, run.triggerId);
  }

  async rate(run, value) {
    const before = this.ratings.get(run.messageId) || null;
    const rating = before === value ? null : value; // pressing the lit thumb again clears it
    this.setRating(run.messageId, rating);
    this.forRun(run);
    const reply = await this.command({ type: 'feedback', message_id: run.messageId, rating }, 'save your rating');
    if (!reply) this.setRating(run.messageId, before);
    this.forRun(run);
    const again = run.actionsEl.querySelector(`[data-testid="action-rate-${value}"]`);
    if (again) again.focus();
  }

  setRating(messageId, rating) {
    if (rating === 'up' || rating === 1) this.ratings.set(messageId, 'up');
    else if (rating === 'down' || rating === -1) this.ratings.set(messageId, 'down');
    else this.ratings.delete(messageId);
  }

  // The caller's own ratings, once per page (they are private: no event brings them).
  async loadRatings() {
    if (this.ratingsLoaded) return;
    this.ratingsLoaded = true;
    try {
      const response = await fetch(`/api/conversations/${encodeURIComponent(this.view.conversationId)}/feedback/`, {
        credentials: 'same-origin', headers: { Accept: 'application/json' },
      });
      if (!response.ok) return;
      const body = await response.json();
      const ratings = body && typeof body === 'object' ? (body.ratings || body.feedback || body) : {};
      for (const [messageId, rating] of Object.entries(ratings)) this.setRating(messageId, rating);
      for (const run of this.view.transcript.runs.values()) if (run.messageId) this.forRun(run);
    } catch (err) { /* ratings are decoration */ }
  }
}
