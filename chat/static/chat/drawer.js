// The sidebar as a drawer on phone widths (≤ 768 px): the top bar's menu button opens it, Esc, the
// close button or a tap on the backdrop closes it; while open, the page behind is inert and Tab
// cycles inside the drawer; focus returns to the menu button on close. Wider, it is a plain column.
const PHONE = window.matchMedia('(max-width: 768px)');
const FOCUSABLE = 'a[href], button:not([disabled]), input:not([disabled]), select:not([disabled]), textarea:not([disabled]), [tabindex]:not([tabindex="-1"])';

export class Drawer {
  constructor({ panel, toggle, close, backdrop, onOpen }) {
    this.panel = panel;
    this.toggle = toggle;
    this.backdrop = backdrop;
    this.onOpen = onOpen;
    this.behind = [document.querySelector('main'), ...document.querySelectorAll('.topbar > :not(.menu-button)')]
      .filter(Boolean);
    if (toggle) toggle.addEventListener('click', () => this.setOpen(!this.isOpen()));
    if (close) close.addEventListener('click', () => this.setOpen(false));
    if (backdrop) backdrop.addEventListener('click', () => this.setOpen(false));
    document.addEventListener('keydown', (event) => this.onKey(event));
    // A link followed inside the drawer: the next page starts closed anyway, but a same-page
    // navigation (hash, join) should not leave it covering the page.
    panel.addEventListener('click', (event) => {
      if (event.target.closest('a[href]') && PHONE.matches) this.setOpen(false);
    });
    PHONE.addEventListener('change', () => this.setOpen(false));
  }

  isOpen() {
    return this.panel.classList.contains('is-open');
  }

  setOpen(open) {
    const wasOpen = this.isOpen();
    open = Boolean(open) && PHONE.matches;
    this.panel.classList.toggle('is-open', open);
    document.body.classList.toggle('drawer-open', open);
    if (this.backdrop) this.backdrop.hidden = !open;
    if (this.toggle) this.toggle.setAttribute('aria-expanded', String(open));
    for (const node of this.behind) {
      if (open) node.setAttribute('inert', '');
      else node.removeAttribute('inert');
    }
    if (open) {
      this.panel.setAttribute('role', 'dialog');
      this.panel.setAttribute('aria-modal', 'true');
      if (this.onOpen) this.onOpen();
    } else {
      this.panel.removeAttribute('role');
      this.panel.removeAttribute('aria-modal');
      if (wasOpen && this.toggle) this.toggle.focus();
    }
  }

  focusables() {
    return Array.from(this.panel.querySelectorAll(FOCUSABLE)).filter((node) => node.offsetParent !== null);
  }

  onKey(event) {
    if (!this.isOpen()) return;
    if (event.key === 'Escape') {
      event.preventDefault();
      this.setOpen(false);
      return;
    }
    if (event.key !== 'Tab') return;
    const nodes = this.focusables();
    if (!nodes.length) return;
    const first = nodes[0];
    const last = nodes[nodes.length - 1];
    if (!this.panel.contains(document.activeElement)) {
      event.preventDefault();
      (event.shiftKey ? last : first).focus();
    } else if (event.shiftKey && document.activeElement === first) {
      event.preventDefault();
      last.focus();
    } else if (!event.shiftKey && document.activeElement === last) {
      event.preventDefault();
      first.focus();
    }
  }
}
