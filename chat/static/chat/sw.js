// The Web Push service worker (docs/protocol.md §9), served at /sw.js so that its scope is the whole
// site. The server sends one JSON payload per push (chat/services/push.py push_payload): title, body,
// kind, priority, count, conversation, url, tag. A push of the same tag replaces the one already
// shown (ten mentions in one conversation are one notification with a count, not ten).
'use strict';

self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));

self.addEventListener('push', (event) => {
  let payload = {};
  try {
    payload = event.data ? event.data.json() : {};
  } catch (err) {
    payload = { title: 'Notification', body: event.data ? event.data.text() : '' };
  }
  event.waitUntil(show(payload));
});

async function show(payload) {
  const windows = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
  const url = typeof payload.url === 'string' && payload.url.startsWith('/') ? payload.url : '/';
  // The person is looking at that very conversation: the page already shows it; stay quiet, except
  // for urgent ones and the test push.
  const watching = windows.some((w) => w.focused && new URL(w.url).pathname === url);
  if (watching && payload.priority !== 'urgent') return;
  await self.registration.showNotification(payload.title || 'Notification', {
    body: payload.body || '',
    tag: payload.tag || undefined,
    renotify: Boolean(payload.tag),
    requireInteraction: payload.priority === 'urgent',
    icon: '/static/chat/favicon.svg',
    data: { url },
  });
}

self.addEventListener('notificationclick', (event) => {
  event.notification.close();
  const url = (event.notification.data && event.notification.data.url) || '/';
  event.waitUntil((async () => {
    const windows = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
    for (const w of windows) {
      if (new URL(w.url).pathname === url && 'focus' in w) return w.focus();
    }
    return self.clients.openWindow(url);
  })());
});
