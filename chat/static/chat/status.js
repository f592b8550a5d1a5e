// The connection indicator in the top bar and the composer's state while offline.

import { el } from './dom.js';

export function showConnection(view, state, detail = {}) {
  const indicator = view.q('connection-state');
  indicator.dataset.state = state;
  let label;
  switch (state) {
    case 'online': label = 'Online'; break;
    case 'connecting': label = 'Connecting…'; break;
    case 'reconnecting': {
      const prefix = detail.why === 4429 ? 'Too many open tabs for your plan — reconnecting'
        : detail.why === 1013 ? 'Server busy — reconnecting' : 'Reconnecting';
      label = `${prefix} in ${detail.seconds ?? 0}s`;
      break;
    }
    case 'offline':
      label = detail.reason === 'auth' ? 'Signed out' : detail.reason === 'forbidden' ? 'Refused' : 'Offline';
      break;
    default: label = state;
  }
  indicator.querySelector('.connection-label').textContent = label;
  if (detail.seconds !== undefined) indicator.dataset.seconds = String(detail.seconds);
  else delete indicator.dataset.seconds;
  if (state === 'offline' && detail.reason === 'auth') {
    view.staleBanner.replaceChildren('Your session has ended. ',
      el('a', { href: `/login/?next=${encodeURIComponent(window.location.pathname)}`, text: 'Log in again' }),
      ' to keep chatting.');
  }
  // Writing while offline is allowed: the message waits in the outbox and is sent on reconnect.
  if (view.canWrite && view.composer) view.composer.sendButton.disabled = false;
}
