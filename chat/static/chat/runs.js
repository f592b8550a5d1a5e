// One agent run's block in the transcript (docs/protocol.md §4): its head (name, status, duration,
// watchers, Stop), its steps (thinking, tool calls) and its answer. transcript.js decides where the
// block goes and feeds it events; this module only builds and updates the block's DOM.

import { el, avatar } from './dom.js';
import { pretty, preview } from './util.js';
import { renderInto } from './markdown.js';
import { api } from './restapi.js';

// Build a run's block. `onCancel(run)` is the Stop button's action.
export function buildRun(runId, { onCancel }) {
  const nameEl = el('span', { class: 'msg-author', testid: 'run-agent', text: 'assistant' });
  const statusEl = el('span', { class: 'run-status', testid: 'run-status', text: 'Thinking…' });
  const metaEl = el('span', { class: 'msg-time run-duration', testid: 'run-duration' });
  const cancelEl = el('button', { type: 'button', class: 'btn btn-ghost btn-xs run-cancel', testid: 'cancel', hidden: true, text: 'Stop' });
  const replyEl = el('div', { class: 'reply-to-wrap' });
  const stepsEl = el('div', { class: 'run-steps', testid: 'run-steps' });
  const stepsSummaryEl = el('summary', { class: 'run-steps-summary', testid: 'run-steps-summary', text: 'Steps' });
  const stepsWrap = el('details', { class: 'run-steps-wrap', testid: 'run-steps-wrap', open: true, hidden: true }, stepsSummaryEl, stepsEl);
  const answerEl = el('div', { class: 'answer md', testid: 'agent-answer', 'data-state': 'pending' });
  const errorEl = el('div', { class: 'run-error', testid: 'run-error', hidden: true });
  // Co-viewing: who is watching while the run is live (the members present in the conversation).
  const watchersEl = el('span', { class: 'run-watchers', testid: 'run-watchers', hidden: true });
  const actionsEl = el('div', { class: 'msg-actions-slot' });
  const node = el('article', { class: 'msg msg-agent run', testid: 'agent-run', 'data-run-id': runId, 'data-status': 'running' },
    avatar('assistant', 'agent'),
    el('div', { class: 'msg-body' },
      el('div', { class: 'msg-head' }, nameEl, statusEl, metaEl, watchersEl, cancelEl),
      replyEl, stepsWrap, answerEl, errorEl, actionsEl));
  const run = {
    id: runId, node, nameEl, statusEl, metaEl, cancelEl, replyEl, stepsWrap, stepsSummaryEl, stepsEl, answerEl, errorEl,
    watchersEl, actionsEl, text: '', rendered: null, frame: 0, deltaSeq: 0, status: 'running', calls: new Map(),
    thinking: 0, cancelRequested: false, started: false, triggerId: null, startedAt: null,
  };
  cancelEl.addEventListener('click', () => onCancel(run));
  return run;
}

function updateStepsSummary(run) {
  const tools = Array.from(run.calls.values(), (call) => call.tool);
  const steps = run.calls.size + run.thinking;
  run.stepsWrap.hidden = steps === 0;
  const used = tools.length ? `Used ${Array.from(new Set(tools)).join(', ')} · ` : '';
  run.stepsSummaryEl.textContent = `${used}${steps} step${steps === 1 ? '' : 's'}`;
}

export function addThinking(run, text) {
  run.stepsEl.append(el('div', { class: 'step step-thinking', testid: 'thinking' },
    el('span', { class: 'step-text', text: text || '' })));
  run.thinking += 1;
  updateStepsSummary(run);
  if (run.status === 'running' && !run.text) run.statusEl.textContent = 'Thinking…';
}

function toolCall(run, callId, tool) {
  let call = run.calls.get(callId);
  if (call) return call;
  const statusEl = el('span', { class: 'tool-status', testid: 'tool-status', 'aria-hidden': 'true' },
    el('span', { class: 'spinner' }));
  const argsPreviewEl = el('span', { class: 'tool-preview', testid: 'tool-arguments-preview' });
  const resultPreviewEl = el('span', { class: 'tool-preview tool-preview-result', testid: 'tool-result-preview' });
  const durationEl = el('span', { class: 'tool-duration' });
  const argsEl = el('pre', { class: 'code', testid: 'tool-arguments' });
  const resultEl = el('pre', { class: 'code', testid: 'tool-result' });
  const resultWrap = el('div', { class: 'tool-section', hidden: true },
    el('div', { class: 'tool-section-label', text: 'Result' }), resultEl);
  const node = el('details', { class: 'step tool-call', testid: 'tool-call', 'data-call-id': callId, 'data-tool': tool, 'data-status': 'running' },
    el('summary', {},
      statusEl,
      el('span', { class: 'tool-name', testid: 'tool-name', text: tool || 'tool' }),
      argsPreviewEl, resultPreviewEl, durationEl),
    el('div', { class: 'tool-detail' },
      el('div', { class: 'tool-section' }, el('div', { class: 'tool-section-label', text: 'Arguments' }), argsEl),
      resultWrap));
  call = { node, tool: tool || 'tool', statusEl, argsEl, resultEl, resultWrap, argsPreviewEl, resultPreviewEl, durationEl };
  run.calls.set(callId, call);
  run.stepsEl.append(node);
  updateStepsSummary(run);
  return call;
}

export function toolStarted(run, data) {
  const call = toolCall(run, data.call_id, data.tool);
  call.argsEl.textContent = pretty(data.arguments);
  call.argsPreviewEl.textContent = preview(data.arguments, 60);
  if (run.status === 'running') run.statusEl.textContent = `Using ${data.tool}…`;
}

export function toolCompleted(run, data) {
  const call = toolCall(run, data.call_id, data.tool);
  const ok = data.ok !== false;
  call.node.dataset.status = ok ? 'ok' : 'error';
  call.statusEl.textContent = ok ? '✓' : '✕';
  call.statusEl.title = ok ? 'succeeded' : 'failed';
  showResult(call, data.result);
  call.resultWrap.hidden = false;
  if (data.duration_ms !== undefined) call.durationEl.textContent = `${data.duration_ms} ms`;
  if (run.status === 'running' && !run.text) run.statusEl.textContent = 'Thinking…';
}

// A result too long for its event arrives cut, with where to read it whole (docs/protocol.md §4):
// the preview is shown as the start of the result, and a button fetches the rest on demand.
function showResult(call, result) {
  const cut = result && typeof result === 'object' && result.truncated === true;
  if (!cut) {
    call.resultEl.textContent = pretty(result);
    call.resultPreviewEl.textContent = `→ ${preview(result, 60)}`;
    return;
  }
  call.resultEl.textContent = `${result.preview}…`;
  call.resultPreviewEl.textContent = `→ ${preview(result.preview, 60)}`;
  if (!result.href || call.resultWrap.querySelector('[data-testid="tool-result-whole"]')) return;
  const more = el('button', {
    type: 'button', class: 'btn btn-ghost btn-xs', testid: 'tool-result-whole',
    text: `Show the whole result (${result.size.toLocaleString()} characters)`,
  });
  more.addEventListener('click', async () => {
    more.disabled = true;
    const answer = await api('GET', result.href);
    if (answer.ok) {
      call.resultEl.textContent = pretty(answer.body.result);
      more.remove();
    } else {
      more.disabled = false;
      more.textContent = answer.error;
    }
  });
  call.resultWrap.append(more);
}

// The answer's markdown, rendered at most once per animation frame while it streams: a burst of
// deltas costs one parse, and only the answer's body is replaced (the run's block, its steps and
// the reader's open <details> stay as they are).
export function renderAnswer(run, { now = false } = {}) {
  if (run.status === 'running') {
    run.answerEl.dataset.state = run.text ? 'streaming' : 'pending';
    if (run.text) run.statusEl.textContent = 'Writing…';
  }
  if (now) {
    if (run.frame) cancelAnimationFrame(run.frame);
    run.frame = 0;
    paint(run);
    return;
  }
  if (run.frame) return;
  run.frame = requestAnimationFrame(() => {
    run.frame = 0;
    paint(run);
  });
}

function paint(run) {
  if (run.rendered === run.text) return;
  run.rendered = run.text;
  const draw = () => renderInto(run.answerEl, run.text);
  // The transcript keeps the scroll anchored (at the bottom if it was) around the new height.
  if (run.withScroll) run.withScroll(draw);
  else draw();
}

export function finishRun(run, status) {
  run.status = status;
  run.node.dataset.status = status;
  run.answerEl.dataset.state = status === 'completed' ? 'final' : status;
  renderAnswer(run, { now: true });
  run.answerEl.hidden = !run.text && status !== 'completed';
  run.statusEl.textContent = status === 'completed' ? '' : status === 'failed' ? 'Failed' : 'Stopped';
  run.statusEl.dataset.status = status;
  for (const call of run.calls.values()) {
    if (call.node.dataset.status === 'running') {
      call.node.dataset.status = 'abandoned';
      call.statusEl.textContent = '–';
    }
  }
  // Done: the steps fold away behind their summary (one click shows them again).
  run.stepsWrap.open = false;
}

// "answered in 2.3 s": the run's own duration when the event has it.
export function showDuration(run, ms) {
  if (typeof ms !== 'number' || ms < 0) return;
  const seconds = ms / 1000;
  run.metaEl.textContent = `answered in ${seconds < 10 ? seconds.toFixed(1) : Math.round(seconds)} s`;
  run.metaEl.dataset.ms = String(ms);
}

// Co-viewing (docs/protocol.md §10): while a run is live, who is watching it is who is present.
export function renderWatchers(run, members) {
  const watching = run.status === 'running'
    ? Array.from(members.values()).filter((m) => m.online).map((m) => m.user.username).sort()
    : [];
  run.watchersEl.hidden = !watching.length;
  run.watchersEl.dataset.users = watching.join(',');
  run.watchersEl.title = watching.length ? `Watching: ${watching.join(', ')}` : '';
  run.watchersEl.replaceChildren(...watching.map((name) => avatar(name)),
    watching.length ? el('span', { class: 'run-watchers-label', text: 'watching' }) : null);
}
