// SVG charts drawn by the page itself: horizontal bars and a per-stage line chart.
// Drawn at the container's real width (and redrawn on resize by the caller) so text keeps
// its size on a phone instead of being scaled down with a viewBox.

import { fmtDuration, svg } from "./util.js";

/** A "nice" upper bound and tick step for an axis from 0 to ``max``. */
export function niceScale(max, ticks = 4) {
  if (!(max > 0)) return { top: 1, step: 0.25 };
  const raw = max / ticks;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw);
  return { top: Math.ceil(max / step) * step, step };
}

function axisLabel(seconds) {
  if (seconds === 0) return "0";
  if (seconds < 1) return `${Number(seconds.toPrecision(2))}s`;
  if (seconds < 60) return `${Number(seconds.toPrecision(3))}s`;
  return fmtDuration(seconds);
}

/**
 * Horizontal bars, one per item: ``[{label, value, color, note}]``; ``value`` in seconds.
 * ``note`` is written after the bar (defaults to the formatted value).
 */
export function barChart(items, { width = 600, title = "", labelWidth = 140 } = {}) {
  const rowHeight = 30;
  const top = 8;
  const narrow = width < 420;
  const labelsWidth = narrow ? Math.min(labelWidth, 118) : labelWidth;
  const noteWidth = narrow ? 92 : 120;
  const plotWidth = Math.max(60, width - labelsWidth - noteWidth - 12);
  const max = Math.max(...items.map((item) => item.value || 0), 0);
  const height = top * 2 + rowHeight * items.length;
  const chart = svg("svg", {
    class: "chart bar-chart",
    width,
    height,
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": title,
  });
  if (title) chart.append(svg("title", {}, title));
  items.forEach((item, index) => {
    const y = top + index * rowHeight;
    const length = max > 0 ? Math.max(2, (plotWidth * (item.value || 0)) / max) : 2;
    const group = svg("g", { class: "bar", "data-stage": item.key || null });
    group.append(
      svg("title", {}, `${item.label}: ${item.note || fmtDuration(item.value)}`),
      svg("text", { x: labelsWidth - 8, y: y + 19, "text-anchor": "end", class: "label" }, item.label),
      svg("rect", {
        x: labelsWidth,
        y: y + 5,
        width: length,
        height: rowHeight - 10,
        rx: 3,
        style: `fill: ${item.color}`,
      }),
      svg(
        "text",
        { x: labelsWidth + length + 6, y: y + 19, class: "value" },
        item.note || fmtDuration(item.value),
      ),
    );
    chart.append(group);
  });
  return chart;
}

/**
 * Lines over a shared x axis: ``series`` = ``[{key, name, color, values: [number|null]}]``,
 * ``points`` = ``[{label, title, href}]`` (one per x position, e.g. one per scan).
 */
export function lineChart(series, points, { width = 700, height = 260, title = "" } = {}) {
  const margin = { top: 14, right: 16, bottom: 38, left: 52 };
  const plotWidth = Math.max(80, width - margin.left - margin.right);
  const plotHeight = height - margin.top - margin.bottom;
  const values = series.flatMap((s) => s.values).filter((v) => Number.isFinite(v));
  const { top, step } = niceScale(Math.max(...values, 0), 5);
  const x = (i) => margin.left + (points.length < 2 ? plotWidth / 2 : (plotWidth * i) / (points.length - 1));
  const y = (v) => margin.top + plotHeight - (plotHeight * v) / top;
  const chart = svg("svg", {
    class: "chart line-chart",
    width,
    height,
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": title,
  });
  if (title) chart.append(svg("title", {}, title));
  const grid = svg("g", { class: "grid" });
  for (let v = 0; v <= top + step / 2; v += step) {
    grid.append(
      svg("line", { x1: margin.left, x2: margin.left + plotWidth, y1: y(v), y2: y(v) }),
      svg("text", { x: margin.left - 6, y: y(v) + 4, "text-anchor": "end" }, axisLabel(v)),
    );
  }
  chart.append(grid);
  // x labels: at most ~6, evenly spread, always the first and the last
  const xAxis = svg("g", { class: "x-axis" });
  const every = Math.max(1, Math.ceil(points.length / Math.max(2, Math.floor(plotWidth / 90))));
  let previous = null;
  points.forEach((point, i) => {
    if (i % every !== 0 && i !== points.length - 1) return;
    if (i !== points.length - 1 && points.length - 1 - i < every && i !== 0) return;
    if (point.label === previous) return;
    previous = point.label;
    const anchor =
      points.length > 1 && i === 0 ? "start" : i === points.length - 1 && i > 0 ? "end" : "middle";
    xAxis.append(
      svg("text", { x: x(i), y: height - margin.bottom + 18, "text-anchor": anchor }, point.label),
    );
  });
  chart.append(xAxis);
  for (const line of series) {
    const group = svg("g", { class: "series", "data-stage": line.key, style: `color: ${line.color}` });
    let path = "";
    line.values.forEach((value, i) => {
      if (!Number.isFinite(value)) return;
      path += `${path ? "L" : "M"}${x(i).toFixed(1)},${y(value).toFixed(1)}`;
    });
    group.append(svg("path", { d: path, class: "line" }));
    line.values.forEach((value, i) => {
      if (!Number.isFinite(value)) return;
      const dot = svg(
        "circle",
        { cx: x(i), cy: y(value), r: 3.5, class: "dot" },
        svg("title", {}, `${line.name}: ${fmtDuration(value)} — ${points[i].title || points[i].label}`),
      );
      if (points[i].href) {
        const link = svg("a", { href: points[i].href });
        link.append(dot);
        group.append(link);
      } else {
        group.append(dot);
      }
    });
    chart.append(group);
  }
  return chart;
}
