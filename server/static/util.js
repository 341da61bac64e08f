// Small helpers shared by the page: the API client, DOM building and number formatting.

export const STAGES = [
  { key: "universe_loading", label: "Universe Loading", unit: "symbols", color: "var(--stage-1)" },
  { key: "data_fetching", label: "Data Fetching", unit: "symbols", color: "var(--stage-2)" },
  { key: "symbol_scanning", label: "Symbol Scanning", unit: "symbols", color: "var(--stage-3)" },
  { key: "finalization", label: "Finalization", unit: "symbols", color: "var(--stage-4)" },
];
export const STAGE_BY_KEY = Object.fromEntries(STAGES.map((s) => [s.key, s]));
export const TERMINAL = new Set(["completed", "failed", "cancelled", "interrupted"]);

// -- access token ---------------------------------------------------------------------------
// With TECHNIC_API_TOKEN set on the server, open the page once as /?token=...; the token is
// kept for this tab only and taken out of the address bar, so shared links never carry it.

const TOKEN_KEY = "technic.token";

function readToken() {
  const params = new URLSearchParams(location.search);
  const given = params.get("token");
  if (given) {
    try {
      sessionStorage.setItem(TOKEN_KEY, given);
    } catch {
      /* storage disabled: keep the token in the URL instead */
      return given;
    }
    params.delete("token");
    const query = params.toString();
    history.replaceState(null, "", location.pathname + (query ? `?${query}` : "") + location.hash);
    return given;
  }
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

export const token = readToken();

/** A URL of the API with ``query`` added (and the token, for WebSocket/SSE/downloads). */
export function apiUrl(path, query = {}, { withToken = false } = {}) {
  const url = new URL(path, location.origin);
  for (const [key, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
  }
  if (withToken && token) url.searchParams.set("token", token);
  return url;
}

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.field = body ? body.field : null;
    this.body = body;
  }
}

/** Fetch JSON from the API. Throws ApiError for an error answer, TypeError when offline. */
export async function api(path, { method = "GET", query, body, signal } = {}) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(apiUrl(path, query), {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
    cache: "no-store",
  });
  const type = response.headers.get("Content-Type") || "";
  const data = type.includes("json") ? await response.json() : null;
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

// -- DOM ---------------------------------------------------------------------------------

/** h("a", {href: "#/", class: "x"}, "text", child) -> element. ``on*`` attributes bind events. */
export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      element.addEventListener(key.slice(2), value);
    } else if (key === "dataset") {
      Object.assign(element.dataset, value);
    } else {
      element.setAttribute(key, value === true ? "" : value);
    }
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(element, child);
    else element.append(child instanceof Node ? child : String(child));
  }
}

export const SVG_NS = "http://www.w3.org/2000/svg";

export function svg(tag, attrs = {}, ...children) {
  const element = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null) element.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

/** Set text only when it changed, so live updates do not disturb selection or screen readers. */
export function setText(element, text) {
  const value = text === undefined || text === null ? "" : String(text);
  if (element.textContent !== value) element.textContent = value;
}

export function setProgress(bar, percent, valueText) {
  const value = Math.max(0, Math.min(100, Number(percent) || 0));
  const rounded = Math.round(value * 10) / 10;
  if (bar.getAttribute("aria-valuenow") !== String(rounded)) {
    bar.setAttribute("aria-valuenow", String(rounded));
    bar.style.setProperty("--value", `${value}%`);
  }
  if (valueText && bar.getAttribute("aria-valuetext") !== valueText) {
    bar.setAttribute("aria-valuetext", valueText);
  }
}

// -- formatting --------------------------------------------------------------------------

const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });

export function fmtInt(value) {
  return value === null || value === undefined ? "–" : integer.format(value);
}

export function fmtNumber(value, digits = 2) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "–";
  return value.toLocaleString("en-US", {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

export function fmtPercent(value, digits = 1) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "–";
  return `${value.toFixed(digits)}%`;
}

/** A fraction (0.0712) as a signed percent ("+7.1%"). */
export function fmtRatioPercent(value) {
  if (value === null || value === undefined || !Number.isFinite(value)) return "–";
  const percent = value * 100;
  return `${percent > 0 ? "+" : ""}${percent.toFixed(1)}%`;
}

/** Units per second: 41267 -> "41,267/s", 3.52 -> "3.5/s". */
export function fmtRate(value) {
  if (value === null || value === undefined || !Number.isFinite(value) || value <= 0) return "–";
  if (value >= 100) return `${integer.format(value)}/s`;
  if (value >= 10) return `${value.toFixed(1)}/s`;
  return `${value.toFixed(2)}/s`;
}

/** A duration for reading: "0.64 s", "12.3 s", "2m 1s", "1h 2m". */
export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  const s = Math.max(0, seconds);
  if (s < 10) return `${s.toFixed(2)} s`;
  if (s < 60) return `${s.toFixed(1)} s`;
  const whole = Math.round(s);
  if (whole < 3600) return `${Math.floor(whole / 60)}m ${whole % 60}s`;
  const minutes = Math.round(whole / 60);
  return `${Math.floor(minutes / 60)}h ${minutes % 60}m`;
}

/** "1 scan", "3 scans" (counts formatted with thousands separators). */
export function plural(count, word) {
  return `${fmtInt(count)} ${word}${count === 1 ? "" : "s"}`;
}

/** Time left in words: "a few seconds left", "about 40 seconds left", "about 2 minutes left". */
export function etaWords(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) {
    return "estimating time left…";
  }
  if (seconds < 5) return "a few seconds left";
  if (seconds < 55) return `about ${plural(Math.max(5, Math.round(seconds / 5) * 5), "second")} left`;
  if (seconds < 90) return "about a minute left";
  if (seconds < 3570) return `about ${plural(Math.round(seconds / 60), "minute")} left`;
  const hours = Math.floor(seconds / 3600);
  const minutes = Math.round((seconds - hours * 3600) / 60);
  return `about ${plural(hours, "hour")}${minutes ? ` ${plural(minutes, "minute")}` : ""} left`;
}

/** "3 min ago" for an ISO timestamp or epoch seconds. */
export function timeAgo(when) {
  if (!when) return "–";
  const date = typeof when === "number" ? new Date(when * 1000) : new Date(when);
  const seconds = (Date.now() - date.getTime()) / 1000;
  if (seconds < 45) return "just now";
  if (seconds < 90) return "1 min ago";
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return date.toLocaleDateString(undefined, { month: "short", day: "numeric" });
}

export function clockTime(when) {
  if (!when) return "";
  const date = typeof when === "number" ? new Date(when * 1000) : new Date(when);
  return date.toLocaleString(undefined, {
    month: "short",
    day: "numeric",
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
  });
}

export function shortId(scanId) {
  return String(scanId || "").slice(0, 8);
}

export const STATUS_LABELS = {
  pending: "Queued",
  running: "Running",
  completed: "Completed",
  failed: "Failed",
  cancelled: "Cancelled",
  interrupted: "Interrupted",
  skipped: "Skipped",
};

export function statusBadge(status) {
  return h("span", { class: `badge status-${status}` }, STATUS_LABELS[status] || status);
}

/** "Sample · 3 sectors · up to 200 symbols · rating ≥ 60" from a scan's config. */
export function describeConfig(config) {
  if (!config) return "";
  const names = { sample: "S&P 500 sample", synthetic: "Synthetic", polygon: "Polygon" };
  const parts = [names[config.provider] || config.provider || names.sample];
  const sectors = config.sectors || [];
  if (sectors.length === 1) parts.push(sectors[0]);
  else if (sectors.length > 1) parts.push(`${sectors.length} sectors`);
  else parts.push("all sectors");
  if (config.max_symbols) parts.push(`up to ${fmtInt(config.max_symbols)} symbols`);
  if (config.min_tech_rating) parts.push(`rating ≥ ${config.min_tech_rating}`);
  if (config.trade_style && config.trade_style !== "swing") parts.push(config.trade_style);
  return parts.join(" · ");
}

/** Resolve after ``ms``, or at once when ``signal`` aborts. */
export function delay(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}
