// Tells the server the browser's time zone (docs/protocol.md §7, PATCH /api/me/), so that the
// assistant answers "what time is it?" and dates its search results the way this person reads a
// clock. The page renders the stored zone in <body data-time-zone="…">; a PATCH goes out only
// when the browser's differs (the first visit, a trip, a changed system setting), not on every load.
const CSRF_COOKIE = 'csrftoken';

function cookie(name) {
  for (const part of document.cookie.split(';')) {
    const [key, ...value] = part.trim().split('=');
    if (key === name) return decodeURIComponent(value.join('='));
  }
  return '';
}

function browserZone() {
  try {
    return Intl.DateTimeFormat().resolvedOptions().timeZone || '';
  } catch {
    return ''; // an engine without Intl time zones: nothing to report
  }
}

async function reportTimeZone() {
  const stored = document.body.dataset.timeZone;
  if (stored === undefined) return; // not logged in: the attribute is only there for a user
  const zone = browserZone();
  if (!zone || zone === stored) return;
  const response = await fetch('/api/me/', {
    method: 'PATCH',
    credentials: 'same-origin',
    headers: { 'Content-Type': 'application/json', 'X-CSRFToken': cookie(CSRF_COOKIE), Accept: 'application/json' },
    body: JSON.stringify({ time_zone: zone }),
  });
  // A zone the server's tz database does not know is refused (400): the stored one stays.
  if (response.ok) document.body.dataset.timeZone = (await response.json()).time_zone;
}

reportTimeZone().catch(() => {
  // Offline or the server unreachable: the next page load tries again.
});
