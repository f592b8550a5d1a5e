// The composer: the textarea (Enter sends, Shift+Enter a new line, grows with its text), drafts and
// @mentions (collab.js), and typing notices kept well under the server's rate: `start` at most once
// per TYPING_START_MS while typing, `stop` on send, on blur and after TYPING_IDLE_MS without a key.
// Typing is best-effort: its errors are swallowed, never shown.

import { DraftSync, MentionPicker } from './collab.js';

const TYPING_START_MS = 3000;
const TYPING_IDLE_MS = 2000;
const MAX_HEIGHT_PX = 220;

export class Composer {
  constructor(view) {
    this.view = view;
    this.form = view.q('composer-form');
    this.textarea = view.q('composer');
    this.sendButton = view.q('send');
    this.lastStartAt = -Infinity; // when the last `start` went out (a `stop` does not reset it)
    this.typing = false; // a `start` is out and no `stop` followed
    this.idleTimer = null;
    this.drafts = view.canWrite ? new DraftSync({
      textarea: this.textarea,
      save: (text) => view.client.request({ type: 'draft', conversation: view.conversationId, text }),
      afterApply: () => this.autosize(),
    }) : null;
    this.mentions = view.canWrite ? new MentionPicker({ textarea: this.textarea, candidates: () => view.mentionCandidates() }) : null;
    this.bind();
  }

  bind() {
    if (!this.view.canWrite) {
      this.textarea.disabled = true;
      this.sendButton.disabled = true;
      this.form.classList.add('composer-readonly');
      this.form.dataset.readonly = 'true';
    }
    this.form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.submit();
    });
    this.textarea.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
        event.preventDefault();
        this.submit();
      }
    });
    this.textarea.addEventListener('input', () => {
      this.autosize();
      this.noteTyping();
      if (this.drafts) this.drafts.edited();
    });
    this.textarea.addEventListener('blur', () => this.stopTyping());
    this.autosize();
  }

  focus() {
    if (this.view.canWrite) this.textarea.focus({ preventScroll: true });
  }

  submit() {
    const view = this.view;
    if (!view.canWrite) return;
    const text = this.textarea.value.trim();
    if (!text) return;
    if (this.mentions) this.mentions.close();
    this.textarea.value = '';
    this.autosize();
    this.stopTyping();
    if (this.drafts) this.drafts.cleared();
    view.outbox.add(text);
    view.scrollToBottom();
    view.updateEmpty();
  }

  autosize() {
    this.textarea.style.height = 'auto';
    this.textarea.style.height = `${Math.min(this.textarea.scrollHeight, MAX_HEIGHT_PX)}px`;
  }

  sendTyping(state) {
    const view = this.view;
    // A request, not a bare frame: an error (a limit) comes back as this request's reply and is
    // dropped here, instead of arriving as a connection-level error the page would show.
    view.client.request({ type: 'typing', conversation: view.conversationId, state }).catch(() => {});
  }

  noteTyping() {
    const view = this.view;
    if (!view.canWrite || !view.synced) return;
    if (!this.textarea.value.trim()) {
      this.stopTyping();
      return;
    }
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => this.stopTyping(), TYPING_IDLE_MS);
    const now = Date.now();
    if (now - this.lastStartAt < TYPING_START_MS) return;
    this.lastStartAt = now;
    this.typing = true;
    this.sendTyping('start');
  }

  stopTyping() {
    clearTimeout(this.idleTimer);
    this.idleTimer = null;
    if (!this.typing) return;
    this.typing = false;
    if (this.view.canWrite && this.view.synced) this.sendTyping('stop');
  }

  // The placeholder says how to reach the assistant when a plain message will not.
  updatePlaceholder() {
    const view = this.view;
    if (!view.canWrite || !view.agent) return;
    const humans = view.members.size;
    const base = `Message ${view.root.dataset.title || ''}…`;
    let hint = '(Enter to send, Shift+Enter for a new line)';
    if (view.agentMode === 'off') hint = '— the assistant is off';
    else if (view.agentMode === 'mention' || (view.agentMode === 'auto' && humans > 1)) hint = '— type @assistant to ask the assistant';
    this.textarea.placeholder = `${base}  ${hint}`;
    view.root.dataset.agentHint = hint;
  }
}
