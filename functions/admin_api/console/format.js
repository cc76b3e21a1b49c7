// Seed 000's date format, "21-OCT-2025 6:38 PM", in the viewer's time zone.
const MONTHS = ['JAN', 'FEB', 'MAR', 'APR', 'MAY', 'JUN', 'JUL', 'AUG', 'SEP', 'OCT', 'NOV', 'DEC'];

export function viewerZone() {
  return Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
}

export function seedDate(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  const h = d.getHours() % 12 || 12;
  const m = String(d.getMinutes()).padStart(2, '0');
  return `${String(d.getDate()).padStart(2, '0')}-${MONTHS[d.getMonth()]}-${d.getFullYear()} ${h}:${m} ${d.getHours() < 12 ? 'AM' : 'PM'}`;
}

// A day picked in a date input (the viewer's local day) as an inclusive ISO range.
export function dayRange(value) {
  const [y, mo, d] = value.split('-').map(Number);
  const from = new Date(y, mo - 1, d, 0, 0, 0, 0);
  const to = new Date(y, mo - 1, d, 23, 59, 59, 999);
  return [from.toISOString(), to.toISOString()];
}

// RFC 4180 CSV; a cell that a spreadsheet would run as a formula gets a leading quote.
export function csvCell(value) {
  let s = value === null || value === undefined ? '' : String(value);
  if (/^[=+\-@\t\r]/.test(s)) s = `'${s}`;
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}
