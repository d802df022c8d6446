// Delivered and failed attempts per minute over the last day, drawn as plain SVG (stacked bars, one per minute).

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 1000;
const HEIGHT = 200;
const LEFT = 40;
const BOTTOM = 22;
const TOP = 8;

function svg(tag, attrs, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, String(value));
  if (text !== undefined) el.textContent = text;
  return el;
}

function hhmm(date) {
  return `${String(date.getHours()).padStart(2, "0")}:${String(date.getMinutes()).padStart(2, "0")}`;
}

export function minuteChart(minutes, hours = 24, now = new Date()) {
  const MINUTES = hours * 60;
  const end = Math.floor(now.getTime() / 60000) + 1; // the minute after the current one
  const start = end - MINUTES;
  let delivered = 0;
  let failed = 0;
  let peak = 0;
  for (const m of minutes) {
    delivered += m.delivered;
    failed += m.failed;
    peak = Math.max(peak, m.delivered + m.failed);
  }
  const top = Math.max(1, peak);
  const plotWidth = WIDTH - LEFT - 4;
  const plotHeight = HEIGHT - TOP - BOTTOM;
  const x = (minute) => LEFT + ((minute - start) / MINUTES) * plotWidth;
  const y = (count) => TOP + plotHeight - (count / top) * plotHeight;
  const label = `Attempts per minute over the last ${hours === 1 ? "hour" : `${hours} hours`}: ${delivered} delivered, ${failed} failed; at most ${peak} in one minute.`;
  const chart = svg("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    class: "chart",
    role: "img",
    "aria-label": label,
  });
  chart.append(svg("title", {}, label));
  chart.append(svg("line", { x1: LEFT, x2: WIDTH - 4, y1: y(0), y2: y(0), class: "axis" }));
  chart.append(svg("line", { x1: LEFT, x2: WIDTH - 4, y1: y(top), y2: y(top), class: "grid" }));
  chart.append(svg("text", { x: LEFT - 6, y: y(top) + 4, class: "tick", "text-anchor": "end" }, String(top)));
  chart.append(svg("text", { x: LEFT - 6, y: y(0) + 4, class: "tick", "text-anchor": "end" }, "0"));
  const step = MINUTES / 4;
  for (let ago = MINUTES; ago >= 0; ago -= step) {
    const minute = end - ago;
    const anchor = ago === MINUTES ? "start" : ago === 0 ? "end" : "middle";
    const text = ago === 0 ? "now" : hhmm(new Date(minute * 60000));
    chart.append(svg("line", { x1: x(minute), x2: x(minute), y1: y(0), y2: y(0) + 4, class: "axis" }));
    chart.append(svg("text", { x: x(minute), y: HEIGHT - 6, class: "tick", "text-anchor": anchor }, text));
  }
  const barWidth = Math.max(1.5, plotWidth / MINUTES);
  for (const m of minutes) {
    const minute = Math.floor(new Date(m.minute).getTime() / 60000);
    if (minute < start || minute >= end) continue;
    const left = Math.min(x(minute), WIDTH - 4 - barWidth);
    if (m.delivered) {
      chart.append(svg("rect", { x: left, y: y(m.delivered), width: barWidth, height: y(0) - y(m.delivered), class: "bar-ok" }));
    }
    if (m.failed) {
      const base = y(m.delivered);
      chart.append(svg("rect", { x: left, y: base - (y(0) - y(m.failed)), width: barWidth, height: y(0) - y(m.failed), class: "bar-failed" }));
    }
  }
  return { chart, delivered, failed, peak };
}
