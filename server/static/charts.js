// SVG charts drawn by the page itself: horizontal bars, a per-stage line chart and the ETA
// error by checkpoint.
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

/** An empty chart of ``width`` x ``height`` that reads as one image named ``title``. */
function chartFrame(className, width, height, title) {
  const chart = svg("svg", {
    class: `chart ${className}`,
    width,
    height,
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": title,
  });
  if (title) chart.append(svg("title", {}, title));
  return chart;
}

/** Horizontal grid lines with their labels at the left, from ``low`` to ``high``. */
function yGrid(low, high, step, y, left, right, label) {
  const grid = svg("g", { class: "grid" });
  for (let v = low; v <= high + step / 2; v += step) {
    grid.append(
      svg("line", { x1: left, x2: right, y1: y(v), y2: y(v) }),
      svg("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end" }, label(v)),
    );
  }
  return grid;
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
  const chart = chartFrame("bar-chart", width, height, title);
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
 * With ``onPick(i)`` every x position is also a column a click or Enter picks (``picked``
 * is drawn marked), for charts whose points are intervals rather than single scans.
 */
export function lineChart(
  series,
  points,
  { width = 700, height = 260, title = "", onPick = null, picked = null } = {},
) {
  const margin = { top: 14, right: 16, bottom: 38, left: 52 };
  const plotWidth = Math.max(80, width - margin.left - margin.right);
  const plotHeight = height - margin.top - margin.bottom;
  const values = series.flatMap((s) => s.values).filter((v) => Number.isFinite(v));
  const { top, step } = niceScale(Math.max(...values, 0), 5);
  const x = (i) => margin.left + (points.length < 2 ? plotWidth / 2 : (plotWidth * i) / (points.length - 1));
  const y = (v) => margin.top + plotHeight - (plotHeight * v) / top;
  const chart = chartFrame("line-chart", width, height, title);
  chart.append(yGrid(0, top, step, y, margin.left, margin.left + plotWidth, axisLabel));
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
  if (onPick) {
    chart.setAttribute("role", "group"); // an image's parts are hidden from assistive tech
    chart.append(pickColumns(points, x, margin.top, plotHeight, onPick, picked));
  }
  return chart;
}

/**
 * One transparent column per x position, on top of the lines. One tab stop for them all
 * (the picked column, else the latest): the arrow keys move between columns, Enter picks.
 */
function pickColumns(points, x, top, plotHeight, onPick, picked) {
  const columns = svg("g", { class: "pick-columns" });
  const stop = Number.isInteger(picked) && picked >= 0 ? picked : points.length - 1;
  const move = (from, step) => {
    const next = columns.children[from + step];
    if (!next) return;
    columns.children[from].setAttribute("tabindex", -1);
    next.setAttribute("tabindex", 0);
    next.focus();
  };
  points.forEach((point, i) => {
    const left = i === 0 ? x(0) - 12 : (x(i - 1) + x(i)) / 2;
    const right = i === points.length - 1 ? x(i) + 12 : (x(i) + x(i + 1)) / 2;
    const column = svg(
      "rect",
      {
        x: left,
        y: top,
        width: Math.max(2, right - left),
        height: plotHeight,
        class: i === picked ? "pick picked" : "pick",
        tabindex: i === stop ? 0 : -1,
        role: "button",
        "aria-label": `${point.title || point.label}: list its scans`,
        "aria-pressed": i === picked ? "true" : "false",
        "data-start": point.start || null,
      },
      svg("title", {}, point.title || point.label),
    );
    column.addEventListener("click", () => onPick(i));
    column.addEventListener("keydown", (event) => {
      const step = { ArrowLeft: -1, ArrowRight: 1, Home: -i, End: points.length - 1 - i }[event.key];
      if (step !== undefined) move(i, step);
      else if (event.key === "Enter" || event.key === " ") onPick(i);
      else return;
      event.preventDefault();
    });
    columns.append(column);
  });
  return columns;
}

function signedPercent(value) {
  return `${value > 0 ? "+" : ""}${Number(value.toFixed(1))}%`;
}

/**
 * The ETA error by checkpoint: x is the share of the expected time (``checkpoints``, e.g.
 * 10..90), y the error in percent, 0 in the middle. ``scans`` = ``[{id, title, href,
 * errors: {checkpoint: signed % | null}}]`` are drawn faint, one line each; ``medians`` =
 * ``[{name, values: {checkpoint: % | null}}]`` bold; ``band`` (10) is the dashed ±band.
 */
export function errorChart(
  checkpoints,
  scans,
  medians,
  { width = 700, height = 260, title = "", band = 10 } = {},
) {
  const margin = { top: 14, right: 18, bottom: 38, left: 52 };
  const plotWidth = Math.max(80, width - margin.left - margin.right);
  const plotHeight = height - margin.top - margin.bottom;
  const values = [
    ...scans.flatMap((scan) => Object.values(scan.errors)),
    ...medians.flatMap((median) => Object.values(median.values)),
  ].filter((v) => Number.isFinite(v));
  const { top, step } = niceScale(Math.max(band * 1.5, ...values.map(Math.abs)), 3);
  const x = (checkpoint) => margin.left + (plotWidth * checkpoint) / 100;
  const y = (v) => margin.top + (plotHeight * (top - v)) / (2 * top);
  const chart = chartFrame("error-chart", width, height, title);
  chart.append(
    yGrid(-top, top, step, y, margin.left, margin.left + plotWidth, (v) => (v ? signedPercent(v) : "0")),
    svg(
      "g",
      { class: "band" },
      svg("title", {}, `within ±${band}%`),
      svg("rect", { x: margin.left, y: y(band), width: plotWidth, height: y(-band) - y(band) }),
      svg("line", { x1: margin.left, x2: margin.left + plotWidth, y1: y(band), y2: y(band) }),
      svg("line", { x1: margin.left, x2: margin.left + plotWidth, y1: y(-band), y2: y(-band) }),
    ),
  );
  const xAxis = svg("g", { class: "x-axis" });
  for (const checkpoint of checkpoints) {
    xAxis.append(
      svg("text", { x: x(checkpoint), y: height - margin.bottom + 18, "text-anchor": "middle" }, `${checkpoint}%`),
    );
  }
  xAxis.append(
    svg(
      "text",
      { x: margin.left + plotWidth, y: height - 4, "text-anchor": "end" },
      "share of the expected time",
    ),
  );
  chart.append(xAxis);

  function line(className, points, describe, href) {
    const group = svg("g", { class: className });
    const shown = checkpoints.filter((c) => Number.isFinite(points[c]));
    group.append(
      svg("path", {
        class: "line",
        d: shown.map((c, i) => `${i ? "L" : "M"}${x(c).toFixed(1)},${y(points[c]).toFixed(1)}`).join(""),
      }),
    );
    for (const checkpoint of shown) {
      const dot = svg(
        "circle",
        { cx: x(checkpoint), cy: y(points[checkpoint]), r: 3.5, class: "dot" },
        svg("title", {}, describe(checkpoint, points[checkpoint])),
      );
      if (href) group.append(svg("a", { href }, dot));
      else group.append(dot);
    }
    return group;
  }

  for (const scan of scans) {
    const group = line(
      "scan-errors",
      scan.errors,
      (c, v) => `${scan.title}: ETA ${signedPercent(v)} at ${c}%`,
      scan.href,
    );
    group.dataset.scan = scan.id;
    chart.append(group);
  }
  for (const median of medians) {
    chart.append(
      line("median-errors", median.values, (c, v) => `${median.name}: median |error| ${Number(v.toFixed(1))}% at ${c}%`),
    );
  }
  return chart;
}
