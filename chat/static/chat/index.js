// The conversation list page: creating a conversation through the REST API (session + CSRF).
const form = document.getElementById('new-conversation');

if (form) {
  const titleInput = form.querySelector('input[name="title"]');
  const agentInput = form.querySelector('input[name="agent"]');
  const submit = form.querySelector('button[type="submit"]');
  const errorBox = form.querySelector('[data-testid="new-conversation-error"]');
  const csrf = form.querySelector('input[name="csrfmiddlewaretoken"]').value;

  const showError = (message) => {
    errorBox.textContent = message;
    errorBox.hidden = !message;
  };

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const title = titleInput.value.trim();
    if (!title) {
      titleInput.focus();
      return;
    }
    showError('');
    submit.disabled = true;
    try {
      const response = await fetch('/api/conversations/', {
        method: 'POST',
        credentials: 'same-origin',
        headers: { 'Content-Type': 'application/json', 'X-CSRFToken': csrf, Accept: 'application/json' },
        body: JSON.stringify({ title, agent: agentInput.checked }),
      });
      const body = await response.json().catch(() => ({}));
      if (response.status === 201 && body.id) {
        window.location.assign(`/c/${encodeURIComponent(body.id)}/`);
        return;
      }
      const message = (body.error && body.error.message)
        || (body.title && body.title.join(' '))
        || body.detail
        || `Could not create the conversation (HTTP ${response.status}).`;
      showError(message);
    } catch (err) {
      showError('Could not reach the server. Check your connection and try again.');
    } finally {
      submit.disabled = false;
    }
  });
}

// --- unread badges (docs/protocol.md §10) -----------------------------------------------------------
// The list is rendered by the server (newest activity first, unread counts); this keeps it current
// while the page is open: GET /api/conversations/ every REFRESH_MS while the page is visible, and at
// once when it becomes visible again. The tab title carries the total unread count.

const REFRESH_MS = 10000;
const list = document.querySelector('[data-testid="conversation-list"]');
const baseTitle = document.title;

function formatWhen(iso) {
  const date = new Date(iso);
  if (!iso || Number.isNaN(date.getTime())) return '';
  const sameDay = date.toDateString() === new Date().toDateString();
  return sameDay
    ? date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
    : date.toLocaleDateString([], { month: 'short', day: 'numeric' });
}

function badgeText(unread) {
  return unread >= 1000 ? '999+' : String(unread);
}

function showTotal(total) {
  document.title = total > 0 ? `(${badgeText(total)}) ${baseTitle}` : baseTitle;
  if (list) list.dataset.unreadTotal = String(total);
}

function renderItem(link, item) {
  link.dataset.unread = String(item.unread);
  link.classList.toggle('has-unread', item.unread > 0);
  const badge = link.querySelector('[data-testid="unread-badge"]');
  badge.hidden = item.unread === 0;
  badge.textContent = badgeText(item.unread);
  badge.setAttribute('aria-label', `${item.unread} unread`);
  const time = link.querySelector('[data-testid="conversation-time"]');
  time.setAttribute('datetime', item.last_activity_at);
  time.textContent = formatWhen(item.last_activity_at);
  const preview = link.querySelector('[data-testid="conversation-preview"]');
  if (item.last_message) {
    const who = document.createElement('b');
    who.textContent = `${item.last_message.author.username}:`;
    preview.replaceChildren(who, ` ${item.last_message.preview}`);
  } else {
    preview.textContent = 'No messages yet';
  }
}

async function refresh() {
  if (!list || document.visibilityState !== 'visible') return;
  let items;
  try {
    const response = await fetch('/api/conversations/', { credentials: 'same-origin', headers: { Accept: 'application/json' } });
    if (!response.ok) return;
    items = await response.json();
  } catch (err) {
    return; // offline: the next refresh tries again
  }
  const links = new Map(Array.from(list.querySelectorAll('[data-testid="conversation-link"]'), (a) => [a.dataset.conversationId, a]));
  let total = 0;
  for (const item of items) {
    total += item.unread;
    const link = links.get(item.id);
    if (!link) continue; // a conversation joined since the page loaded: shown on the next load
    renderItem(link, item);
    list.append(link.closest('li')); // the server's order: newest activity first
  }
  showTotal(total);
}

if (list) {
  let total = 0;
  for (const link of list.querySelectorAll('[data-testid="conversation-link"]')) {
    total += Number(link.dataset.unread) || 0;
    const time = link.querySelector('[data-testid="conversation-time"]');
    time.textContent = formatWhen(time.getAttribute('datetime'));
  }
  showTotal(total);
  setInterval(refresh, REFRESH_MS);
  document.addEventListener('visibilitychange', refresh);
  window.addEventListener('focus', refresh);
}
