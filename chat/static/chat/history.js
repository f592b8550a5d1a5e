// Paging the conversation's history (docs/protocol.md §3 `history`). Pages count messages
// (`unit: "messages"`: a person's message is one item, a run with all its steps is one; the server
// never cuts a question from its answer and leaves out the chunks of answers that ended). A server
// without that unit answers bad_request, and the page falls back to pages of events.
// Older pages load by themselves when the top of the transcript comes near (an
// IntersectionObserver on a sentinel); the "Load earlier messages" button does the same by hand.

import { el } from './dom.js';

const MESSAGES_LIMIT = 30;
const EVENTS_LIMIT = 100;
const NEAR_TOP_PX = 400;

export class History {
  constructor(view) {
    this.view = view;
    this.unit = 'messages';
    this.hasMore = false;
    this.nextBeforeSeq = null;
    this.loading = false;
    this.button = view.q('load-older');
    this.sentinel = el('div', { class: 'history-sentinel', testid: 'history-sentinel', 'aria-hidden': 'true' });
    this.button.parentElement.before(this.sentinel);
    this.button.addEventListener('click', () => this.loadOlder());
    this.observer = new IntersectionObserver((entries) => {
      if (entries.some((entry) => entry.isIntersecting)) this.loadOlder();
    }, { root: view.scroller, rootMargin: `${NEAR_TOP_PX}px 0px 0px 0px` });
    this.observer.observe(this.sentinel);
  }

  async fetch(beforeSeq) {
    const view = this.view;
    const messages = this.unit === 'messages';
    const frame = { type: 'history', conversation: view.conversationId, limit: messages ? MESSAGES_LIMIT : EVENTS_LIMIT };
    if (messages) frame.unit = 'messages';
    if (beforeSeq !== undefined && beforeSeq !== null) frame.before_seq = beforeSeq;
    let reply;
    try {
      reply = await view.client.request(frame);
    } catch (err) {
      if (messages && err.code === 'bad_request') { // an older server: pages of events
        this.unit = 'events';
        return this.fetch(beforeSeq);
      }
      throw err;
    }
    return {
      events: reply.events || [],
      hasMore: Boolean(reply.has_more),
      nextBeforeSeq: typeof reply.next_before_seq === 'number' ? reply.next_before_seq : null,
    };
  }

  // The newest page: the transcript starts over from it.
  async loadNewest() {
    const page = await this.fetch();
    this.accept(page);
    this.view.transcript.reset(page.events);
  }

  accept(page) {
    this.hasMore = page.hasMore;
    const first = page.events.reduce((min, frame) => Math.min(min, frame.seq), Infinity);
    this.nextBeforeSeq = page.nextBeforeSeq ?? (Number.isFinite(first) ? first : null);
  }

  async loadOlder() {
    const view = this.view;
    if (!this.hasMore || this.loading || !view.loaded || !view.client.ready) return;
    const before = this.nextBeforeSeq ?? view.transcript.firstSeq;
    if (before === null) return;
    this.loading = true;
    this.button.disabled = true;
    try {
      const page = await this.fetch(before);
      const scroller = view.scroller;
      const fromBottom = scroller.scrollHeight - scroller.scrollTop;
      this.accept(page);
      view.transcript.reset([...page.events, ...view.transcript.events]);
      // The same message stays under the reader's eyes.
      scroller.scrollTop = scroller.scrollHeight - fromBottom;
    } catch (err) {
      if (err.code !== 'closed') view.toasts.show('Could not load earlier messages.', { key: 'history' });
    } finally {
      this.loading = false;
      this.button.disabled = false;
      view.updateEmpty();
    }
    this.checkNearTop();
  }

  // Still near the top (a short page, or the first page fills less than the screen): the observer
  // does not fire again by itself for a sentinel that never left the view.
  checkNearTop() {
    if (this.hasMore && this.view.scroller.scrollTop < NEAR_TOP_PX) requestAnimationFrame(() => this.loadOlder());
  }
}
