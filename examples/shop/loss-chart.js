// A small inline SVG line chart of training loss, one point per training step, with a tick at the
// start of each training run.

const W = 280;
const H = 90;
const PAD = { l: 30, r: 6, t: 8, b: 16 };

/**
 * @param {SVGSVGElement} svg
 * @param {{ loss: number, run: number }[]} points in order
 */
export function drawLossChart(svg, points) {
  if (points.length === 0) {
    svg.innerHTML = `<text x="${W / 2}" y="${H / 2}" text-anchor="middle" class="chart-empty">no training yet</text>`;
    return;
  }
  const losses = points.map((p) => p.loss);
  let lo = Math.min(...losses);
  let hi = Math.max(...losses);
  if (hi - lo < 1e-6) {
    hi += 0.5;
    lo = Math.max(0, lo - 0.5);
  }
  const n = points.length;
  const x = (i) => PAD.l + (n === 1 ? (W - PAD.l - PAD.r) / 2 : (i / (n - 1)) * (W - PAD.l - PAD.r));
  const y = (v) => PAD.t + (1 - (v - lo) / (hi - lo)) * (H - PAD.t - PAD.b);
  const path = points.map((p, i) => `${i ? 'L' : 'M'}${x(i).toFixed(1)},${y(p.loss).toFixed(1)}`).join('');
  const runs = [];
  points.forEach((p, i) => {
    if (i === 0 || p.run !== points[i - 1].run) runs.push(i);
  });
  const ticks = runs
    .map((i) => `<line x1="${x(i).toFixed(1)}" x2="${x(i).toFixed(1)}" y1="${PAD.t}" y2="${H - PAD.b}" class="chart-run"/>`)
    .join('');
  const last = points[n - 1];
  svg.innerHTML = `
    <line x1="${PAD.l}" x2="${W - PAD.r}" y1="${H - PAD.b}" y2="${H - PAD.b}" class="chart-axis"/>
    <text x="${PAD.l - 4}" y="${PAD.t + 4}" text-anchor="end" class="chart-label">${hi.toFixed(2)}</text>
    <text x="${PAD.l - 4}" y="${H - PAD.b}" text-anchor="end" class="chart-label">${lo.toFixed(2)}</text>
    <text x="${PAD.l}" y="${H - 3}" class="chart-label">${runs.length} run${runs.length === 1 ? '' : 's'}, ${n} steps</text>
    ${ticks}
    <path d="${path}" class="chart-line"/>
    <circle cx="${x(n - 1).toFixed(1)}" cy="${y(last.loss).toFixed(1)}" r="2.5" class="chart-dot"/>`;
}
