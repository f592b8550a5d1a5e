// Approval cards (docs/protocol.md §11) on the conversation page. A tool call that needs a person's
// approval shows as a card in its run: what it would do, its arguments, who may decide and until
// when. A member with the approver role approves (optionally with edited arguments, as JSON) or
// rejects; everyone else sees the card read-only, and every card follows the decision live.
//
// It talks to chat.js only through its documented hook (chat.js, "Plug-ins"):
//   window 'chat:event'       detail: a durable event frame, once per event, in seq order
//   window 'chat:reset'       the transcript is rebuilt: cards are re-created from the events
//   window 'chat:active-runs' detail: subscribe's active_runs (a waiting run carries `approval`)
//   window.chatHooks.request(frame) -> Promise of the reply (rejects with {code, message})
// All text goes through textContent, never innerHTML.

import { el } from './dom.js';

const TERMINAL = new Set(['agent_completed', 'agent_failed', 'agent_cancelled']);
const DECIDED = { approved: 'Approved', rejected: 'Rejected', expired: 'Expired — nobody decided in time' };
const BADGES = { pending: 'Approval needed', approved: 'Approved', rejected: 'Rejected', expired: 'Expired', closed: 'Closed' };

function canonical(value) {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value && typeof value === 'object') {
    return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

function clock(ts) {
  const date = new Date(ts);
  return Number.isNaN(date.getTime()) ? '' : date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

class Approvals {
  constructor(root) {
    this.role = root.dataset.role;
    this.transcript = document.querySelector('[data-testid="transcript"]');
    this.cards = new Map(); // `${run_id}/${call_id}` -> card
    window.addEventListener('chat:reset', () => this.cards.clear());
    window.addEventListener('chat:event', (event) => this.onEvent(event.detail));
    window.addEventListener('chat:active-runs', (event) => this.onActiveRuns(event.detail || []));
  }

  mayDecide(approverRole) {
    return this.role === 'owner' || (approverRole === 'member' && this.role === 'member');
  }

  onEvent(frame) {
    const data = (frame && frame.data) || {};
    if (frame.type === 'approval_requested') this.requested(data);
    else if (frame.type === 'approval_resolved') this.resolved(data);
    else if (TERMINAL.has(frame.type)) this.runEnded(data.run_id, frame.type);
  }

  // A run that waits for approval and started before the loaded page: its request is only here.
  onActiveRuns(runs) {
    for (const run of runs) {
      if (run.status === 'waiting_approval' && run.approval) this.requested(run.approval);
    }
  }

  requested(data) {
    const key = `${data.run_id}/${data.call_id}`;
    const known = this.cards.get(key);
    if (known && known.node.isConnected) return;
    const card = this.build(data);
    this.cards.set(key, card);
    // In its run's block, after the steps so far; a run not on the page: at the end of the transcript.
    const run = this.transcript.querySelector(`[data-run-id="${CSS.escape(data.run_id)}"] [data-testid="run-steps"]`);
    (run || this.transcript).append(card.node);
  }

  build(data) {
    const may = this.mayDecide(data.approver_role);
    const original = data.arguments || {};
    const args = el('textarea', {
      class: 'approval-arguments code', testid: 'approval-arguments', rows: '3', spellcheck: 'false',
      'aria-label': 'Arguments (JSON)', readonly: !may,
    });
    args.value = JSON.stringify(original, null, 2);
    args.rows = Math.min(12, Math.max(3, args.value.split('\n').length));
    const error = el('div', { class: 'approval-error', testid: 'approval-error', role: 'alert', hidden: true });
    const status = el('div', { class: 'approval-status', testid: 'approval-status' });
    const approve = el('button', { type: 'button', class: 'btn btn-primary btn-xs', testid: 'approval-approve', text: 'Approve' });
    const reject = el('button', { type: 'button', class: 'btn btn-ghost btn-xs', testid: 'approval-reject', text: 'Reject' });
    const actions = el('div', { class: 'approval-actions', hidden: !may }, approve, reject);
    const who = data.approver_role === 'member' ? 'a member or an owner' : 'an owner';
    const node = el('div', {
      class: 'step approval-card', testid: 'approval-card', 'data-run-id': data.run_id,
      'data-call-id': data.call_id, 'data-tool': data.tool, 'data-state': 'pending',
    },
    el('div', { class: 'approval-head' },
      el('span', { class: 'approval-badge', testid: 'approval-badge', text: BADGES.pending }),
      el('span', { class: 'tool-name', testid: 'approval-tool', text: data.tool || 'tool' })),
    el('div', { class: 'approval-reason', testid: 'approval-reason', text: data.reason || '' }),
    args, error,
    el('div', { class: 'approval-foot' },
      el('span', { class: 'approval-who', testid: 'approval-who',
        text: may ? `You may decide (expires ${clock(data.expires_at)})`
          : `Waiting for ${who} (expires ${clock(data.expires_at)})` }),
      actions),
    status);
    const card = { node, args, error, status, actions, original, data, busy: false };
    this.runStatus(data.run_id, 'Waiting for approval…');
    approve.addEventListener('click', () => this.decide(card, 'approve'));
    reject.addEventListener('click', () => this.decide(card, 'reject'));
    args.addEventListener('input', () => this.showError(card, null));
    return card;
  }

  showError(card, message) {
    card.error.hidden = !message;
    card.error.textContent = message || '';
    card.args.classList.toggle('is-invalid', Boolean(message));
  }

  async decide(card, decision) {
    if (card.busy || card.node.dataset.state !== 'pending') return;
    const frame = { type: 'approve', run_id: card.data.run_id, call_id: card.data.call_id, decision };
    if (decision === 'approve') {
      let edited;
      try {
        edited = JSON.parse(card.args.value);
      } catch (err) {
        this.showError(card, `The arguments are not valid JSON: ${err.message}`);
        return;
      }
      if (!edited || typeof edited !== 'object' || Array.isArray(edited)) {
        this.showError(card, 'The arguments must be a JSON object.');
        return;
      }
      if (canonical(edited) !== canonical(card.original)) frame.arguments = edited;
    }
    card.busy = true;
    this.showError(card, null);
    for (const button of card.actions.querySelectorAll('button')) button.disabled = true;
    try {
      const hooks = window.chatHooks;
      if (!hooks) throw { code: 'unavailable', message: 'the chat is not ready' };
      await hooks.request(frame);
      // The approval_resolved event that every member gets settles the card.
    } catch (err) {
      const message = err && err.message ? err.message : String(err && err.code);
      this.showError(card, err && err.code === 'conflict' ? `Already settled: ${message}` : message);
    } finally {
      card.busy = false;
      for (const button of card.actions.querySelectorAll('button')) button.disabled = false;
    }
  }

  resolved(data) {
    const card = this.cards.get(`${data.run_id}/${data.call_id}`);
    if (!card) return;
    const by = data.by && data.by.username ? ` by ${data.by.username}` : '';
    const edited = data.decision === 'approved' && canonical(data.arguments || {}) !== canonical(card.original);
    card.args.value = JSON.stringify(data.arguments || {}, null, 2);
    this.settle(card, data.decision, `${DECIDED[data.decision] || data.decision}${by}${edited ? ' (with edited arguments)' : ''}.`);
  }

  // A run that ended while its call still waited (cancelled): the request is closed.
  runEnded(runId, how) {
    for (const card of this.cards.values()) {
      if (card.data.run_id === runId && card.node.dataset.state === 'pending') {
        this.settle(card, 'closed', how === 'agent_cancelled' ? 'Closed: the run was cancelled.' : 'Closed: the run ended.');
      }
    }
  }

  // The run's own status line (chat.js writes it on the run's next event).
  runStatus(runId, text) {
    const status = this.transcript.querySelector(`[data-run-id="${CSS.escape(runId)}"] [data-testid="run-status"]`);
    if (status && status.dataset.status === undefined) status.textContent = text;
  }

  settle(card, state, text) {
    card.node.dataset.state = state;
    const badge = card.node.querySelector('[data-testid="approval-badge"]');
    if (badge) badge.textContent = BADGES[state] || state;
    if (state !== 'closed') this.runStatus(card.data.run_id, 'Thinking…');
    card.status.textContent = text;
    card.args.readOnly = true;
    card.actions.hidden = true;
    this.showError(card, null);
    const who = card.node.querySelector('[data-testid="approval-who"]');
    if (who) who.hidden = true;
  }
}

const root = document.getElementById('chat-app');
if (root) new Approvals(root);
