// DOM helpers. Every value from data goes in as text (textContent / text nodes), never as HTML:
// patient names and reasons are data (issue 14 item 3).
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') el.textContent = String(v);
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

// A modal <dialog>: the elements with data-close close it.
export function wireDialog(dialog) {
  for (const b of $$('[data-close]', dialog)) b.addEventListener('click', () => dialog.close());
}

let confirmResolve = null;

// A confirmation in the page's own dialog (window.confirm would block the page and the tests).
export function confirmAction(text) {
  const dialog = $('#confirm-dialog');
  $('#confirm-text').textContent = text;
  dialog.showModal();
  return new Promise((resolve) => { confirmResolve = resolve; });
}

export function wireConfirm() {
  const dialog = $('#confirm-dialog');
  const done = (ok) => { dialog.close(); if (confirmResolve) confirmResolve(ok); confirmResolve = null; };
  $('#confirm-ok').addEventListener('click', () => done(true));
  $('#confirm-cancel').addEventListener('click', () => done(false));
  dialog.addEventListener('cancel', () => done(false));
}

// Save bytes as a file (the SA JSON key, CSV): a Blob URL, revoked right after the click.
export function saveFile(blob, filename) {
  const url = URL.createObjectURL(blob);
  const a = h('a', { href: url, download: filename, hidden: true });
  // Outside an open modal dialog the page is inert (a click there does nothing): put it inside.
  const modal = Array.from(document.querySelectorAll('dialog[open]')).pop();
  (modal || document.body).append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// Per-field messages of a 422 answer, each beside its own field; the rest in the form's error line.
export function showErrors(form, error) {
  for (const el of $$('[data-error-for]', form)) el.textContent = '';
  const general = $('.form-error', form);
  general.textContent = '';
  if (!error) return;
  const fields = (error.body && error.body.error && error.body.error.fields) || null;
  if (fields) {
    for (const [name, message] of Object.entries(fields)) {
      const slot = $(`[data-error-for="${CSS.escape(name)}"]`, form);
      if (slot) slot.textContent = message;
      else general.append(`${name}: ${message}. `);
    }
  } else {
    general.textContent = error.message;
  }
}
