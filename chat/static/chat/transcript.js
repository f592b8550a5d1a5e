// The transcript: durable events (docs/protocol.md §4) applied in seq order, once each, into
// messages and run blocks.
//
// * A durable event with seq <= the last one applied is ignored, so a replay never duplicates.
// * Runs are rendered from their events (deltas included); `active_runs` only fills in a run whose
//   events are older than the loaded page. agent_completed replaces the streamed text with its text.
// * Consecutive messages of one author within GROUP_MS show their avatar and name once.
// * An answer that is not right below its question links to it ("↪ in reply to …").
// * message_edited / message_deleted change the message in place, live or replayed.
// Message text is rendered by markdown.js (sanitised); everything else goes in as text.

import { el, avatar } from './dom.js';
import { emit, formatTime } from './util.js';
import { renderInto } from './markdown.js';
import {
  addThinking, buildRun, finishRun, renderAnswer, renderWatchers, showDuration, toolCompleted, toolStarted,
} from './runs.js';

const GROUP_MS = 5 * 60 * 1000;
const QUOTE_CHARS = 60;

export class Transcript {
  constructor(view) {
    this.view = view;
    this.node = view.q('transcript');
    this.stats = view.stats;
    this.events = []; // every durable event applied, in seq order
    this.lastSeq = 0;
    this.firstSeq = null;
    this.runs = new Map();
    this.messages = new Map(); // message id -> { id, node, textEl, author, mine, text, ts, deleted }
    this.seededRuns = new Map(); // active_runs entries for runs that started before the loaded page
    this.prePageAnchor = null;
  }

  reset(events) {
    this.view.readTracker.reset();
    emit('reset');
    this.node.replaceChildren();
    this.prePageAnchor = null;
    this.events = [];
    this.runs.clear();
    this.messages.clear();
    this.lastSeq = 0;
    this.firstSeq = null;
    const sorted = [...events].sort((a, b) => a.seq - b.seq);
    for (const frame of sorted) this.apply(frame);
    for (const seed of this.seededRuns.values()) this.applySeed(seed);
  }

  apply(frame) {
    if (frame.seq <= this.lastSeq) {
      this.stats.duplicatesIgnored += 1;
      return;
    }
    if (this.lastSeq > 0 && frame.seq !== this.lastSeq + 1) {
      this.stats.gaps += 1; // history by messages skips the deltas of ended runs: expected there
    }
    this.lastSeq = frame.seq;
    if (this.firstSeq === null) this.firstSeq = frame.seq;
    this.events.push(frame);
    this.render(frame);
    this.view.noteDelivered(frame);
    emit('event', frame);
  }

  render(frame) {
    const data = frame.data || {};
    switch (frame.type) {
      case 'message': this.renderMessage(frame, data); break;
      case 'message_edited': this.edited(data); break;
      case 'message_deleted': this.deleted(data.message_id); break;
      case 'agent_started': this.started(frame, data); break;
      case 'agent_thinking': addThinking(this.ensureRun(data.run_id, frame), data.text); break;
      case 'tool_executing': toolStarted(this.ensureRun(data.run_id, frame), data); break;
      case 'tool_completed': toolCompleted(this.ensureRun(data.run_id, frame), data); break;
      case 'agent_delta': {
        const run = this.ensureRun(data.run_id, frame);
        if (frame.seq <= run.deltaSeq) return; // already inside seeded text
        run.deltaSeq = frame.seq;
        run.text += data.text || '';
        renderAnswer(run);
        break;
      }
      case 'agent_completed': {
        const run = this.ensureRun(data.run_id, frame);
        run.text = typeof data.text === 'string' ? data.text : run.text; // the whole answer wins
        run.messageId = data.message_id || null;
        this.finish(run, 'completed');
        showDuration(run, data.duration_ms);
        this.view.announce(`${run.nameEl.textContent} answered: ${run.text}`);
        break;
      }
      case 'agent_failed': {
        const run = this.ensureRun(data.run_id, frame);
        const error = data.error || {};
        run.errorEl.hidden = false;
        run.errorEl.textContent = `The assistant failed: ${error.message || error.code || 'unknown error'}`;
        this.finish(run, 'failed');
        break;
      }
      case 'agent_cancelled': {
        const run = this.ensureRun(data.run_id, frame);
        if (typeof data.partial_text === 'string' && data.partial_text) run.text = data.partial_text;
        const by = data.by && data.by.username ? ` by ${data.by.username}` : '';
        run.errorEl.hidden = false;
        run.errorEl.textContent = `Cancelled${by}.`;
        this.finish(run, 'cancelled');
        break;
      }
      default:
        break; // an event type this page does not know: ignore it (forward compatible)
    }
    const run = data.run_id && frame.type !== 'message' ? this.runs.get(data.run_id) : null;
    if (run) {
      // The run's block is "read" up to its newest event; its answer is a message for receipts.
      run.node.dataset.seq = String(Math.max(Number(run.node.dataset.seq) || 0, frame.seq));
      if (frame.type === 'agent_completed') run.node.dataset.receiptSeq = String(frame.seq);
    }
  }

  // ---- messages ----

  renderMessage(frame, data) {
    if (data.id && this.messages.has(data.id)) return;
    const view = this.view;
    const author = data.author || {};
    const name = author.username || (author.kind === 'agent' ? 'assistant' : 'unknown');
    const mine = author.kind !== 'agent' && author.id === view.userId;
    const mentionsMe = Array.isArray(data.mentions) && data.mentions.includes(view.userId);
    const ts = frame.ts || data.created_at;
    const textEl = el('div', { class: 'msg-text md', testid: 'message-text' });
    const node = el('article', {
      class: `msg ${mine ? 'msg-mine' : ''} ${author.kind === 'agent' ? 'msg-agent' : ''} ${mentionsMe ? 'msg-mentions-me' : ''}`,
      testid: 'message',
      id: data.id ? `msg-${data.id}` : undefined,
      tabindex: '-1',
      'data-seq': frame.seq,
      'data-receipt-seq': frame.seq,
      'data-mine': mine ? 'true' : 'false',
      'data-message-id': data.id,
      'data-author': name,
      'data-author-id': author.id,
      'data-kind': author.kind || 'user',
      'data-ts': ts,
      'data-mentions': Array.isArray(data.mentions) ? data.mentions.join(',') : '',
    },
    avatar(name, author.kind),
    el('div', { class: 'msg-body' },
      el('div', { class: 'msg-head' },
        el('span', { class: 'msg-author', testid: 'message-author', text: name }),
        mine ? el('span', { class: 'msg-you', text: 'you' }) : null,
        el('time', { class: 'msg-time', datetime: ts, text: formatTime(ts) })),
      textEl));
    const message = { id: data.id, node, textEl, author: { ...author, username: name }, mine, text: data.text || '', ts, deleted: false };
    if (data.id) this.messages.set(data.id, message);
    if (this.continues(node)) node.classList.add('msg-continued');
    this.node.append(node);
    if (data.deleted) this.markDeleted(message);
    else renderInto(textEl, message.text, { mentions: true });
    view.readTracker.observe(node);
    view.actions.forMessage(message);
    if (mine && data.client_msg_id) view.outbox.delivered(data.client_msg_id);
    if (view.synced && !data.deleted) view.announce(`${name}: ${message.text}`);
  }

  // Grouped with the message right above it: same person, within GROUP_MS.
  continues(node) {
    const prev = this.node.lastElementChild;
    if (!prev || prev.dataset.testid !== 'message' || prev.dataset.kind !== node.dataset.kind) return false;
    if (prev.dataset.authorId !== node.dataset.authorId || prev.dataset.author !== node.dataset.author) return false;
    const gap = Date.parse(node.dataset.ts) - Date.parse(prev.dataset.ts);
    return Number.isFinite(gap) && gap >= 0 && gap < GROUP_MS;
  }

  edited(data) {
    const message = this.messages.get(data.message_id);
    if (!message || message.deleted) return;
    message.text = data.text || '';
    renderInto(message.textEl, message.text, { mentions: true });
    message.node.dataset.edited = 'true';
    const head = message.node.querySelector('.msg-head');
    if (!head.querySelector('[data-testid="edited"]')) {
      head.append(el('span', { class: 'msg-edited', testid: 'edited', title: data.edited_at ? `Edited ${formatTime(data.edited_at)}` : 'Edited', text: '(edited)' }));
    }
    this.view.actions.forMessage(message);
  }

  deleted(messageId) {
    const message = this.messages.get(messageId);
    if (message) this.markDeleted(message);
    for (const run of this.runs.values()) {
      if (run.messageId === messageId) {
        run.deleted = true;
        run.node.dataset.deleted = 'true';
        run.text = '';
        run.answerEl.replaceChildren(el('em', { class: 'msg-deleted', text: 'This message was deleted' }));
        this.view.actions.forRun(run);
      }
    }
  }

  markDeleted(message) {
    message.deleted = true;
    message.text = '';
    message.node.dataset.deleted = 'true';
    message.textEl.replaceChildren(el('em', { class: 'msg-deleted', testid: 'message-deleted', text: 'This message was deleted' }));
    for (const edited of message.node.querySelectorAll('[data-testid="edited"]')) edited.remove();
    this.view.actions.forMessage(message);
  }

  // ---- runs ----

  started(frame, data) {
    let run = this.runs.get(data.run_id);
    if (run && run.queued) {
      run.queued = false;
      run.status = 'running';
      run.node.dataset.status = 'running';
      run.statusEl.textContent = 'Thinking…';
      this.node.append(run.node); // a queued placeholder moves to where its run starts
    }
    run = this.ensureRun(data.run_id, frame);
    run.started = true;
    run.startedAt = frame.ts || null;
    run.triggerId = data.trigger_message_id || null;
    run.regenerates = data.regenerates || null;
    run.requestedBy = data.requested_by ? data.requested_by.id : undefined;
    this.seededRuns.delete(run.id);
    if (data.agent) run.nameEl.textContent = data.agent;
    this.linkQuestion(run);
    this.updateRunControls(run);
  }

  // "↪ in reply to alice: what is…" when the question is not the block right above the answer.
  linkQuestion(run) {
    run.replyEl.replaceChildren();
    const question = run.triggerId ? this.messages.get(run.triggerId) : null;
    const prev = run.node.previousElementSibling;
    if (!run.triggerId || (question && prev === question.node && !run.regenerates && !run.queued)) return;
    const quote = question ? (question.deleted ? 'a deleted message' : question.text.replace(/\s+/g, ' ').trim()) : 'an earlier message';
    const short = quote.length > QUOTE_CHARS ? `${quote.slice(0, QUOTE_CHARS - 1)}…` : quote;
    const who = question ? `${question.author.username}: ` : '';
    run.replyEl.append(el('a', {
      class: 'reply-to', testid: 'reply-to', href: `#msg-${run.triggerId}`, 'data-message-id': run.triggerId,
      onclick: (event) => { event.preventDefault(); this.view.focusMessage(run.triggerId); },
    }, el('span', { 'aria-hidden': 'true', text: '↪ ' }), run.queued ? 'queued · ' : '',
    run.regenerates ? 'regenerated · ' : '', `in reply to ${who}${short}`));
  }

  // A run the page knows of (send's or regenerate's reply) before its agent_started: queued behind
  // the active one. Shown at the end with its question; it moves when it starts.
  queued(runId, triggerId) {
    if (this.runs.has(runId)) return;
    const run = this.ensureRun(runId, { type: 'agent_started' });
    run.queued = true;
    run.status = 'queued';
    run.node.dataset.status = 'queued';
    run.statusEl.textContent = 'queued';
    run.triggerId = triggerId;
    run.requestedBy = this.view.userId;
    this.linkQuestion(run);
    this.updateRunControls(run);
  }

  finish(run, status) {
    this.seededRuns.delete(run.id);
    finishRun(run, status);
    this.updateRunControls(run);
    this.view.actions.forRun(run);
  }

  // A run's block goes where its agent_started is. A run first seen through a later event started
  // before the loaded page, so its block goes on top, above everything that started on the page.
  ensureRun(runId, frame) {
    let run = this.runs.get(runId);
    if (run) return run;
    const startsHere = Boolean(frame && frame.type === 'agent_started');
    run = buildRun(runId, { onCancel: (r) => this.view.cancelRun(r) });
    run.withScroll = (fn) => this.view.withScroll(fn);
    this.runs.set(runId, run);
    if (startsHere) {
      this.node.append(run.node);
    } else {
      // Runs of a conversation run one after another, so runs that started before the page are
      // first seen in the order they started: each goes below the previous one.
      if (this.prePageAnchor && this.prePageAnchor.isConnected) this.prePageAnchor.after(run.node);
      else this.node.prepend(run.node);
      this.prePageAnchor = run.node;
    }
    const seed = this.seededRuns.get(runId);
    if (!startsHere && seed) this.seedText(run, seed);
    this.updateRunControls(run);
    this.view.readTracker.observe(run.node);
    return run;
  }

  // Stop: for the run's starter and the conversation's owners (the server refuses anyone else).
  // The starter is agent_started's requested_by when the server sends it, else the person whose
  // message triggered it, or this page when its own send or regenerate started the run.
  mayStop(run) {
    const view = this.view;
    if (!view.canWrite) return false;
    if (view.role === 'owner' || view.myRuns.has(run.id)) return true;
    if (run.requestedBy !== undefined) return run.requestedBy === view.userId;
    const question = run.triggerId ? this.messages.get(run.triggerId) : null;
    return Boolean(question && question.mine && !run.regenerates);
  }

  updateRunControls(run) {
    const active = run.status === 'running' || run.status === 'queued';
    run.cancelEl.hidden = !(active && this.mayStop(run));
    run.cancelEl.disabled = run.cancelRequested;
    run.node.classList.toggle('run-active', active);
    renderWatchers(run, this.view.members);
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
      renderAnswer(run);
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

  seedActiveRuns(activeRuns, hasMore) {
    for (const active of activeRuns) {
      if (active.status === 'queued') continue; // not started: its agent_started will come as an event
      const run = this.runs.get(active.run_id);
      if (run && (run.started || run.status !== 'running')) {
        this.updateRunControls(run);
        continue;
      }
      if (!run && !hasMore) continue; // the page holds the whole history: events will cover it
      this.seededRuns.set(active.run_id, active);
      this.applySeed(active);
    }
  }

  unreadCount(marker, userId) {
    let count = 0;
    for (const frame of this.events) {
      if (frame.seq <= marker) continue;
      const author = (frame.data && frame.data.author) || {};
      if ((frame.type === 'message' && author.id !== userId) || frame.type === 'agent_completed') count += 1;
    }
    return count;
  }
}
