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
// The list is rendered by the server (newest activity first, unread counts); the sidebar (sidebar.js)
// keeps it current: each of its refreshes of GET /api/conversations/ comes here as `sidebar:data`.
// The sidebar also puts the total unread count in the tab's title and favicon.

const list = document.querySelector('[data-testid="conversation-list"]');

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
  const title = link.querySelector('[data-testid="conversation-title"]');
  if (item.title && title.textContent !== item.title) title.textContent = item.title;
  const preview = link.querySelector('[data-testid="conversation-preview"]');
  if (item.last_message) {
    const who = document.createElement('b');
    who.textContent = `${item.last_message.author.username}:`;
    const text = item.last_message.deleted ? 'message deleted' : item.last_message.preview;
    preview.replaceChildren(who, ` ${text}`);
  } else {
    preview.textContent = 'No messages yet';
  }
}

function update(items) {
  const links = new Map(Array.from(list.querySelectorAll('[data-testid="conversation-link"]'), (a) => [a.dataset.conversationId, a]));
  let total = 0;
  for (const item of items) {
    total += item.unread;
    const link = links.get(item.id);
    if (!link) continue; // a conversation joined since the page loaded: shown on the next load
    renderItem(link, item);
    list.append(link.closest('li')); // the server's order: newest activity first
  }
  list.dataset.unreadTotal = String(total);
}

if (list) {
  let total = 0;
  for (const link of list.querySelectorAll('[data-testid="conversation-link"]')) {
    total += Number(link.dataset.unread) || 0;
    const time = link.querySelector('[data-testid="conversation-time"]');
    time.textContent = formatWhen(time.getAttribute('datetime'));
  }
  list.dataset.unreadTotal = String(total);
  window.addEventListener('sidebar:data', (event) => update(event.detail.items));
}
