// Jobs per day by state: stacked SVG bars, built with DOM calls (no markup strings).
const NS = 'http://www.w3.org/2000/svg';

function svg(tag, attrs, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = String(text);
  return el;
}

export function renderChart(container, days, states) {
  while (container.firstChild) container.removeChild(container.firstChild);
  const width = 720; const height = 220; const left = 36; const bottom = 40; const top = 10;
  const max = Math.max(1, ...days.map((d) => states.reduce((n, [s]) => n + d.counts[s], 0)));
  const plot = height - bottom - top;
  const step = (width - left) / Math.max(1, days.length);
  const root = svg('svg', { viewBox: `0 0 ${width} ${height + 24}`, role: 'img', 'aria-label': 'Jobs per day by state', class: 'chart-svg' });
  root.append(svg('line', { x1: left, y1: top + plot, x2: width, y2: top + plot, class: 'axis' }));
  root.append(svg('text', { x: left - 4, y: top + 8, 'text-anchor': 'end', class: 'tick' }, max));
  root.append(svg('text', { x: left - 4, y: top + plot, 'text-anchor': 'end', class: 'tick' }, 0));
  days.forEach((d, i) => {
    let y = top + plot;
    const x = left + i * step + step * 0.15;
    const g = svg('g', { class: 'day', 'data-day': d.day });
    for (const [state, label] of states) {
      const n = d.counts[state];
      if (!n) continue;
      const hgt = (n / max) * plot;
      y -= hgt;
      const rect = svg('rect', { x, y, width: step * 0.7, height: hgt, class: `bar state-${state.toLowerCase()}`, 'data-state': state, 'data-count': n });
      rect.append(svg('title', {}, `${d.day} ${label}: ${n}`));
      g.append(rect);
    }
    g.append(svg('text', { x: x + step * 0.35, y: top + plot + 14, 'text-anchor': 'middle', class: 'tick' }, d.day.slice(5)));
    root.append(g);
  });
  states.forEach(([state, label], i) => {
    root.append(svg('rect', { x: left + i * 130, y: height + 6, width: 12, height: 12, class: `bar state-${state.toLowerCase()}` }));
    root.append(svg('text', { x: left + i * 130 + 16, y: height + 16, class: 'legend' }, label));
  });
  container.append(root);
}
