// Line charts of the last minutes, drawn as SVG polylines: no library needed.

export const HISTORY_S = 300;

export function drawChart(svg, series, { max = null, format = (v) => String(v) } = {}) {
  const width = svg.clientWidth || 300;
  const height = svg.clientHeight || 90;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const values = series.flatMap((s) => s.points);
  const top = max ?? Math.max(1, ...values);
  const x = (i) => width - (HISTORY_S - 1 - i) * (width / (HISTORY_S - 1));
  const y = (v) => height - 2 - (v / top) * (height - 14);
  const lines = series.map((s) => {
    const offset = HISTORY_S - s.points.length;
    const pts = s.points.map((v, i) => `${x(i + offset).toFixed(1)},${y(v).toFixed(1)}`);
    return `<polyline class="${s.cls}" points="${pts.join(" ")}"/>`;
  });
  svg.innerHTML =
    `<line class="axis" x1="0" y1="${height - 1}" x2="${width}" y2="${height - 1}"/>` +
    `<text x="4" y="11">${format(top)}</text>` +
    lines.join("");
}

// A fixed-length history: one value a second.
export class History {
  constructor() {
    this.points = [];
  }
  push(value) {
    this.points.push(value);
    if (this.points.length > HISTORY_S) this.points.shift();
  }
}
