// Line charts as small hand-written SVG: no charting library can be installed without npm or a CDN
// (docs/console.md). Series are [[unix_seconds, value|null], ...] as the metrics API answers them.
const NS = "http://www.w3.org/2000/svg";
const COLORS = ["#2563eb", "#d97706", "#dc2626", "#059669", "#7c3aed", "#db2777", "#0891b2", "#65a30d"];

function el(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

export function format(value, unit) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  if (unit === "s") return value < 1 ? `${(value * 1000).toFixed(value < 0.01 ? 1 : 0)} ms` : `${value.toFixed(2)} s`;
  if (unit === "%") return `${value.toFixed(1)} %`;
  if (unit === "ratio") return `${(value * 100).toFixed(2)} %`;
  if (unit === "/s") return `${value.toFixed(value < 10 ? 2 : value < 100 ? 1 : 0)}/s`;
  return `${Number.isInteger(value) ? value : value.toFixed(2)}`;
}

// lines: [{name, points}]; returns a <figure> with the chart and its legend.
export function lineChart(title, lines, unit) {
  const width = 560, height = 180, left = 56, right = 8, top = 10, bottom = 22;
  const figure = document.createElement("figure");
  figure.className = "chart";
  const caption = document.createElement("figcaption");
  caption.textContent = title;
  figure.append(caption);
  const values = lines.flatMap((l) => l.points.map((p) => p[1]).filter((v) => v !== null));
  const times = lines.flatMap((l) => l.points.map((p) => p[0]));
  if (!values.length) {
    const empty = document.createElement("p");
    empty.className = "muted";
    empty.textContent = "No data in this time range.";
    figure.append(empty);
    return figure;
  }
  const t0 = Math.min(...times), t1 = Math.max(...times) || t0 + 1;
  const vmax = Math.max(...values, unit === "ratio" ? 0.01 : 0) * 1.1 || 1;
  const x = (t) => left + ((t - t0) / (t1 - t0 || 1)) * (width - left - right);
  const y = (v) => top + (1 - v / vmax) * (height - top - bottom);
  const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title });
  for (const fraction of [0, 0.5, 1]) {
    const v = vmax * fraction;
    svg.append(el("line", { x1: left, x2: width - right, y1: y(v), y2: y(v), class: "grid" }));
    svg.append(el("text", { x: left - 4, y: y(v) + 4, "text-anchor": "end", class: "axis" }, format(v, unit)));
  }
  for (const t of [t0, t1]) {
    const label = new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    svg.append(el("text", { x: x(t), y: height - 6, "text-anchor": t === t0 ? "start" : "end", class: "axis" }, label));
  }
  const legend = document.createElement("ul");
  legend.className = "legend";
  lines.forEach((line, i) => {
    const color = COLORS[i % COLORS.length];
    let d = "", pen = "M";
    for (const [t, v] of line.points) {
      if (v === null) { pen = "M"; continue; } // a gap where there is no data, not a line through it
      d += `${pen}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
      pen = "L";
    }
    svg.append(el("path", { d, fill: "none", stroke: color, "stroke-width": 1.6 }));
    const last = [...line.points].reverse().find((p) => p[1] !== null);
    const item = document.createElement("li");
    item.style.setProperty("--swatch", color);
    item.textContent = `${line.name}: ${format(last ? last[1] : null, unit)}`;
    legend.append(item);
  });
  figure.append(svg, legend);
  return figure;
}
