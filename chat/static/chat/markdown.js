// Messages and answers as markdown, safely (docs/protocol.md: message text is untrusted).
//
// Three layers, each enough on its own for what it covers:
// 1. markdown-it with `html: false`: HTML in a message is text, never markup; images are off (no
//    request to a URL someone typed, and the CSP allows only our own images anyway); links are
//    only http(s) and mailto (validateLink).
// 2. DOMPurify on markdown-it's output, with an allow-list of the tags markdown produces and no
//    style attribute (the CSP refuses inline styles), returning a DOM fragment (no second parse).
// 3. Every link opens in a new tab with rel="noopener noreferrer nofollow".
// highlight.js colours code blocks with class names only (the theme is a stylesheet, light and
// dark). The vendored libraries and their licences: vendor/README.md.

import markdownit from './vendor/markdown-it.min.js';
import DOMPurify from './vendor/purify.es.js';
import hljs from './vendor/highlight.min.js';
import { el } from './dom.js';

const SAFE_LINK = /^(https?:|mailto:)/i;
const COPIED_MS = 1500;

const md = markdownit({
  html: false,
  linkify: true,
  breaks: true, // a chat message's line breaks are meant
  typographer: false, // the text reads as typed
  highlight(code, lang) {
    const language = (lang || '').trim().toLowerCase();
    if (!language || !hljs.getLanguage(language)) return ''; // markdown-it escapes it as plain text
    try {
      return hljs.highlight(code, { language, ignoreIllegals: true }).value;
    } catch (err) {
      return '';
    }
  },
});
md.disable('image');
md.validateLink = (url) => SAFE_LINK.test(url.trim());

const PURIFY = {
  ALLOWED_TAGS: ['p', 'br', 'strong', 'em', 's', 'del', 'code', 'pre', 'blockquote', 'ul', 'ol', 'li', 'a',
    'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'hr', 'table', 'thead', 'tbody', 'tr', 'th', 'td', 'span'],
  ALLOWED_ATTR: ['href', 'class', 'title', 'start'],
  ALLOWED_URI_REGEXP: /^(?:https?:|mailto:)/i,
  RETURN_DOM_FRAGMENT: true,
};

DOMPurify.addHook('afterSanitizeAttributes', (node) => {
  if (node.nodeName !== 'A') return;
  const href = node.getAttribute('href') || '';
  if (!SAFE_LINK.test(href)) node.removeAttribute('href');
  node.setAttribute('target', '_blank');
  node.setAttribute('rel', 'noopener noreferrer nofollow');
});

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch (err) {
    // No clipboard API (plain http, or permission refused): the old selection-based copy.
    const area = el('textarea', { class: 'visually-hidden', 'aria-hidden': 'true', readonly: true });
    area.value = text;
    document.body.append(area);
    area.select();
    let ok = false;
    try {
      ok = document.execCommand('copy');
    } catch (fallbackErr) {
      ok = false;
    }
    area.remove();
    return ok;
  }
}

// A button that copies `getText()` and says "Copied" for a moment.
export function copyButton(getText, { label = 'Copy', testid = 'copy', className = 'btn btn-ghost btn-xs' } = {}) {
  const button = el('button', { type: 'button', class: className, testid, text: label });
  let timer = null;
  button.addEventListener('click', async () => {
    const ok = await copyText(getText());
    button.textContent = ok ? 'Copied' : 'Copy failed';
    button.dataset.copied = ok ? 'true' : 'false';
    clearTimeout(timer);
    timer = setTimeout(() => {
      button.textContent = label;
      delete button.dataset.copied;
    }, COPIED_MS);
  });
  return button;
}

// Each code block gets a bar with its language and a Copy button; the block scrolls sideways
// inside itself on a narrow screen instead of widening the page.
function decorateCodeBlocks(root) {
  for (const pre of root.querySelectorAll('pre')) {
    const code = pre.querySelector('code');
    const lang = code ? (/\blanguage-([\w+#.-]+)/.exec(code.className) || [])[1] : '';
    if (code && lang && hljs.getLanguage(lang)) code.classList.add('hljs');
    const block = el('div', { class: 'codeblock', testid: 'codeblock' },
      el('div', { class: 'codeblock-bar' },
        el('span', { class: 'codeblock-lang', text: lang || 'text' }),
        copyButton(() => (code || pre).textContent, { testid: 'copy-code' })));
    pre.replaceWith(block);
    block.append(pre);
  }
}

// @name as its own span, in text outside code and links (the server parses mentions the same way,
// docs/protocol.md §8).
const MENTION = /(^|[^\p{L}\p{N}_])(@[\p{L}\p{N}_.@+-]+)/gu;

function highlightMentions(root) {
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT, {
    acceptNode: (node) => (node.parentElement && node.parentElement.closest('code, pre, a')
      ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT),
  });
  const nodes = [];
  while (walker.nextNode()) nodes.push(walker.currentNode);
  for (const node of nodes) {
    const text = node.nodeValue;
    const parts = [];
    let at = 0;
    for (const match of text.matchAll(MENTION)) {
      const start = match.index + match[1].length;
      if (start > at) parts.push(text.slice(at, start));
      parts.push(el('span', { class: 'mention', text: match[2] }));
      at = start + match[2].length;
    }
    if (!parts.length) continue;
    if (at < text.length) parts.push(text.slice(at));
    node.replaceWith(...parts);
  }
}

// The sanitised DOM of `text` rendered as markdown.
export function renderMarkdown(text, { mentions = false } = {}) {
  const fragment = DOMPurify.sanitize(md.render(text || '').trim(), PURIFY);
  decorateCodeBlocks(fragment);
  if (mentions) highlightMentions(fragment);
  return fragment;
}

// Replace `node`'s children with `text` rendered.
export function renderInto(node, text, options) {
  node.replaceChildren(renderMarkdown(text, options));
}
