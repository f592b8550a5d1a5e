// The notification settings page (docs/protocol.md §9): reads GET /api/me/notification-settings/,
// saves changes with PATCH (only what changed), and handles Web Push on this device: the service
// worker (/sw.js), the subscription (POST/DELETE /api/me/push-subscriptions/) and the test push.
const page = document.getElementById('notification-settings');

const KINDS = {
  mention: 'Mentions of you',
  agent_finished: 'The assistant finished your request while you were away',
  approval_requested: 'A tool is waiting for your approval',
  added_to_conversation: 'You were added to a conversation',
  role_changed: 'Your role in a conversation changed',
  webhook_disabled: 'A webhook of a workspace you own was disabled after failing for days',
};

function csrfToken() {
  const input = document.querySelector('input[name="csrfmiddlewaretoken"]');
  return input ? input.value : '';
}

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    credentials: 'same-origin',
    headers: { 'Content-Type': 'application/json', 'X-CSRFToken': csrfToken(), Accept: 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  const json = text ? JSON.parse(text) : {};
  if (!response.ok) {
    const error = new Error((json.error && json.error.message) || `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return json;
}

function b64urlToBytes(text) {
  const padded = (text + '='.repeat((4 - (text.length % 4)) % 4)).replace(/-/g, '+').replace(/_/g, '/');
  return Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
}

class SettingsPage {
  constructor(el) {
    this.el = el;
    this.status = el.querySelector('[data-testid="settings-status"]');
    this.kindsBody = el.querySelector('#kinds-body');
    this.quietOn = el.querySelector('#quiet-on');
    this.quietStart = el.querySelector('#quiet-start');
    this.quietEnd = el.querySelector('#quiet-end');
    this.quietZone = el.querySelector('#quiet-timezone');
    this.muteState = el.querySelector('#mute-state');
    this.pushState = el.querySelector('#push-state');
    this.vapidKey = el.dataset.vapidPublicKey || '';
    this.saved = null;
    this.mutedUntil = null;
    el.querySelector('#settings-save').addEventListener('click', () => this.save());
    for (const button of el.querySelectorAll('[data-mute]')) {
      button.addEventListener('click', () => this.mute(Number(button.dataset.mute)));
    }
    el.querySelector('#push-enable').addEventListener('click', () => this.enablePush());
    el.querySelector('#push-disable').addEventListener('click', () => this.disablePush());
    el.querySelector('#push-test').addEventListener('click', () => this.testPush());
    this.fillTimezones();
    this.load();
    this.showPushState();
  }

  say(message, kind = 'ok') {
    this.status.textContent = message;
    this.status.dataset.kind = kind;
    this.status.hidden = !message;
  }

  fillTimezones() {
    const list = this.el.querySelector('#timezones');
    const zones = typeof Intl.supportedValuesOf === 'function' ? Intl.supportedValuesOf('timeZone') : [];
    list.replaceChildren(...zones.map((zone) => Object.assign(document.createElement('option'), { value: zone })));
    this.quietZone.value = Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
  }

  async load() {
    try {
      this.apply(await api('GET', '/api/me/notification-settings/'));
    } catch (err) {
      this.say(`Could not load your settings: ${err.message}`, 'error');
    }
  }

  apply(settings) {
    this.saved = settings;
    this.kindsBody.replaceChildren(...Object.entries(settings.kinds).map(([kind, channels]) => {
      const row = document.createElement('tr');
      const name = document.createElement('th');
      name.scope = 'row';
      name.textContent = KINDS[kind] || kind;
      row.append(name);
      for (const channel of ['in_app', 'push', 'email']) {
        const cell = document.createElement('td');
        const box = Object.assign(document.createElement('input'), { type: 'checkbox', checked: channels[channel] });
        box.dataset.kind = kind;
        box.dataset.channel = channel;
        box.dataset.testid = `kind-${kind}-${channel}`;
        box.setAttribute('data-testid', `kind-${kind}-${channel}`);
        box.setAttribute('aria-label', `${KINDS[kind] || kind}: ${channel.replace('_', '-')}`);
        cell.append(box);
        row.append(cell);
      }
      return row;
    }));
    for (const select of this.el.querySelectorAll('[data-conversation]')) {
      select.value = settings.conversations[select.dataset.conversation] || 'all';
    }
    const quiet = settings.quiet_hours;
    this.quietOn.checked = Boolean(quiet);
    if (quiet) {
      this.quietStart.value = quiet.start;
      this.quietEnd.value = quiet.end;
      this.quietZone.value = quiet.timezone;
    }
    this.mutedUntil = settings.muted_until;
    this.showMute();
  }

  showMute() {
    const until = this.mutedUntil ? new Date(this.mutedUntil) : null;
    this.muteState.textContent = until && until > new Date()
      ? `Push and email are muted until ${until.toLocaleString()}.`
      : 'Not muted.';
  }

  changes() {
    const body = {};
    const kinds = {};
    for (const box of this.kindsBody.querySelectorAll('input[type="checkbox"]')) {
      const { kind, channel } = box.dataset;
      if (this.saved.kinds[kind][channel] !== box.checked) (kinds[kind] = kinds[kind] || {})[channel] = box.checked;
    }
    if (Object.keys(kinds).length) body.kinds = kinds;
    const levels = {};
    for (const select of this.el.querySelectorAll('[data-conversation]')) {
      const before = this.saved.conversations[select.dataset.conversation] || 'all';
      if (select.value !== before) levels[select.dataset.conversation] = select.value;
    }
    if (Object.keys(levels).length) body.conversations = levels;
    const quiet = this.quietOn.checked
      ? { start: this.quietStart.value, end: this.quietEnd.value, timezone: this.quietZone.value.trim() }
      : null;
    if (JSON.stringify(quiet) !== JSON.stringify(this.saved.quiet_hours)) body.quiet_hours = quiet;
    return body;
  }

  async save() {
    const body = this.changes();
    if (!Object.keys(body).length) {
      this.say('Nothing to save.');
      return;
    }
    try {
      this.apply(await api('PATCH', '/api/me/notification-settings/', body));
      this.say('Saved.');
    } catch (err) {
      this.say(err.message, 'error');
    }
  }

  async mute(hours) {
    const until = hours ? new Date(Date.now() + hours * 3600_000).toISOString() : null;
    try {
      this.apply(await api('PATCH', '/api/me/notification-settings/', { muted_until: until }));
      this.say(hours ? 'Muted.' : 'Unmuted.');
    } catch (err) {
      this.say(err.message, 'error');
    }
  }

  pushSupported() {
    return 'serviceWorker' in navigator && 'PushManager' in window && 'Notification' in window;
  }

  async currentSubscription() {
    const registration = await navigator.serviceWorker.getRegistration('/');
    return registration ? registration.pushManager.getSubscription() : null;
  }

  async showPushState() {
    if (!this.vapidKey) {
      this.pushState.textContent = 'Push is not set up on this server.';
      return;
    }
    if (!this.pushSupported()) {
      this.pushState.textContent = 'This browser cannot receive push notifications.';
      return;
    }
    if (Notification.permission === 'denied') {
      this.pushState.textContent = 'Notifications are blocked for this site in the browser settings.';
      return;
    }
    const subscription = await this.currentSubscription().catch(() => null);
    this.pushState.textContent = subscription ? 'Push is on for this device.' : 'Push is off for this device.';
  }

  async enablePush() {
    if (!this.vapidKey || !this.pushSupported()) return this.showPushState();
    try {
      if ((await Notification.requestPermission()) !== 'granted') return this.showPushState();
      const registration = await navigator.serviceWorker.register('/sw.js', { scope: '/' });
      await navigator.serviceWorker.ready;
      const subscription = (await registration.pushManager.getSubscription())
        || (await registration.pushManager.subscribe({
          userVisibleOnly: true, applicationServerKey: b64urlToBytes(this.vapidKey),
        }));
      await api('POST', '/api/me/push-subscriptions/', subscription.toJSON());
      this.say('Push is on for this device.');
    } catch (err) {
      this.say(`Could not turn push on: ${err.message}`, 'error');
    }
    return this.showPushState();
  }

  async disablePush() {
    try {
      const subscription = await this.currentSubscription();
      if (subscription) {
        await api('DELETE', '/api/me/push-subscriptions/', { endpoint: subscription.endpoint }).catch(() => {});
        await subscription.unsubscribe();
      }
      this.say('Push is off for this device.');
    } catch (err) {
      this.say(err.message, 'error');
    }
    return this.showPushState();
  }

  async testPush() {
    try {
      const answer = await api('POST', '/api/me/notifications/test/');
      if (window.notificationBell) window.notificationBell.refresh(); // it is in the list already
      this.say(answer.devices
        ? `Test push sent to ${answer.devices} device${answer.devices === 1 ? '' : 's'}.`
        : 'Test notification added to your list; no device has push on yet.');
    } catch (err) {
      this.say(err.message, 'error');
    }
  }
}

if (page) window.notificationSettings = new SettingsPage(page);
