// The REST calls of the sidebar and the conversation menu (docs/protocol.md §7): the page's Django
// session plus the CSRF header, JSON in and out. Errors come back as values, never thrown, so every
// caller can show the server's message inline.

function csrfToken() {
  const input = document.querySelector('input[name="csrfmiddlewaretoken"]');
  return input ? input.value : '';
}

// The server's words for a refusal: a service error `{"error":{"code","message"}}`, DRF's `detail`,
// or DRF field errors `{"field":["…"]}`.
export function errorMessage(status, body) {
  if (body && body.error && body.error.message) return body.error.message;
  if (body && typeof body.detail === 'string') return body.detail;
  if (body && typeof body === 'object') {
    const fields = Object.entries(body)
      .filter(([, value]) => Array.isArray(value))
      .map(([field, value]) => `${field}: ${value.join(' ')}`);
    if (fields.length) return fields.join(' ');
  }
  return `The server refused (HTTP ${status}).`;
}

/** `{ok, status, body, error}` for `method path` with an optional JSON body. */
export async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET') {
    headers['X-CSRFToken'] = csrfToken();
    if (body !== undefined) headers['Content-Type'] = 'application/json';
  }
  let response;
  try {
    response = await fetch(path, {
      method,
      credentials: 'same-origin',
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    return { ok: false, status: 0, body: null, error: 'Could not reach the server. Check your connection and try again.' };
  }
  const data = response.status === 204 ? null : await response.json().catch(() => null);
  return {
    ok: response.ok,
    status: response.status,
    body: data,
    error: response.ok ? '' : errorMessage(response.status, data),
  };
}

/** The workspace id of a conversation item, whether the server sends the id or `{id, name}`. */
export function workspaceIdOf(item) {
  const workspace = item && item.workspace;
  if (workspace && typeof workspace === 'object') return String(workspace.id);
  return workspace ? String(workspace) : '';
}

export function badgeText(unread) {
  return unread >= 1000 ? '999+' : String(unread);
}

// Dialog plumbing shared by the sidebar and the menu: [data-dialog-cancel] closes, an error line
// (`[role=alert]`) is shown or hidden with its text.
export function wireDialog(dialog) {
  for (const cancel of dialog.querySelectorAll('[data-dialog-cancel]')) {
    cancel.addEventListener('click', () => dialog.close());
  }
  // A click on the backdrop (the dialog element itself, outside its body) closes it.
  dialog.addEventListener('click', (event) => { if (event.target === dialog) dialog.close(); });
}

export function showError(node, message) {
  node.textContent = message || '';
  node.hidden = !message;
}
