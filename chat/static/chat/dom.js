// Small DOM helpers shared by the chat page's modules (chat.js, collab.js). Text always goes in as
// textContent or a text node, never as HTML.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key === 'testid') node.dataset.testid = value;
    else if (key.startsWith('data-')) node.setAttribute(key, String(value));
    else if (key.startsWith('on') && typeof value === 'function') node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function initial(name) {
  return (name || '?').trim().charAt(0).toUpperCase() || '?';
}

function hueFor(name) {
  let h = 0;
  for (const ch of name || '') h = (h * 31 + ch.charCodeAt(0)) % 360;
  return h;
}

export function avatar(name, kind = 'user') {
  const node = el('span', { class: `avatar ${kind === 'agent' ? 'avatar-agent' : ''}`, 'aria-hidden': 'true' },
    kind === 'agent' ? '✦' : initial(name));
  if (kind !== 'agent') node.style.setProperty('--avatar-hue', String(hueFor(name)));
  return node;
}
