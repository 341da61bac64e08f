// The technic page: start a scan, watch it live, read its results and the stage history.
// Plain ES modules, no build step. Routes live in the hash so every view has its own URL:
//   #/              start form and recent scans
//   #/scan/<id>     one scan, live while it runs (add ?transport=sse or =poll to force one)
//   #/history       stage durations over recent scans, p50/p90, the dominant stage, and how
//                   right the ETAs were (error by checkpoint, linearity of the bars)

import { barChart, errorChart, lineChart } from "./charts.js";
import { LiveFeed, TRANSPORT_NAMES } from "./live.js";
import {
  ApiError,
  STAGE_BY_KEY,
  STAGES,
  STATUS_LABELS,
  TERMINAL,
  api,
  apiUrl,
  clockTime,
  describeConfig,
  etaWords,
  fmtDuration,
  fmtInt,
  fmtNumber,
  fmtPercent,
  fmtRate,
  fmtRatioPercent,
  h,
  plural,
  setProgress,
  setText,
  shortId,
  statusBadge,
  svg,
  timeAgo,
  token,
} from "./util.js";

const view = document.getElementById("view");
const connectionPill = document.getElementById("connection");
const params = new URLSearchParams(location.search);
const UUID = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}";
let cleanup = null;

// -- routing -------------------------------------------------------------------------------

function route() {
  cleanup?.();
  cleanup = null;
  const hash = location.hash || "#/";
  const scan = hash.match(new RegExp(`^#/scan/(${UUID})$`));
  view.replaceChildren();
  showConnection(null);
  let current = "home";
  if (scan) {
    current = "scan";
    cleanup = scanView(scan[1].toLowerCase());
  } else if (hash.startsWith("#/history")) {
    current = "history";
    cleanup = historyView();
  } else {
    cleanup = homeView();
  }
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.body.dataset.view = current;
}

// /?scan=<id> is accepted too, as the shareable form some tools prefer.
if (!location.hash && new RegExp(`^${UUID}$`).test(params.get("scan") || "")) {
  history.replaceState(null, "", `${location.pathname}#/scan/${params.get("scan")}`);
}

// -- pieces shared by the views -------------------------------------------------------------

function card(title, ...children) {
  return h("section", { class: "card" }, title ? h("h2", {}, title) : null, ...children);
}

function errorText(error) {
  if (error instanceof ApiError) {
    if (error.status === 401)
      return "The server needs an access token: open this page as /?token=YOUR_TOKEN.";
    return error.message;
  }
  return "Cannot reach the server. Is technic serve running?";
}

const ICON_PATHS = {
  completed: [
    svg("circle", { cx: 10, cy: 10, r: 9 }),
    svg("path", { d: "M5.5 10.5l3 3 6-6.5", class: "mark" }),
  ],
  running: [
    svg("circle", { cx: 10, cy: 10, r: 7.5, class: "track" }),
    svg("path", { d: "M10 2.5a7.5 7.5 0 0 1 7.5 7.5", class: "arc" }),
  ],
  pending: [
    svg("circle", { cx: 10, cy: 10, r: 8.5 }),
    svg("path", { d: "M8 6.5v7M12 6.5v7", class: "mark" }),
  ],
  failed: [
    svg("circle", { cx: 10, cy: 10, r: 9 }),
    svg("path", { d: "M6.5 6.5l7 7M13.5 6.5l-7 7", class: "mark" }),
  ],
  skipped: [
    svg("circle", { cx: 10, cy: 10, r: 8.5 }),
    svg("path", { d: "M6.5 6.5l4 3.5-4 3.5M10.5 6.5l4 3.5-4 3.5", class: "mark" }),
  ],
  stopped: [
    svg("circle", { cx: 10, cy: 10, r: 9 }),
    svg("rect", { x: 6.5, y: 6.5, width: 7, height: 7, rx: 1, class: "mark" }),
  ],
};

function stageIcon(status) {
  const icon = svg("svg", {
    class: `icon icon-${status}`,
    viewBox: "0 0 20 20",
    width: 20,
    height: 20,
    "aria-hidden": "true",
  });
  for (const part of ICON_PATHS[status] || ICON_PATHS.pending) icon.append(part.cloneNode(true));
  return icon;
}

function progressBar(label, { large = false } = {}) {
  return h(
    "div",
    {
      class: `bar${large ? " large" : ""}`,
      role: "progressbar",
      "aria-label": label,
      "aria-valuemin": 0,
      "aria-valuemax": 100,
      "aria-valuenow": 0,
    },
    h("div", { class: "fill" }),
  );
}

/** The header pill saying how this page is being kept up to date. */
function showConnection(info) {
  if (!info) {
    connectionPill.hidden = true;
    return;
  }
  connectionPill.hidden = false;
  connectionPill.dataset.state = info.state;
  const transport = TRANSPORT_NAMES[info.transport] || info.transport;
  const text = {
    connecting: "Connecting…",
    live: info.transport === "poll" ? "Live · polling" : `Live · ${transport}`,
    reconnecting: "Reconnecting…",
    ended: "Finished",
  }[info.state];
  setText(connectionPill, text || info.state);
}

function onResize(element, draw) {
  let width = 0;
  const observer = new ResizeObserver(() => {
    const next = Math.floor(element.clientWidth);
    if (next > 0 && Math.abs(next - width) > 4) {
      width = next;
      draw(next);
    }
  });
  observer.observe(element);
  return () => observer.disconnect();
}

// -- home: start form and recent scans --------------------------------------------------

function homeView() {
  document.title = "technic — live stock scanner";
  const form = startForm();
  const recent = recentScans();
  view.append(
    h(
      "div",
      { class: "intro" },
      h("h1", {}, "Scan stocks, watch every stage live"),
      h(
        "p",
        {},
        "A scan loads the universe, fetches prices, rates every symbol 0–100 from its indicators and ranks the candidates with a trade plan. ",
        "Pick what to scan and press Start.",
      ),
    ),
    h("div", { class: "home-grid" }, form.element, recent.element),
  );
  return () => {
    form.stop();
    recent.stop();
  };
}

const PROVIDER_HINTS = {
  sample: "Real daily bars of 504 S&P 500 stocks (2012–2017), bundled with technic.",
  synthetic: "Generated random-walk stocks: exactly “max symbols” of them, for big or quick tests.",
};

function startForm() {
  const errors = {};
  const controller = new AbortController();

  function field(name, label, input, hint) {
    input.id = `field-${name}`;
    input.name = name;
    input.setAttribute("aria-describedby", `hint-${name} error-${name}`);
    errors[name] = h("p", { class: "field-error", id: `error-${name}`, hidden: true });
    return h(
      "div",
      { class: "field", "data-field": name },
      h("label", { for: input.id }, label),
      input,
      hint ? h("p", { class: "hint", id: `hint-${name}` }, hint) : null,
      errors[name],
    );
  }

  const provider = h(
    "select",
    {},
    h("option", { value: "sample" }, "S&P 500 sample"),
    h("option", { value: "synthetic" }, "Synthetic"),
  );
  const providerHint = h("span", {}, PROVIDER_HINTS.sample);
  const maxSymbols = h("input", { type: "number", inputmode: "numeric", min: 1, step: 1, value: 100 });
  const minRating = h("input", {
    type: "number",
    inputmode: "decimal",
    min: 0,
    max: 100,
    step: "any",
    value: 0,
  });
  const tradeStyle = h(
    "select",
    {},
    h("option", { value: "day" }, "Day"),
    h("option", { value: "swing", selected: true }, "Swing"),
    h("option", { value: "position" }, "Position"),
  );
  const accountSize = h("input", { type: "number", inputmode: "decimal", min: 1, step: "any", value: 10000 });
  const riskPct = h("input", {
    type: "number",
    inputmode: "decimal",
    min: 0.01,
    max: 100,
    step: "any",
    value: 1,
  });

  const sectorList = h(
    "div",
    { class: "chips", id: "sector-list" },
    h("span", { class: "hint" }, "Loading sectors…"),
  );
  errors.sectors = h("p", { class: "field-error", id: "error-sectors", hidden: true });
  const sectorCount = h("span", { class: "hint", id: "hint-sectors" }, "None ticked: every sector.");
  const sectors = h(
    "fieldset",
    { class: "field sectors", "data-field": "sectors", "aria-describedby": "hint-sectors error-sectors" },
    h(
      "legend",
      {},
      "Sectors ",
      h("button", { type: "button", class: "link", onclick: () => tickAll(true) }, "all"),
      " · ",
      h("button", { type: "button", class: "link", onclick: () => tickAll(false) }, "none"),
    ),
    sectorList,
    sectorCount,
    errors.sectors,
  );
  const formError = h("p", { class: "form-error", role: "alert", hidden: true });
  const submit = h("button", { type: "submit", class: "primary" }, "Start scan");

  const element = card(
    "Start a scan",
    h(
      "form",
      { id: "start-form", novalidate: true, onsubmit: onSubmit },
      field("provider", "Data source", provider, providerHint),
      sectors,
      h(
        "div",
        { class: "row" },
        field("max_symbols", "Max symbols", maxSymbols, "How many symbols to scan at most."),
        field("min_tech_rating", "Minimum rating", minRating, "0–100; 60+ is Buy, 75+ Strong Buy."),
      ),
      h(
        "details",
        { class: "more" },
        h("summary", {}, "Trade plan options"),
        h(
          "div",
          { class: "row three" },
          field("trade_style", "Trade style", tradeStyle, "Sets the stop distance."),
          field("account_size", "Account size", accountSize, "For position sizes."),
          field("risk_pct", "Risk per trade %", riskPct, "Of the account."),
        ),
      ),
      formError,
      h("div", { class: "actions" }, submit),
    ),
  );

  function tickAll(on) {
    for (const box of sectorList.querySelectorAll("input[type=checkbox]")) box.checked = on;
    updateSectorCount();
  }

  function ticked() {
    return [...sectorList.querySelectorAll("input[type=checkbox]:checked")].map((box) => box.value);
  }

  function updateSectorCount() {
    const count = ticked().length;
    setText(sectorCount, count ? `${count} ticked.` : "None ticked: every sector.");
  }

  async function loadSectors() {
    const keep = new Set(ticked());
    setText(providerHint, PROVIDER_HINTS[provider.value] || "");
    try {
      const universe = await api("/universe", {
        query: { provider: provider.value },
        signal: controller.signal,
      });
      sectorList.replaceChildren(
        ...universe.sectors.map((name) =>
          h(
            "label",
            { class: "chip" },
            h("input", {
              type: "checkbox",
              name: "sectors",
              value: name,
              checked: keep.has(name),
              onchange: updateSectorCount,
            }),
            h("span", {}, name),
          ),
        ),
      );
      if (universe.symbols) maxSymbols.max = universe.symbols;
      else maxSymbols.removeAttribute("max");
    } catch (error) {
      if (controller.signal.aborted) return;
      sectorList.replaceChildren(h("span", { class: "hint" }, `Sectors unavailable: ${errorText(error)}`));
    }
    updateSectorCount();
  }

  function clearErrors() {
    for (const [name, box] of Object.entries(errors)) {
      box.hidden = true;
      setText(box, "");
      element.querySelector(`#field-${name}`)?.removeAttribute("aria-invalid");
    }
    formError.hidden = true;
  }

  function showError(fieldName, message) {
    const box = fieldName ? errors[fieldName] : null;
    if (box) {
      setText(box, message);
      box.hidden = false;
      const input = element.querySelector(`#field-${fieldName}`);
      if (input) {
        input.setAttribute("aria-invalid", "true");
        input.focus();
      } else {
        sectorList.querySelector("input")?.focus();
      }
      if (box.closest("details")) box.closest("details").open = true;
    } else {
      setText(formError, fieldName ? `${fieldName}: ${message}` : message);
      formError.hidden = false;
    }
  }

  function number(input) {
    const raw = input.value.trim();
    if (raw === "") return undefined;
    const value = Number(raw);
    return Number.isFinite(value) ? value : raw; // the server names what is wrong with it
  }

  async function onSubmit(event) {
    event.preventDefault();
    clearErrors();
    const body = {
      provider: provider.value,
      max_symbols: number(maxSymbols),
      min_tech_rating: number(minRating),
      trade_style: tradeStyle.value,
      account_size: number(accountSize),
      risk_pct: number(riskPct),
    };
    const chosen = ticked();
    if (chosen.length) body.sectors = chosen;
    for (const key of Object.keys(body)) if (body[key] === undefined) delete body[key];
    submit.disabled = true;
    setText(submit, "Starting…");
    try {
      const started = await api("/scan/start", { method: "POST", body });
      location.hash = `#/scan/${started.scan_id}`;
    } catch (error) {
      if (error instanceof ApiError && error.status === 429) {
        const wait = error.body?.retry_after_s;
        showError(null, `${error.message}${wait ? ` Try again in ${wait} s.` : ""}`);
      } else if (error instanceof ApiError) {
        showError(error.field, error.message);
      } else {
        showError(null, errorText(error));
      }
    } finally {
      submit.disabled = false;
      setText(submit, "Start scan");
    }
  }

  provider.addEventListener("change", loadSectors);
  loadSectors();
  return { element, stop: () => controller.abort() };
}

/** The table of scans the home page and the History view's interval list share. */
function scanTable(body) {
  return h(
    "table",
    { class: "table recent" },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        h("th", { scope: "col" }, "Scan"),
        h("th", { scope: "col" }, "Status"),
        h("th", { scope: "col", class: "wide-only" }, "What"),
        h("th", { scope: "col", class: "num" }, "Duration"),
        h("th", { scope: "col", class: "num" }, "Results"),
      ),
    ),
    body,
  );
}

/** ``when`` replaces "3 min ago" under the id, e.g. by a clock time in a list of old scans. */
function scanRow(scan, { duration, when } = {}) {
  duration ??= fmtDuration(scan.duration_seconds);
  when ??= timeAgo(scan.created_at);
  const results = scan.status === "completed" ? fmtInt(scan.result_count) : "–";
  return h(
    "tr",
    { "data-scan": scan.scan_id, "data-status": scan.status },
    h(
      "td",
      {},
      h("a", { href: `#/scan/${scan.scan_id}`, class: "scan-link" }, h("code", {}, shortId(scan.scan_id))),
      h("span", { class: "sub", title: clockTime(scan.created_at) }, when),
    ),
    h("td", {}, statusBadge(scan.status)),
    h("td", { class: "wide-only what" }, describeConfig(scan.config)),
    h("td", { class: "num" }, duration),
    h("td", { class: "num" }, results),
  );
}

function recentScans() {
  const body = h("tbody");
  const table = scanTable(body);
  const empty = h("p", { class: "empty", hidden: true }, "No scans yet: start one and it appears here.");
  const problem = h("p", { class: "form-error", hidden: true });
  const element = card("Recent scans", h("div", { class: "table-scroll" }, table), empty, problem);
  let stopped = false;
  let timer = null;

  async function load() {
    try {
      const [page, active] = await Promise.all([
        api("/scans", { query: { limit: 12 } }),
        api("/scan/active").catch(() => ({ active: [] })),
      ]);
      if (stopped) return;
      problem.hidden = true;
      const progress = Object.fromEntries(active.active.map((scan) => [scan.scan_id, scan]));
      render(page.scans, progress);
    } catch (error) {
      if (stopped) return;
      setText(problem, errorText(error));
      problem.hidden = false;
    }
    if (!stopped) timer = setTimeout(load, 3000);
  }

  let shown = "";

  function render(scans, progress) {
    const key = JSON.stringify([scans, progress]);
    if (key === shown) return; // nothing changed: keep the rows (and any hover or focus)
    shown = key;
    empty.hidden = scans.length > 0;
    table.hidden = scans.length === 0;
    body.replaceChildren(
      ...scans.map((scan) => {
        const live = progress[scan.scan_id];
        let duration = fmtDuration(scan.duration_seconds);
        if (!TERMINAL.has(scan.status)) {
          duration = live ? fmtPercent(timeShare(live).percent, 0) : "…";
        }
        return scanRow(scan, { duration });
      }),
    );
  }

  load();
  return {
    element,
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}

// -- one scan, live ---------------------------------------------------------------------

const STAGE_STATUS_TEXT = {
  completed: "Done",
  running: "Running",
  pending: "Pending",
  failed: "Failed",
  skipped: "Skipped",
  stopped: "Stopped",
};

function scanView(scanId) {
  document.title = `technic — scan ${shortId(scanId)}`;
  const badge = h("span", { class: "badge status-pending", "aria-live": "polite" }, "Connecting");
  const configLine = h("p", { class: "config" });
  const banner = h(
    "div",
    { class: "banner reconnecting", role: "status", hidden: true },
    h("span", { class: "spinner", "aria-hidden": "true" }),
    h("span", { class: "banner-text" }, "Connection lost — reconnecting…"),
    h("button", { type: "button", class: "link", onclick: () => feed.wake() }, "Retry now"),
  );
  const overallBar = progressBar("Overall progress", { large: true });
  const overallPct = h("span", { class: "overall-pct" }, "0.0%");
  const overallWhat = h("span", { class: "overall-what" });
  const weighted = h("span", {
    class: "weighted",
    id: "weighted-progress",
    title: "The stages' own percents weighted 5/20/70/5: not linear in time",
    hidden: true,
  });
  const etaText = h("span", { class: "eta" }, "waiting for the first update…");
  const message = h("p", { class: "message" });
  const metric = (label, name) => {
    const value = h("dd", { "data-metric": name }, "–");
    return [h("div", { class: "metric" }, h("dt", {}, label), value), value];
  };
  const [throughputBox, throughputValue] = metric("Throughput", "throughput");
  const [elapsedBox, elapsedValue] = metric("Elapsed", "elapsed");
  const [remainingBox, remainingValue] = metric("Remaining", "remaining");
  const cancel = h(
    "button",
    { type: "button", class: "danger", id: "cancel", onclick: onCancel },
    "Cancel scan",
  );
  const cancelNote = h("span", { class: "hint" });
  const outcome = h("div", { class: "outcome" });

  const rows = {};
  const stageList = h("ol", { class: "stages", "aria-label": "Stages" });
  for (const stage of STAGES) {
    const bar = progressBar(`${stage.label} progress`);
    const row = {
      element: h("li", { class: "stage", "data-stage": stage.key, "data-status": "pending" }),
      icon: stageIcon("pending"),
      status: h("span", { class: "stage-status" }, "Pending"),
      weight: h("span", { class: "stage-weight" }),
      bar,
      pct: h("span", { class: "stage-pct" }, "0.0%"),
      units: h("span", { class: "stage-units" }),
      rate: h("span", { class: "stage-rate" }),
      time: h("span", { class: "stage-time" }),
      lastStatus: "pending",
    };
    row.element.append(
      h("span", { class: "stage-icon" }, row.icon),
      h(
        "div",
        { class: "stage-main" },
        h(
          "div",
          { class: "stage-head" },
          h("span", { class: "stage-name" }, stage.label),
          row.weight,
          row.status,
        ),
        bar,
        h("div", { class: "stage-facts" }, row.pct, row.units, row.rate, row.time),
      ),
    );
    rows[stage.key] = row;
    stageList.append(row.element);
  }

  view.append(
    h(
      "div",
      { class: "scan", "data-scan": scanId },
      h(
        "div",
        { class: "scan-head" },
        h("h1", {}, "Scan ", h("code", { title: scanId }, shortId(scanId))),
        badge,
      ),
      configLine,
      banner,
      card(
        null,
        h(
          "div",
          { class: "overall" },
          h("div", { class: "overall-top" }, overallPct, overallWhat, etaText, weighted),
          overallBar,
          message,
        ),
        h("dl", { class: "metrics" }, throughputBox, elapsedBox, remainingBox),
        stageList,
        h("div", { class: "actions" }, cancel, cancelNote),
      ),
      outcome,
    ),
  );

  let latest = null;
  let receivedAt = 0;
  let shownOutcome = false;
  let cancelling = false;
  const disposers = [];

  const feed = new LiveFeed(scanId, {
    transport: params.get("transport"),
    onSnapshot(snapshot) {
      latest = snapshot;
      receivedAt = performance.now();
      render(snapshot);
    },
    onState(info) {
      showConnection(info);
      banner.hidden = info.state !== "reconnecting";
      view.querySelector(".scan").dataset.connection = info.state;
      if (info.state === "reconnecting") {
        const seconds = Math.max(1, Math.round((info.retryInMs || 0) / 1000));
        setText(
          banner.querySelector(".banner-text"),
          `Connection lost — reconnecting in ${seconds} s (attempt ${info.attempt})…`,
        );
      }
    },
    onGone(reason) {
      badge.className = "badge status-failed";
      setText(badge, reason === "unauthorized" ? "No access" : "Not found");
      const text =
        reason === "unauthorized"
          ? "The server needs an access token: open this page as /?token=YOUR_TOKEN."
          : `There is no scan ${scanId} on this server.`;
      view
        .querySelector(".scan .card")
        .replaceWith(
          card(
            null,
            h("p", { class: "form-error" }, text),
            h("p", {}, h("a", { href: "#/" }, "Start a new scan")),
          ),
        );
    },
  }).start();

  lookUpConfig(scanId).then((config) => setText(configLine, describeConfig(config)));

  const ticker = setInterval(tick, 250);

  function liveSeconds(snapshot) {
    return snapshot.status === "running" ? (performance.now() - receivedAt) / 1000 : 0;
  }

  function tick() {
    if (!latest) return;
    const since = liveSeconds(latest);
    const elapsed = (latest.elapsed_seconds || 0) + since;
    setText(elapsedValue, latest.status === "pending" ? "waiting" : fmtDuration(elapsed));
    if (latest.status === "running") {
      const eta = Number.isFinite(latest.overall_eta) ? Math.max(0, latest.overall_eta - since) : null;
      setText(remainingValue, eta === null ? "estimating…" : fmtDuration(eta));
      setText(etaText, etaWords(eta));
    }
  }

  function render(snapshot) {
    const status = snapshot.status;
    badge.className = `badge status-${status}`;
    setText(badge, STATUS_LABELS[status] || status);
    const { percent: overall, timed } = timeShare(snapshot);
    let words;
    if (status === "pending") words = "queued: waiting for a free worker…";
    else if (status === "running") words = etaWords(snapshot.overall_eta);
    else if (status === "completed") words = `done in ${fmtDuration(snapshot.elapsed_seconds)}`;
    else {
      const ended = (STATUS_LABELS[status] || status).toLowerCase();
      words = `${ended} after ${fmtDuration(snapshot.elapsed_seconds || 0)}`;
    }
    const what = timed ? " of the expected time" : "";
    setProgress(overallBar, overall, `${fmtPercent(overall)}${what}, ${words}`);
    overallBar.dataset.status = status;
    setText(overallPct, fmtPercent(overall));
    setText(overallWhat, what.trim());
    weighted.hidden = !timed;
    setText(weighted, timed ? `stages ${fmtPercent(snapshot.overall_progress || 0)} (weighted)` : "");
    setText(etaText, words);
    setText(message, snapshot.error || snapshot.message || "");
    message.classList.toggle("error", Boolean(snapshot.error));
    setText(throughputValue, throughputText(snapshot));
    let remaining = "estimating…";
    if (TERMINAL.has(status) || status === "pending") remaining = "–";
    else if (Number.isFinite(snapshot.overall_eta)) remaining = fmtDuration(snapshot.overall_eta);
    setText(remainingValue, remaining);
    tick();
    for (const stage of STAGES) renderStage(rows[stage.key], stage, snapshot.stages?.[stage.key], status);
    const active = status === "pending" || status === "running";
    cancel.hidden = !active;
    cancel.disabled = cancelling;
    if (!active) setText(cancelNote, "");
    const state = TERMINAL.has(status) ? STATUS_LABELS[status] : fmtPercent(overall, 0);
    document.title = `technic — ${state} · scan ${shortId(scanId)}`;
    if (TERMINAL.has(status) && !shownOutcome) {
      shownOutcome = true;
      showOutcome(snapshot);
    }
  }

  function renderStage(row, stage, data, scanStatus) {
    if (!data) return;
    let status = data.status || "pending";
    if (row.element.dataset.status !== status) row.element.dataset.status = status;
    // the stage a cancel or a crash cut short is reported failed; it did not fail by itself
    if (status === "failed" && (scanStatus === "cancelled" || scanStatus === "interrupted")) {
      status = "stopped";
    }
    if (status !== row.lastStatus) {
      row.lastStatus = status;
      row.element.dataset.shown = status;
      const icon = stageIcon(status);
      row.icon.replaceWith(icon);
      row.icon = icon;
    }
    setText(row.status, STAGE_STATUS_TEXT[status] || status);
    setText(row.weight, `${Math.round((data.weight || 0) * 100)}% of the scan`);
    const percent = data.progress || 0;
    setProgress(row.bar, percent, `${fmtPercent(percent)} ${STAGE_STATUS_TEXT[status] || status}`);
    setText(row.pct, fmtPercent(percent));
    const total = data.total;
    const unit = data.unit || stage.unit; // data_fetching counts requests for a network provider
    setText(
      row.units,
      total !== null && total !== undefined
        ? `${fmtInt(data.current || 0)}/${fmtInt(total)} ${unit}`
        : data.current
          ? `${fmtInt(data.current)} ${unit}`
          : "",
    );
    setText(row.rate, data.throughput ? `${fmtRate(data.throughput).replace("/s", "")} ${unit}/s` : "");
    let time = "";
    if (status === "running") time = Number.isFinite(data.eta) ? `ETA ${fmtDuration(data.eta)}` : "ETA –";
    else if (status !== "pending" && Number.isFinite(data.duration))
      time = `took ${fmtDuration(data.duration)}`;
    setText(row.time, time);
  }

  async function onCancel() {
    cancelling = true;
    cancel.disabled = true;
    setText(cancelNote, "Cancelling…");
    try {
      const answer = await api(`/scan/cancel/${scanId}`, { method: "POST" });
      setText(cancelNote, answer.message || "Cancellation requested");
    } catch (error) {
      cancelling = false;
      cancel.disabled = false;
      setText(cancelNote, errorText(error));
    }
  }

  async function showOutcome(snapshot) {
    const status = snapshot.status;
    if (status === "completed") {
      const hint = h("p", { class: "hint" }, "Loading results…");
      outcome.append(card(null, hint));
      let left = false;
      disposers.push(() => {
        left = true;
      });
      // results are read from storage: a 503 says they are still being stored, so wait
      for (;;) {
        try {
          const results = await api(`/scan/results/${scanId}`, { query: { limit: RESULTS_PAGE } });
          outcome.replaceChildren(...completedOutcome(scanId, results, snapshot, disposers));
        } catch (error) {
          if (error instanceof ApiError && error.status === 503 && !left) {
            setText(hint, `${errorText(error)} Trying again…`);
            await new Promise((resolve) => setTimeout(resolve, RESULTS_RETRY_MS));
            continue;
          }
          outcome.replaceChildren(card("Results", h("p", { class: "form-error" }, errorText(error))));
        }
        return;
      }
    }
    const texts = {
      failed: ["This scan failed.", snapshot.error || snapshot.message || "No reason was given."],
      cancelled: ["This scan was cancelled.", "It stopped between chunks; nothing was ranked."],
      interrupted: [
        "This scan was interrupted.",
        "The server stopped while it ran (restarted or crashed). Start it again to get results.",
      ],
    }[status] || [`This scan ended: ${status}.`, ""];
    outcome.append(
      card(
        null,
        h("p", { class: `outcome-text status-${status}` }, h("strong", {}, texts[0]), " ", texts[1]),
        h("p", {}, h("a", { href: "#/", class: "button" }, "Start a new scan")),
      ),
    );
  }

  return () => {
    feed.stop();
    clearInterval(ticker);
    for (const dispose of disposers) dispose();
  };
}

/**
 * What the main bar shows: ``time_progress``, the share of the expected time done, which
 * moves steadily; the seed's weighted ``overall_progress`` is not linear in time. A server
 * without ``time_progress`` has only the weighted sum: that is the bar then (``timed`` false).
 */
function timeShare(snapshot) {
  if (Number.isFinite(snapshot.time_progress)) return { percent: snapshot.time_progress, timed: true };
  return { percent: snapshot.overall_progress || 0, timed: false };
}

/** Symbols per second: the running stage's rate, or the whole scan's once it has ended. */
function throughputText(snapshot) {
  const stages = snapshot.stages || {};
  let rate = null;
  if (TERMINAL.has(snapshot.status)) {
    const scanned = stages.symbol_scanning?.current;
    if (scanned && snapshot.elapsed_seconds > 0) rate = scanned / snapshot.elapsed_seconds;
  } else {
    const current = STAGE_BY_KEY[snapshot.current_stage];
    const unit = stages[snapshot.current_stage]?.unit || current?.unit;
    if (unit === "symbols") rate = snapshot.stage_throughput;
    else rate = stages.symbol_scanning?.throughput; // requests, not symbols
  }
  return rate ? `${fmtRate(rate).replace("/s", "")} symbols/s` : "–";
}

async function lookUpConfig(scanId) {
  try {
    const active = await api("/scan/active");
    const found = active.active.find((scan) => scan.scan_id === scanId);
    if (found) return found.config;
    const page = await api("/scans", { query: { limit: 100 } });
    return page.scans.find((scan) => scan.scan_id === scanId)?.config || null;
  } catch {
    return null;
  }
}

// -- results ----------------------------------------------------------------------------

const RESULTS_PAGE = 1000;
const RESULTS_RETRY_MS = 2000;
const SHOW_ROWS = 50;
// the sort keys GET /scan/results accepts (RESULT_SORTS in storage/repository.py)
const SERVER_SORTS = new Set([
  "rank",
  "symbol",
  "sector",
  "tech_rating",
  "signal",
  "close",
  "rsi14",
  "ret_21d",
  "rel_volume",
  "dollar_volume_20d",
  "reward_risk",
]);
const signalClass = (signal) =>
  `signal signal-${String(signal || "")
    .toLowerCase()
    .replace(/\s+/g, "-")}`;

const COLUMNS = [
  { key: "rank", label: "#", num: true, format: (v) => v },
  {
    key: "symbol",
    label: "Symbol",
    cell: (row) => [h("strong", {}, row.symbol), h("span", { class: "sub" }, row.name || "")],
  },
  { key: "sector", label: "Sector", className: "wide-only sector" },
  { key: "tech_rating", label: "Rating", num: true, format: (v) => fmtNumber(v, 1) },
  {
    key: "signal",
    label: "Signal",
    cell: (row) => h("span", { class: signalClass(row.signal) }, row.signal),
  },
  { key: "close", label: "Close", num: true, format: (v) => fmtNumber(v, 2) },
  { key: "rsi14", label: "RSI", num: true, format: (v) => fmtNumber(v, 1) },
  { key: "ret_21d", label: "21d", num: true, format: fmtRatioPercent, tone: true },
  {
    key: "rel_volume",
    label: "Rel. vol",
    num: true,
    format: (v) => `${fmtNumber(v, 2)}×`,
    className: "wide-only",
  },
  { key: "entry", label: "Entry", num: true, plan: true, format: (v) => fmtNumber(v, 2) },
  { key: "stop", label: "Stop", num: true, plan: true, format: (v) => fmtNumber(v, 2) },
  { key: "target", label: "Target", num: true, plan: true, format: (v) => fmtNumber(v, 2) },
  { key: "reward_risk", label: "R:R", num: true, plan: true, format: (v) => fmtNumber(v, 1) },
  { key: "position_size", label: "Shares", num: true, plan: true, format: (v) => fmtInt(v) },
];

function share(part, whole) {
  return whole > 0 ? Math.round((100 * part) / whole) : 0;
}

function completedOutcome(scanId, results, snapshot, disposers) {
  const metrics = results.performance_metrics || {};
  const timings = results.stage_timings || {};
  const csvHref = apiUrl(`/scan/results/${scanId}`, { format: "csv" }).toString(); // every row
  const download = h(
    "a",
    { class: "button", id: "download-csv", href: csvHref, download: `technic-${scanId}.csv` },
    "Download CSV",
  );
  if (token) {
    // a plain link cannot carry the Authorization header: fetch it, then save the blob
    download.addEventListener("click", async (event) => {
      event.preventDefault();
      const response = await fetch(csvHref, { headers: { Authorization: `Bearer ${token}` } });
      const url = URL.createObjectURL(await response.blob());
      const link = h("a", { href: url, download: `technic-${scanId}.csv` });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
    });
  }

  const summary = card(
    "Results",
    h(
      "p",
      { class: "summary" },
      h("strong", {}, fmtInt(results.total)),
      ` candidate${results.total === 1 ? "" : "s"} from ${plural(metrics.universe_size, "symbol")}`,
      ` in ${fmtDuration(metrics.total_seconds ?? snapshot.elapsed_seconds)}`,
      ".",
      metrics.symbols_failed ? ` ${fmtInt(metrics.symbols_failed)} skipped for missing data.` : "",
      metrics.cache_hit ? " Prices came from the cache." : "",
    ),
    h("div", { class: "actions" }, download),
  );

  // stage timing breakdown
  const totalStageSeconds = Object.values(timings).reduce((sum, v) => sum + (v || 0), 0);
  const items = STAGES.filter((stage) => timings[stage.key] !== undefined).map((stage) => ({
    key: stage.key,
    label: stage.label,
    value: timings[stage.key],
    color: stage.color,
    note: `${fmtDuration(timings[stage.key])} · ${share(timings[stage.key], totalStageSeconds)}%`,
  }));
  const chartBox = h("div", { class: "chart-box", id: "stage-timing-chart" });
  const timingCard = card("Where the time went", chartBox);
  disposers.push(
    onResize(chartBox, (width) =>
      chartBox.replaceChildren(barChart(items, { width, title: "Seconds per stage of this scan" })),
    ),
  );

  // the results table
  const rows = results.results.slice();
  const complete = results.total <= rows.length;
  let sortKey = "rank";
  let descending = false;
  const tbody = h("tbody");
  const headCells = {};
  const headRow = h("tr", {});
  for (const column of COLUMNS) {
    const sortable = SERVER_SORTS.has(column.key);
    const th = h("th", {
      scope: "col",
      class:
        [column.num ? "num" : "", column.className || "", column.plan ? "plan" : ""].join(" ").trim() || null,
      "aria-sort": column.key === sortKey ? "ascending" : null,
      "data-key": column.key,
    });
    th.append(
      sortable
        ? h("button", { type: "button", class: "sort", onclick: () => sortBy(column.key) }, column.label)
        : column.label,
    );
    headCells[column.key] = th;
    headRow.append(th);
  }
  const planStart = COLUMNS.findIndex((c) => c.plan);
  const groupRow = h(
    "tr",
    { class: "group" },
    h("th", { colspan: planStart, class: "group-spacer" }),
    h("th", { colspan: COLUMNS.length - planStart, class: "plan", scope: "colgroup" }, "Trade plan (long)"),
  );
  const table = h(
    "table",
    { class: "table results", id: "results-table" },
    h("thead", {}, groupRow, headRow),
    tbody,
  );
  const countNote = h("p", { class: "hint" });

  let shown = SHOW_ROWS;
  const more = h("button", {
    type: "button",
    id: "show-more",
    onclick: () => {
      shown += SHOW_ROWS;
      draw();
    },
  });

  function draw() {
    tbody.replaceChildren(
      ...rows.slice(0, shown).map((row) =>
        h(
          "tr",
          { "data-symbol": row.symbol },
          COLUMNS.map((column) => {
            const value = row[column.key];
            const classes = [column.num ? "num" : "", column.className || "", column.plan ? "plan" : ""];
            if (column.tone && Number.isFinite(value))
              classes.push(value > 0 ? "up" : value < 0 ? "down" : "");
            return h(
              "td",
              { class: classes.join(" ").trim() || null },
              column.cell ? column.cell(row) : column.format ? column.format(value) : (value ?? "–"),
            );
          }),
        ),
      ),
    );
    const visible = Math.min(shown, rows.length);
    setText(
      countNote,
      visible === results.total
        ? `${fmtInt(visible)} candidate${visible === 1 ? "" : "s"}. Click a column heading to sort.`
        : `Showing ${fmtInt(visible)} of ${fmtInt(results.total)} candidates` +
            (complete ? "" : " (the first 1,000 in this order; the CSV has them all)") +
            ". Click a column heading to sort.",
    );
    more.hidden = shown >= rows.length;
    setText(more, `Show ${fmtInt(Math.min(SHOW_ROWS, rows.length - shown))} more`);
  }

  async function sortBy(key) {
    descending =
      key === sortKey
        ? !descending
        : ["tech_rating", "ret_21d", "rel_volume", "reward_risk", "dollar_volume_20d"].includes(key);
    sortKey = key;
    for (const [name, th] of Object.entries(headCells)) {
      if (name === key) th.setAttribute("aria-sort", descending ? "descending" : "ascending");
      else th.removeAttribute("aria-sort");
    }
    // the server sorts, always: one order (missing values last, ties by rank) however
    // many rows the page holds
    table.setAttribute("aria-busy", "true");
    try {
      const page = await api(`/scan/results/${scanId}`, {
        query: { limit: RESULTS_PAGE, sort: key, order: descending ? "desc" : "asc" },
      });
      if (key !== sortKey) return; // another heading was clicked meanwhile
      rows.splice(0, rows.length, ...page.results);
    } catch (error) {
      setText(countNote, errorText(error));
      return;
    } finally {
      table.removeAttribute("aria-busy");
    }
    draw();
  }

  draw();
  const resultsCard = card(
    rows.length ? "Candidates" : "No candidates",
    rows.length
      ? h("div", { class: "table-scroll" }, table)
      : h("p", {}, "No symbol reached the minimum rating."),
    rows.length ? h("div", { class: "actions table-foot" }, countNote, more) : null,
  );

  const failures = results.failures || [];
  const failureCard = failures.length
    ? h(
        "details",
        { class: "card failures" },
        h("summary", {}, `${fmtInt(failures.length)} symbol${failures.length === 1 ? "" : "s"} skipped`),
        h(
          "ul",
          {},
          failures.slice(0, 500).map((f) => h("li", {}, h("code", {}, f.symbol), ` ${f.reason}`)),
        ),
      )
    : null;

  return [summary, timingCard, resultsCard, failureCard].filter(Boolean);
}

// -- history ------------------------------------------------------------------------------

const WINDOWS = [
  ["1h", "last hour"],
  ["24h", "last 24 hours"],
  ["7d", "last 7 days"],
  ["30d", "last 30 days"],
  ["90d", "last 90 days"],
];
const HISTORY_SCANS = 30;

function historyView() {
  document.title = "technic — stage history";
  const controller = new AbortController();
  const since = h(
    "select",
    { id: "history-window", "aria-label": "Time window" },
    WINDOWS.map(([value, label]) => h("option", { value, selected: value === "7d" }, label)),
  );
  const interval = h(
    "select",
    { id: "trend-interval", "aria-label": "Trend interval" },
    INTERVALS.map(([value, label]) => h("option", { value, selected: value === "1d" }, label)),
  );
  const trend = trendCard(interval);
  const headline = h("p", { class: "headline", id: "dominant" }, "Loading…");
  const statsBody = h("tbody");
  const statsTable = h(
    "table",
    { class: "table stats", id: "stage-stats" },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        h("th", { scope: "col" }, "Stage"),
        h("th", { scope: "col", class: "num" }, "Runs"),
        h("th", { scope: "col", class: "num" }, "p50"),
        h("th", { scope: "col", class: "num" }, "p90"),
        h("th", { scope: "col", class: "num wide-only" }, "Mean"),
        h("th", { scope: "col", class: "num wide-only" }, "Rate"),
        h("th", { scope: "col" }, "Share of time"),
      ),
    ),
    statsBody,
  );
  const chartBox = h("div", { class: "chart-box", id: "duration-chart" });
  const legend = h(
    "ul",
    { class: "legend" },
    STAGES.map((stage) =>
      h("li", {}, h("span", { class: "swatch", style: `background: ${stage.color}` }), stage.label),
    ),
  );
  const chartNote = h("p", { class: "hint" });
  const accuracy = accuracyCard();
  view.append(
    h(
      "div",
      { class: "history" },
      h(
        "div",
        { class: "scan-head" },
        h("h1", {}, "Stage history"),
        h(
          "div",
          { class: "pickers" },
          h("label", { class: "window" }, "Window ", since),
          h("label", { class: "window" }, "Interval ", interval),
        ),
      ),
      card("Which stage takes the time", headline, h("div", { class: "table-scroll" }, statsTable)),
      trend.element,
      card("Stage duration per scan", legend, chartBox, chartNote),
      accuracy.element,
    ),
  );

  let chartData = null;
  const stopResize = onResize(chartBox, (width) => drawChart(width));

  function drawChart(width = chartBox.clientWidth) {
    if (!chartData || !width) return;
    const { scans, durations } = chartData;
    if (!scans.length) {
      chartBox.replaceChildren(
        h(
          "p",
          { class: "empty" },
          "No completed scans in this window yet. ",
          h("a", { href: "#/" }, "Start one"),
          ".",
        ),
      );
      return;
    }
    const series = STAGES.map((stage) => ({
      key: stage.key,
      name: stage.label,
      color: stage.color,
      values: durations.map((d) => (d && Number.isFinite(d[stage.key]) ? d[stage.key] : null)),
    }));
    const points = scans.map((scan) => ({
      label: new Date(scan.created_at).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" }),
      title: `scan ${shortId(scan.scan_id)}, ${plural(scan.universe_size, "symbol")}, ${clockTime(scan.created_at)}`,
      href: `#/scan/${scan.scan_id}`,
    }));
    chartBox.replaceChildren(
      lineChart(series, points, {
        width,
        height: width < 500 ? 220 : 280,
        title: "Seconds per stage for each recent completed scan",
      }),
    );
  }

  async function load() {
    setText(headline, "Loading…");
    const span = since.value;
    trend.load(span);
    try {
      const [stats, page, measured] = await Promise.all([
        api("/stats/stages", { query: { since: span }, signal: controller.signal }),
        api("/scans", {
          query: { status: "completed", since: span, limit: HISTORY_SCANS },
          signal: controller.signal,
        }),
        api("/stats/accuracy", { query: { since: span }, signal: controller.signal }),
      ]);
      renderStats(stats);
      accuracy.show(measured);
      const scans = page.scans.slice().reverse();
      const durations = await stageDurations(scans, controller.signal);
      chartData = { scans, durations };
      setText(
        chartNote,
        scans.length
          ? `The last ${plural(scans.length, "completed scan")}, oldest on the left. Click a point to open its scan.`
          : "",
      );
      drawChart();
    } catch (error) {
      if (controller.signal.aborted) return;
      setText(headline, errorText(error));
    }
  }

  function renderStats(stats) {
    const rowsByStage = Object.fromEntries(
      (stats.stages || []).filter((s) => !s.bucket).map((s) => [s.stage, s]),
    );
    const dominant = (stats.stages || []).find((s) => s.dominant);
    if (!dominant) {
      headline.replaceChildren(
        "No completed scans in this window yet. ",
        h("a", { href: "#/" }, "Start one"),
        ".",
      );
    } else {
      const stage = STAGE_BY_KEY[dominant.stage];
      headline.replaceChildren(
        h("span", { class: "swatch", style: `background: ${stage.color}` }),
        h("strong", {}, stage.label),
        ` dominates: ${Math.round(dominant.share * 100)}% of stage time over ` +
          `${plural(dominant.count, "completed scan")} ` +
          `(p50 ${fmtDuration(dominant.p50_s)}, p90 ${fmtDuration(dominant.p90_s)}).`,
      );
    }
    statsBody.replaceChildren(
      ...STAGES.map((stage) => {
        const row = rowsByStage[stage.key];
        const share = row ? row.share * 100 : 0;
        return h(
          "tr",
          { "data-stage": stage.key, class: row?.dominant ? "dominant" : null },
          h(
            "th",
            { scope: "row" },
            h(
              "span",
              { class: "stage-label" },
              h("span", { class: "swatch", style: `background: ${stage.color}` }),
              h("span", {}, stage.label),
            ),
          ),
          h("td", { class: "num" }, row ? fmtInt(row.count) : "–"),
          h("td", { class: "num" }, row ? fmtDuration(row.p50_s) : "–"),
          h("td", { class: "num" }, row ? fmtDuration(row.p90_s) : "–"),
          h("td", { class: "num wide-only" }, row ? fmtDuration(row.mean_s) : "–"),
          h(
            "td",
            { class: "num wide-only" },
            row?.symbols_per_s ? `${fmtRate(row.symbols_per_s).replace("/s", "")} ${stage.unit}/s` : "–",
          ),
          h(
            "td",
            { class: "share" },
            h(
              "span",
              { class: "share-bar", role: "img", "aria-label": `${Math.round(share)}% of the time` },
              h("span", { style: `width: ${share.toFixed(1)}%; background: ${stage.color}` }),
            ),
            h("span", { class: "share-text" }, `${Math.round(share)}%`),
          ),
        );
      }),
    );
  }

  since.addEventListener("change", load);
  interval.addEventListener("change", () => trend.load(since.value));
  load();
  return () => {
    controller.abort();
    stopResize();
    accuracy.stop();
    trend.stop();
  };
}

const INTERVALS = [
  ["1h", "hourly"],
  ["1d", "daily"],
  ["1w", "weekly"],
];
const INTERVAL_UNIT = { "1h": "hour", "1d": "day", "1w": "week" };
const INTERVAL_MS = { "1h": 3_600_000, "1d": 86_400_000, "1w": 604_800_000 };
const INTERVAL_SCANS = 500;
// /scans takes windows in whole minutes: ask for this much more on each side, then keep the
// scans created inside the interval exactly (the browser's clock may differ from the server's)
const SLACK_MIN = 5;

function utcDay(iso) {
  return new Date(iso).toLocaleDateString("en-US", { month: "short", day: "numeric", timeZone: "UTC" });
}

function utcHour(iso) {
  return new Date(iso).toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit", timeZone: "UTC" });
}

function utcTime(iso) {
  return `${utcDay(iso)} ${utcHour(iso)} UTC`;
}

/** An interval as words: "Nov 28", "Nov 28 14:00 UTC", "the week of Nov 23". */
function intervalName(iso, interval) {
  if (interval === "1h") return utcTime(iso);
  if (interval === "1w") return `the week of ${utcDay(iso)}`;
  return utcDay(iso);
}

/** "Symbol Scanning p50 +38 % since Nov 28", "Data Fetching p50 steady", or why no verdict. */
function verdictWords(row, interval) {
  const label = STAGE_BY_KEY[row.stage]?.label || row.stage;
  const judged = row.verdict;
  const latest = row.intervals.find((point) => point.start === judged.latest);
  if ((judged.trend === "slower" || judged.trend === "faster") && Number.isFinite(judged.change_pct)) {
    const change = Math.round(judged.change_pct);
    const since = intervalName(judged.since, interval);
    return (
      `${label} p50 ${change > 0 ? "+" : "−"}${Math.abs(change)} % since ${since} ` +
      `(${fmtDuration(latest?.p50_s)}, was ${fmtDuration(judged.baseline_p50_s)})`
    );
  }
  if (judged.trend === "steady") return `${label} p50 steady (${fmtDuration(latest?.p50_s)})`;
  return `${label}: too few full intervals with enough runs to judge yet`;
}

/**
 * p50 per stage over time from GET /stats/stages/trend, the regression verdicts in words,
 * and the scans of the interval clicked.
 */
function trendCard(intervalPicker) {
  const verdicts = h("ul", { class: "verdicts", id: "trend-verdicts", "aria-live": "polite" });
  const legend = h("ul", { class: "legend" });
  const chartBox = h("div", { class: "chart-box", id: "trend-chart" });
  const note = h("p", { class: "hint" });
  const scansHead = h("h3", { id: "interval-scans-title", tabindex: -1 });
  const scansBody = h("tbody");
  const scansNote = h("p", { class: "hint", "aria-live": "polite" });
  const scansBox = h(
    "section",
    { class: "interval-scans", id: "interval-scans", "aria-labelledby": "interval-scans-title", hidden: true },
    scansHead,
    h("div", { class: "table-scroll" }, scanTable(scansBody)),
    scansNote,
  );
  const element = card("Is a stage getting slower?", verdicts, legend, chartBox, note, scansBox);
  let controller = new AbortController();
  let data = null;
  let picked = null;
  const stopResize = onResize(chartBox, (width) => draw(width));

  function starts() {
    const all = new Set(data.stages.flatMap((row) => row.intervals.map((point) => point.start)));
    return [...all].sort((a, b) => Date.parse(a) - Date.parse(b));
  }

  function draw(width = chartBox.clientWidth) {
    if (!data || !width) return;
    if (!data.stages.length) {
      legend.hidden = true;
      chartBox.replaceChildren(
        h(
          "p",
          { class: "empty" },
          "No stage timings in this window yet, so there is no trend to draw. ",
          h("a", { href: "#/" }, "Start a scan"),
          " or pick a longer window.",
        ),
      );
      return;
    }
    legend.hidden = false;
    const xs = starts();
    const rows = STAGES.map((stage) => [stage, data.stages.find((row) => row.stage === stage.key)]).filter(
      ([, row]) => row,
    );
    const p50 = rows.map(([, row]) => Object.fromEntries(row.intervals.map((p) => [p.start, p])));
    const series = rows.map(([stage], k) => ({
      key: stage.key,
      name: stage.label,
      color: stage.color,
      values: xs.map((start) => p50[k][start]?.p50_s ?? null),
    }));
    const points = xs.map((start) => {
      const runs = Math.max(...p50.map((byStart) => byStart[start]?.count || 0));
      const partial = p50.some((byStart) => byStart[start] && !byStart[start].complete);
      return {
        start,
        label: data.interval === "1h" ? utcHour(start) : utcDay(start),
        title: `${intervalName(start, data.interval)}${partial ? " (so far)" : ""}, ${plural(runs, "run")}`,
      };
    });
    const hadFocus = chartBox.contains(document.activeElement);
    chartBox.replaceChildren(
      lineChart(series, points, {
        width,
        height: width < 500 ? 220 : 280,
        title: `p50 seconds per stage, one point per ${INTERVAL_UNIT[data.interval]}`,
        onPick: (i) => pick(xs[i]),
        picked: picked === null ? null : xs.indexOf(picked),
      }),
    );
    if (hadFocus) chartBox.querySelector("rect.pick[tabindex='0']")?.focus(); // a redraw keeps it
    legend.replaceChildren(
      ...rows.map(([stage]) =>
        h("li", {}, h("span", { class: "swatch", style: `background: ${stage.color}` }), stage.label),
      ),
    );
  }

  function showVerdicts() {
    const order = { slower: 0, faster: 1, steady: 2, unknown: 3 };
    const rows = data.stages.slice().sort((a, b) => order[a.verdict.trend] - order[b.verdict.trend]);
    verdicts.replaceChildren(
      ...rows.map((row) =>
        h(
          "li",
          { "data-stage": row.stage, "data-trend": row.verdict.trend, class: `trend-${row.verdict.trend}` },
          h("span", { class: "swatch", style: `background: ${STAGE_BY_KEY[row.stage]?.color}` }),
          verdictWords(row, data.interval),
        ),
      ),
    );
    verdicts.hidden = rows.length === 0;
  }

  async function pick(start) {
    picked = start;
    draw();
    const from = Date.parse(start);
    const now = Date.now();
    const to = Math.min(from + INTERVAL_MS[data.interval], now);
    const query = { since: `${Math.ceil((now - from) / 60_000) + SLACK_MIN}m`, limit: INTERVAL_SCANS };
    const untilMin = Math.floor((now - to) / 60_000) - SLACK_MIN;
    if (untilMin > 0) query.until = `${untilMin}m`;
    scansBox.hidden = false;
    setText(scansHead, `Scans of ${intervalName(start, data.interval)}`);
    scansBody.replaceChildren();
    setText(scansNote, "Loading…");
    try {
      const page = await api("/scans", { query, signal: controller.signal });
      if (picked !== start) return; // another interval was picked meanwhile
      const inside = page.scans.filter((scan) => {
        const created = Date.parse(scan.created_at);
        return created >= from && created < to;
      });
      scansBody.replaceChildren(
        ...inside.map((scan) => scanRow(scan, { when: utcTime(scan.created_at) })),
      );
      setText(
        scansNote,
        inside.length === 0
          ? "No scan was created in this interval: its timings belong to scans begun before it."
          : `${plural(inside.length, "scan")} created in this interval, newest first` +
              (page.next_cursor
                ? `; it holds more than ${fmtInt(INTERVAL_SCANS)}: pick a shorter interval to see them all.`
                : "."),
      );
    } catch (error) {
      if (controller.signal.aborted) return;
      setText(scansNote, errorText(error));
    }
  }

  return {
    element,
    async load(window) {
      controller.abort();
      controller = new AbortController();
      picked = null;
      scansBox.hidden = true;
      setText(note, "Loading…");
      try {
        data = await api("/stats/stages/trend", {
          query: { since: window, interval: intervalPicker.value },
          signal: controller.signal,
        });
      } catch (error) {
        if (controller.signal.aborted) return;
        setText(note, errorText(error));
        return;
      }
      showVerdicts();
      setText(
        note,
        data.stages.length
          ? "Intervals are UTC hours, days or weeks (from Monday); the last one may be partial. " +
              "Click an interval to list its scans."
          : "",
      );
      draw();
    },
    stop() {
      controller.abort();
      stopResize();
    },
  };
}

const WITHIN = 10; // the percent the issue asks ETAs to be within, from the 10 % mark on

function fmtR2(value) {
  return Number.isFinite(value) ? value.toFixed(2) : "–";
}

function groupName(group) {
  const provider = group.provider === "sample" ? "S&P 500 sample" : group.provider;
  return group.bucket ? `${provider}, ${group.bucket.replace("-", "–")} symbols` : provider;
}

/** One sentence per provider and size: the 10 % mark and the linearity of both bars. */
function accuracyWords(group) {
  const first = group.checkpoints[0];
  const scored = first?.count || 0;
  const within = Math.round((group.within_10pct_at_10 || 0) * scored);
  const eta = scored
    ? `ETA within ${WITHIN}% at the ${first.checkpoint}% mark for ${within} of ${plural(scored, "scan")}`
    : `no ETA scored at the ${first?.checkpoint ?? 10}% mark yet`;
  return (
    `${groupName(group)}: ${eta}; time bar linearity R² ${fmtR2(group.median_time_linearity)} ` +
    `(weighted bar ${fmtR2(group.median_overall_linearity)}).`
  );
}

/** The ETA error by checkpoint over the window's recent scans, and what it adds up to. */
function accuracyCard() {
  const chartBox = h("div", { class: "chart-box", id: "accuracy-chart" });
  const summary = h("ul", { class: "accuracy-summary", id: "accuracy-summary", "aria-live": "polite" });
  const legend = h(
    "ul",
    { class: "legend" },
    h("li", {}, h("span", { class: "key key-scan" }), "one recent scan (signed: + said too long)"),
    h("li", {}, h("span", { class: "key key-median" }), "median |error|"),
    h("li", {}, h("span", { class: "key key-band" }), `±${WITHIN}%`),
  );
  const element = card(
    "How right the ETAs were",
    h(
      "p",
      { class: "hint" },
      "The overall ETA when a scan had done 10, 25, 50, 75 and 90% of its expected time, " +
        "against the time that really remained.",
    ),
    legend,
    chartBox,
    summary,
  );
  let stats = null;
  const stopResize = onResize(chartBox, (width) => draw(width));

  function draw(width = chartBox.clientWidth) {
    if (!stats || !width) return;
    const checkpoints = stats.groups[0]?.checkpoints.map((point) => point.checkpoint) || [];
    if (!stats.recent.length || !checkpoints.length) {
      legend.hidden = true;
      chartBox.replaceChildren(
        h(
          "p",
          { class: "empty" },
          "No scan in this window has a measured ETA yet: it is recorded when a scan completes. ",
          h("a", { href: "#/" }, "Start one"),
          ".",
        ),
      );
      return;
    }
    legend.hidden = false;
    const scans = stats.recent.map((scan) => ({
      id: scan.scan_id,
      title: `scan ${shortId(scan.scan_id)}, ${plural(scan.universe_size, "symbol")}, ${clockTime(scan.finished_at)}`,
      href: `#/scan/${scan.scan_id}`,
      errors: Object.fromEntries(checkpoints.map((c) => [c, scan.error_pct[String(c)] ?? null])),
    }));
    const medians = stats.groups.map((group) => ({
      name: groupName(group),
      values: Object.fromEntries(group.checkpoints.map((p) => [p.checkpoint, p.median_abs_error_pct])),
    }));
    chartBox.replaceChildren(
      errorChart(checkpoints, scans, medians, {
        width,
        height: width < 500 ? 220 : 260,
        band: WITHIN,
        title: `ETA error by checkpoint for the last ${plural(scans.length, "measured scan")}`,
      }),
    );
  }

  return {
    element,
    show(measured) {
      stats = measured;
      summary.replaceChildren(...measured.groups.map((group) => h("li", {}, accuracyWords(group))));
      draw();
    },
    stop: stopResize,
  };
}

/** Seconds per stage of each scan: from the list when it carries them, else its progress. */
async function stageDurations(scans, signal) {
  const out = new Array(scans.length).fill(null);
  let next = 0;
  async function worker() {
    while (next < scans.length) {
      const index = next++;
      const scan = scans[index];
      if (scan.stage_timings) {
        out[index] = scan.stage_timings;
        continue;
      }
      try {
        const progress = await api(`/scan/progress/${scan.scan_id}`, { signal });
        out[index] = Object.fromEntries(
          Object.entries(progress.stages || {}).map(([key, stage]) => [key, stage.duration]),
        );
      } catch {
        if (signal.aborted) return;
      }
    }
  }
  await Promise.all(Array.from({ length: 4 }, worker));
  return out;
}

// -- start ---------------------------------------------------------------------------------

window.addEventListener("hashchange", route);
route();
