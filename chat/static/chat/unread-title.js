// The total unread count in the tab: "(3) Title · Chatcore" and a badge drawn on the favicon.
// The sidebar owns the count (every conversation's unread); the chat page also writes the title
// (its own conversation's count), so a MutationObserver puts the total back whenever anyone else
// changes it. The favicon is the site's SVG drawn on a canvas with the badge, set as a data: URL
// (the CSP's img-src allows data: for it).
import { badgeText } from './restapi.js';

const COUNT_PREFIX = /^\(\d+\+?\) /;
const SIZE = 64;

let total = 0;
let baseTitle = null; // set after a rename: the page's own title writes keep the old one
let baseIcon = null; // the page's own icon link's href, restored at zero
let iconImage = null;
let drawn = -1;

function titleNode() {
  let node = document.querySelector('title');
  if (!node) {
    node = document.createElement('title');
    document.head.append(node);
  }
  return node;
}

function wantedTitle() {
  const base = baseTitle === null ? document.title.replace(COUNT_PREFIX, '') : baseTitle;
  return total > 0 ? `(${badgeText(total)}) ${base}` : base;
}

function applyTitle() {
  const wanted = wantedTitle();
  if (document.title !== wanted) document.title = wanted;
}

function iconLink() {
  return document.querySelector('link[rel="icon"]');
}

function loadIcon() {
  if (iconImage) return iconImage;
  const link = iconLink();
  if (!link) return null;
  baseIcon = { href: link.getAttribute('href'), type: link.getAttribute('type') };
  iconImage = new Image();
  iconImage.addEventListener('load', () => { drawn = -1; applyIcon(); });
  iconImage.src = baseIcon.href;
  return iconImage;
}

function applyIcon() {
  const link = iconLink();
  const image = loadIcon();
  if (!link || !image || drawn === total) return;
  if (total === 0) {
    link.setAttribute('href', baseIcon.href);
    if (baseIcon.type) link.setAttribute('type', baseIcon.type);
    link.dataset.unread = '0';
    drawn = 0;
    return;
  }
  if (!image.complete || !image.naturalWidth) return; // drawn once it has loaded
  const canvas = document.createElement('canvas');
  canvas.width = SIZE;
  canvas.height = SIZE;
  const ctx = canvas.getContext('2d');
  ctx.drawImage(image, 0, 0, SIZE, SIZE);
  const text = total > 99 ? '99+' : String(total);
  const radius = text.length > 1 ? 22 : 18;
  ctx.beginPath();
  ctx.arc(SIZE - radius + 2, SIZE - radius + 2, radius, 0, 2 * Math.PI);
  ctx.fillStyle = '#d92d20';
  ctx.fill();
  ctx.lineWidth = 4;
  ctx.strokeStyle = '#ffffff';
  ctx.stroke();
  ctx.fillStyle = '#ffffff';
  ctx.font = `bold ${text.length > 2 ? 20 : 28}px system-ui, sans-serif`;
  ctx.textAlign = 'center';
  ctx.textBaseline = 'middle';
  ctx.fillText(text, SIZE - radius + 2, SIZE - radius + 4);
  link.setAttribute('type', 'image/png');
  link.setAttribute('href', canvas.toDataURL('image/png'));
  link.dataset.unread = String(total);
  drawn = total;
}

/** The tab's title without the count (the conversation was renamed). */
export function setBaseTitle(title) {
  baseTitle = title;
  applyTitle();
}

/** Show `count` unread in the title and the favicon. */
export function setUnreadTotal(count) {
  total = Math.max(0, Number(count) || 0);
  applyTitle();
  applyIcon();
}

// Someone else (the chat page's own unread count) rewrote the title: put the total back.
new MutationObserver(() => applyTitle()).observe(titleNode(), { childList: true, characterData: true, subtree: true });
