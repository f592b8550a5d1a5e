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
