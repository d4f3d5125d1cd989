// abacus dashboard: plain DOM and SVG over the public API and the live
// stream. No framework, no build step; served from the binary.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = {
  experiments: [],
  selected: null,
  stats: new Map(),   // experiment -> last `stats` message
  lastEventId: null,
};

// ---------- helpers ----------

function el(tag, attrs = {}, ...children) {
  const svg = ["svg", "line", "polyline", "circle", "text", "rect", "g"].includes(tag);
  const node = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const pct = (x, digits = 1) => (x === null || x === undefined ? "–" : `${(x * 100).toFixed(digits)}%`);
const num = (x, digits = 2) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));
const pval = (p) => (p === null || p === undefined ? "–" : p < 0.0001 ? p.toExponential(1) : p.toFixed(4));

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = !message;
}

// ---------- API ----------

let keyWaiters = [];

function askForKey() {
  return new Promise((resolve) => {
    keyWaiters.push(resolve);
    const dialog = $("#key-dialog");
    if (!dialog.open) dialog.showModal();
  });
}

function headers(extra = {}) {
  const key = sessionStorage.getItem("abacus.key");
  return key ? { ...extra, authorization: `Bearer ${key}` } : extra;
}

async function api(method, path, body) {
  for (;;) {
    const init = { method, headers: headers(body === undefined ? {} : { "content-type": "application/json" }) };
    if (body !== undefined) init.body = JSON.stringify(body);
    const response = await fetch(path, init);
    if (response.status === 401) {
      await askForKey();
      continue;
    }
    const text = await response.text();
    const data = text ? JSON.parse(text) : null;
    if (!response.ok) {
      const e = data && data.error;
      throw new Error(e ? `${e.code}: ${e.message}` : `${method} ${path}: ${response.status}`);
    }
    return data;
  }
}

async function act(fn) {
  try {
    await fn();
    showError("");
    await refresh();
  } catch (e) {
    showError(e.message);
  }
}

// ---------- experiments ----------

const ACTIONS = { draft: ["start"], running: ["pause", "complete"], paused: ["resume", "complete"], completed: ["archive"] };

function renderExperiments() {
  const body = $("#experiments tbody");
  body.replaceChildren(
    ...state.experiments.map((e) => {
      const live = state.stats.get(e.key);
      const units = live ? live.variants.reduce((n, v) => n + v.units, 0) : "–";
      const events = live ? Object.values(live.events_per_s).reduce((a, b) => a + b, 0) : "–";
      const buttons = (ACTIONS[e.status] || []).map((action) =>
        el("button", {
          type: "button",
          "data-action": action,
          onclick: (ev) => {
            ev.stopPropagation();
            act(() => (action === "archive" ? api("DELETE", `/v1/experiments/${e.key}`) : api("POST", `/v1/experiments/${e.key}/${action}`)));
          },
        }, action));
      return el("tr", {
        class: `clickable${state.selected === e.key ? " selected" : ""}`,
        "data-key": e.key,
        onclick: () => select(e.key),
      },
        el("td", {}, e.key),
        el("td", {}, e.name),
        el("td", {}, el("span", { class: `badge ${e.status}`, "data-field": "status" }, e.status)),
        el("td", { class: "num", "data-field": "units" }, units),
        el("td", { class: "num", "data-field": "exposures" }, live ? live.exposures_per_s : "–"),
        el("td", { class: "num", "data-field": "events" }, events),
        el("td", {}, buttons));
    }));
}

function list(value, parse) {
  return value.split(",").map((s) => s.trim()).filter(Boolean).map(parse);
}

async function create(form) {
  const f = new FormData(form);
  const metrics = list(f.get("metrics"), (m) => {
    const [key, kind = "binomial"] = m.split(":");
    return { key: key.trim(), kind: kind.trim() };
  });
  const body = {
    key: f.get("key"),
    name: f.get("name"),
    variants: list(f.get("variants"), (v) => {
      const [key, weight = "1"] = v.split(":");
      return { key: key.trim(), weight: Number(weight) };
    }),
    metrics,
  };
  if (f.get("primary")) body.primary_metric = f.get("primary");
  if (f.get("guard_metric")) {
    body.guardrails = [{ metric: f.get("guard_metric"), max_relative_drop: Number(f.get("guard_drop")), auto_stop: f.get("guard_stop") === "on" }];
  }
  await api("POST", "/v1/experiments", body);
  if (f.get("start") === "on") await api("POST", `/v1/experiments/${body.key}/start`);
  state.selected = body.key;
  form.reset();
}

// ---------- results ----------

function select(key) {
  state.selected = key;
  if (location.hash.slice(1) !== key) history.replaceState(null, "", `#${key}`);
  renderExperiments();
  refreshResults();
}

async function refreshResults() {
  const key = state.selected;
  if (!key) return;
  const [experiment, results, timeline] = await Promise.all([
    api("GET", `/v1/experiments/${key}`),
    api("GET", `/v1/experiments/${key}/results`),
    api("GET", `/v1/experiments/${key}/timeline?points=300`),
  ]);
  if (key !== state.selected) return;
  $("#detail").hidden = false;
  $("#detail-key").textContent = key;
  const badges = [el("span", { class: `badge ${experiment.status}` }, experiment.status)];
  if (results.srm.detected) badges.push(el("span", { class: "badge srm", "data-badge": "srm" }, `SRM p=${pval(results.srm.p_value)}`));
  if (experiment.significant_at) badges.push(el("span", { class: "badge significant", "data-badge": "significant" }, "significant"));
  if (experiment.guardrail_stop) badges.push(el("span", { class: "badge guardrail", "data-badge": "guardrail" }, `stopped by guardrail ${experiment.guardrail_stop.metric}`));
  $("#badges").replaceChildren(...badges);
  $("#detail-note").textContent = `${results.units} exposed units · alpha ${results.alpha} · ${results.assignment_mismatches} assignment mismatches`;
  $("#results").replaceChildren(...renderPhases(results.phases || [], experiment.variants), ...results.metrics.map(renderMetric), ...renderGuardrails(results.guardrails));
  const charted = results.metrics.find((m) => m.metric === timeline.metric);
  renderChart(timeline, charted && charted.kind, results.phases || []);
  await refreshModel(key, results.model);
}

function renderMetric(m) {
  const comparisons = new Map(m.comparisons.map((c) => [c.variant, c]));
  const field = { binomial: "rate", mean: "mean", ratio: "ratio", quantile: "value" }[m.kind] || "mean";
  const values = m.variants.map((v) => v[field] ?? null);
  const bounds = m.variants.flatMap((v) => v.ci || []).concat(values.filter((x) => x !== null));
  const lo = Math.min(...bounds, 0), hi = Math.max(...bounds, 1e-9);
  const scale = (x) => 8 + ((x - lo) / (hi - lo || 1)) * 184;
  const rows = m.variants.map((v, i) => {
    const c = comparisons.get(v.variant);
    const value = values[i];
    const bar = el("svg", { width: 200, height: 16, viewBox: "0 0 200 16" },
      v.ci ? el("line", { class: "ci", x1: scale(v.ci[0]), x2: scale(v.ci[1]), y1: 8, y2: 8 }) : null,
      value !== null ? el("circle", { class: "point", cx: scale(value), cy: 8, r: 4 }) : null);
    const lift = c && c.relative ? `${pct(c.relative.estimate)} [${pct(c.relative.ci && c.relative.ci[0])}, ${pct(c.relative.ci && c.relative.ci[1])}]` : i === 0 ? "control" : "–";
    const sig = c && c.sequential_significant ? el("span", { class: "badge significant" }, "significant") : null;
    return el("tr", { "data-variant": v.variant },
      el("td", {}, v.variant),
      el("td", { class: "num", "data-field": "units" }, v.units),
      el("td", { class: "num", "data-field": "value" }, m.kind === "binomial" ? pct(value, 2) : num(value)),
      el("td", {}, bar),
      el("td", { class: "num" }, lift),
      el("td", { class: "num" }, c ? pval(c.p_value) : ""),
      el("td", { class: "num" }, c ? pval(c.sequential_p_value_adjusted) : ""),
      el("td", { class: "num" }, c ? pct(c.chance_to_win) : ""),
      el("td", {}, sig));
  });
  return el("div", { class: "metric", "data-metric": m.metric },
    el("h3", {}, `${m.metric} (${m.kind}${m.denominator ? ` of ${m.measure} per ${m.denominator}` : ""})${m.primary ? " · primary" : ""}`),
    metricNotes(m),
    pColumns(m),
    el("table", {},
      el("thead", {}, el("tr", {}, ["variant", "units", m.quantile ? `p${+(m.quantile.level * 100).toFixed(2)}` : field, "95% CI", "lift [95% CI]", "p", "always-valid p", "chance to win", ""].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows)));
}

/** The two p-value columns, one line each: what each may be used for, and what the always-valid one is tuned to. */
function pColumns(m) {
  const t = m.sequential && m.sequential.tuned_for;
  const tuned = !t ? "" : t.source === "mixing_variance" ? ` (mixing variance ${num(t.mixing_variance)}, set by hand)`
    : t.source === "mde" ? ` (tuned to detect a ${pct(t.mde)} lift)`
    : ` (tuned to ${t.units_per_variant.toLocaleString()} units per variant${t.source === "default" ? ", the default: set the experiment's plan" : ""})`;
  return el("div", { class: "muted p-columns" },
    el("p", { "data-field": "p-fixed" }, "p: fixed-horizon — read it once, at the sample size you planned; looking earlier and stopping on it inflates false positives."),
    el("p", { "data-field": "p-always-valid" }, `always-valid p: safe to watch at any time and stop on${tuned}; it needs more data to say yes.`));
}

/** One line on what shapes a metric's numbers: a cap, a quantile's spread, CUPED, a pending recomputation. */
function metricNotes(m) {
  const notes = [];
  if (m.pending) notes.push(m.pending);
  if (m.cap != null) notes.push(`each unit capped at ${num(m.cap)} (${(m.capped_units || []).join(" / ")} units capped)`);
  if (m.quantile) {
    const of = m.quantile.of === "value" ? m.measure : `${m.measure} ${m.quantile.of}`;
    const spread = m.variants.map((v) => `${v.variant} p50 ${num(v.percentiles.p50)} · p95 ${num(v.percentiles.p95)} · p99 ${num(v.percentiles.p99)} (${v.events} values)`);
    notes.push(`quantile ${m.quantile.level} of ${of}; ${spread.join("; ")}`);
  }
  if (m.cuped) notes.push(`CUPED on ${m.cuped.covariate} over ${m.cuped.window_days} days before exposure: θ ${num(m.cuped.theta)}, variance ${pct(-m.cuped.variance_reduction)}`);
  return notes.length ? el("p", { class: "muted" }, notes.join(" · ")) : null;
}

/** The allocation history, once weights or coverage changed: each phase's split, units and own SRM check. */
function renderPhases(phases, variants) {
  if (phases.length < 2) return [];
  const split = (p) => p.weights.map((w) => `${+(w * 100).toFixed(1)}%`).join(" / ");
  return [el("h3", {}, "Phases"), el("p", { class: "muted" }, "Results weigh each phase by its share of the units; units keep the variant they were first exposed to."),
    el("table", { id: "phases" },
      el("thead", {}, el("tr", {}, ["phase", "started", `split (${variants.map((v) => v.key).join(" / ")})`, "coverage", "units", "SRM p"].map((h) => el("th", {}, h)))),
      el("tbody", {}, phases.map((p) => el("tr", { "data-phase": p.number },
        el("td", {}, p.number), el("td", {}, new Date(p.started_at).toLocaleString()),
        el("td", { "data-field": "split" }, split(p)), el("td", { class: "num" }, pct(p.coverage)),
        el("td", { class: "num", "data-field": "units" }, p.units.join(" / ")),
        el("td", { class: "num" }, el("span", { class: `badge ${p.srm.detected ? "critical" : "ok"}` }, pval(p.srm.p_value)))))))];
}

function renderGuardrails(checks) {
  if (!checks.length) return [];
  return [el("h3", {}, "Guardrails"), el("table", {},
    el("thead", {}, el("tr", {}, ["metric", "variant", "lift", "tolerated drop", "always-valid p", ""].map((h) => el("th", {}, h)))),
    el("tbody", {}, checks.map((g) => el("tr", {},
      el("td", {}, g.metric), el("td", {}, g.variant), el("td", { class: "num" }, pct(g.relative_lift)),
      el("td", { class: "num" }, pct(g.max_relative_drop)), el("td", { class: "num" }, pval(g.p_value)),
      el("td", {}, el("span", { class: `badge ${g.regressed ? "critical" : "ok"}` }, g.regressed ? "regressed" : "ok"))))))];
}

/** One line chart: `series` is [[variant, [[t, y]...]]...]; `marks` are [t, label] drawn as dashed verticals (phase starts). */
function lineChart(top, title, series, format, marks = []) {
  const all = series.flatMap(([, points]) => points);
  const ys = all.map((p) => p[1]).filter((y) => y !== null);
  if (!ys.length) return [el("text", { x: 10, y: top + 20 }, `${title}: no data yet`)];
  const t0 = Math.min(...all.map((p) => p[0])), t1 = Math.max(...all.map((p) => p[0]), t0 + 1);
  const yMax = Math.max(...ys) || 1;
  const x = (t) => 70 + ((t - t0) / (t1 - t0)) * 1100, y = (v) => top + 150 - (v / yMax) * 130;
  const lines = series.map(([variant, points], i) =>
    el("polyline", { class: `series-${i % 4}`, fill: "none", "stroke-width": 2, "data-variant": variant,
      points: points.filter((p) => p[1] !== null).map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ") }));
  return [
    el("text", { x: 70, y: top + 12, class: "title" }, title),
    el("line", { class: "zero", x1: 70, x2: 1170, y1: top + 150, y2: top + 150 }),
    el("text", { x: 4, y: top + 24 }, format(yMax)),
    el("text", { x: 4, y: top + 150 }, format(0)),
    el("text", { x: 70, y: top + 166 }, new Date(t0).toLocaleString()),
    el("text", { x: 1170, y: top + 166, "text-anchor": "end" }, new Date(t1).toLocaleString()),
    ...marks.filter(([t]) => t >= t0 && t <= t1).flatMap(([t, label, n]) => [
      el("line", { class: "phase", x1: x(t), x2: x(t), y1: top + 18, y2: top + 150, "data-phase": n }),
      el("text", { x: x(t) + 4, y: top + 30, class: "phase-label" }, label)]),
    ...lines,
  ];
}

function renderChart(timeline, kind, phases) {
  const variants = timeline.points.length ? timeline.points[0].variants.map((v) => v.variant) : [];
  const marks = phases.filter((p) => p.number > 1).map((p) => [Date.parse(p.started_at), `phase ${p.number}: ${p.weights.map((w) => Math.round(w * 100)).join("/")}`, p.number]);
  const series = (field) => variants.map((name, i) => [name, timeline.points.map((p) => [p.at_ms, p.variants[i][field]])]);
  const legend = variants.map((v, i) => el("text", { x: 70 + i * 140, y: 376, class: `series-${i % 4} legend` }, `— ${v}`));
  $("#chart").replaceChildren(
    ...lineChart(0, "exposed units", series("units"), (v) => Math.round(v), marks),
    ...lineChart(185, timeline.metric ? `${timeline.metric}: ${{ mean: "mean per unit", ratio: "ratio", quantile: "quantile" }[kind] || "rate"}` : "no primary metric", timeline.metric ? series("value") : [], (v) => v.toPrecision(3), marks),
    ...legend);
}

// ---------- model experiments ----------

/** A population stability index above this is drift worth a look. */
const PSI_DRIFT = 0.2;

async function refreshModel(key, model) {
  if (!model) {
    $("#model-panel").hidden = true;
    return;
  }
  const live = await api("GET", `/v1/experiments/${key}/predictions?limit=20`);
  if (key !== state.selected) return;
  $("#model-panel").hidden = false;
  renderModel(model);
  renderPredictions(live.predictions);
}

/** A quality window in words, for a tooltip. */
function quality(q, classifier) {
  if (!q) return "none yet";
  const figures = classifier ? `accuracy ${pct(q.accuracy)}, log loss ${num(q.log_loss, 3)}` : `MAE ${num(q.mae, 3)}`;
  return `${figures} (${q.outcomes} outcomes)`;
}

function renderModel(model) {
  const classifier = model.task === "classification";
  const span = (s) => `${new Date(s.start).toLocaleString()} – ${new Date(s.end).toLocaleString()}`;
  $("#model-note").textContent = `${model.task} · outcomes join within ${model.join_window_hours} h · `
    + `baseline ${model.baseline ? span(model.baseline) : "from the start"} · last ${model.window_hours} h against it`;
  const scores = classifier
    ? [["accuracy", "accuracy", (x) => pct(x)], ["log loss", "log_loss", (x) => num(x, 3)], ["Brier", "brier", (x) => num(x, 3)]]
    : [["MAE", "mae", (x) => num(x, 3)], ["RMSE", "rmse", (x) => num(x, 3)]];
  const heads = ["variant", "predictions", "outcomes", "coverage", ...scores.map(([h]) => h), "latency p50 / p95 / p99", "PSI", "degradation"];
  $("#model-variants thead").replaceChildren(el("tr", {}, heads.map((h, i) => el("th", { class: i ? "num" : null }, h))));
  $("#model-variants tbody").replaceChildren(...model.variants.map((v) => {
    const psi = v.drift.psi;
    const drifted = psi !== null && psi > PSI_DRIFT;
    const latency = v.latency_ms ? `${num(v.latency_ms.p50, 1)} / ${num(v.latency_ms.p95, 1)} / ${num(v.latency_ms.p99, 1)} ms` : "–";
    return el("tr", { "data-variant": v.variant, class: drifted ? "drifted" : null },
      el("td", {}, v.variant),
      el("td", { class: "num", "data-field": "predictions" }, v.predictions),
      el("td", { class: "num", "data-field": "outcomes" }, v.outcomes),
      el("td", { class: "num", "data-field": "coverage" }, pct(v.coverage)),
      scores.map(([, field, format]) => el("td", { class: "num", "data-field": field }, format(v[field]))),
      el("td", { class: "num", "data-field": "latency" }, latency),
      el("td", {
        class: "num",
        "data-field": "psi",
        title: `${v.drift.baseline_predictions} predictions in the baseline, ${v.drift.window_predictions} in the window (PSI needs 100 in each)`,
      }, drifted ? el("span", { class: "badge critical", "data-badge": "drift" }, `drift ${num(psi, 3)}`) : num(psi, 3)),
      el("td", {
        class: "num",
        "data-field": "degradation",
        title: `baseline: ${quality(v.quality.baseline, classifier)}; window: ${quality(v.quality.window, classifier)}`,
      }, pct(v.quality.degradation)));
  }));
  const tables = classifier ? model.variants.map((v) => el("table", { class: "calibration", "data-variant": v.variant },
    el("caption", {}, `${v.variant} · ECE ${num(v.expected_calibration_error, 3)}`),
    el("thead", {}, el("tr", {}, ["confidence", "outcomes", "mean conf.", "accuracy"].map((h, i) => el("th", { class: i ? "num" : null }, h)))),
    el("tbody", {}, v.calibration.map((r) => el("tr", { class: r.outcomes ? null : "empty" },
      el("td", {}, `${num(r.from, 1)}–${num(r.to, 1)}`),
      el("td", { class: "num" }, r.outcomes),
      el("td", { class: "num" }, pct(r.mean_confidence)),
      el("td", { class: "num" }, pct(r.accuracy))))))) : [];
  $("#calibration").replaceChildren(...(tables.length ? [el("h3", {}, "Calibration ", el("span", { class: "muted" }, "(joined outcomes by the probability of the predicted label)")), el("div", { class: "calibrations" }, tables)] : []));
}

function renderPredictions(predictions) {
  const body = $("#predictions tbody");
  if (!predictions.length) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 7, class: "muted" }, "no predictions yet")));
    return;
  }
  body.replaceChildren(...predictions.map((p) => {
    const o = p.outcome;
    const verdict = !o ? el("span", { class: "muted" }, "pending")
      : o.correct === true ? el("span", { class: "badge ok" }, "correct")
        : o.correct === false ? el("span", { class: "badge critical" }, "wrong")
          : num(o.error, 3);
    const about = [`prediction ${p.prediction_id}`];
    if (p.model) about.push(`model ${p.model}`);
    if (p.latency_ms !== null && p.latency_ms !== undefined) about.push(`${num(p.latency_ms, 1)} ms`);
    return el("tr", { "data-prediction": p.prediction_id, title: about.join(" · ") },
      el("td", { class: "muted" }, new Date(p.timestamp).toLocaleTimeString()),
      el("td", { "data-field": "unit" }, p.unit_id),
      el("td", { "data-field": "variant" }, p.variant ?? "–"),
      el("td", { class: "num", "data-field": "score" }, num(p.score ?? p.value, 3)),
      el("td", { "data-field": "label" }, p.label ?? "–",
        p.confidence !== null && p.confidence !== undefined ? el("span", { class: "muted" }, ` ${pct(p.confidence)}`) : null),
      el("td", { "data-field": "outcome" }, !o ? "–" : o.label ?? num(o.value, 3)),
      el("td", { "data-field": "verdict" }, verdict));
  }));
}

// ---------- alerts, webhooks, performance ----------

function me() {
  return $("#me").value.trim() || "dashboard";
}

function renderAlerts(alerts) {
  $("#alerts").replaceChildren(...(alerts.length ? alerts : [null]).map((a) => {
    if (!a) return el("li", { class: "muted" }, "no alerts");
    const buttons = [];
    if (a.status === "open") buttons.push(el("button", { type: "button", "data-action": "acknowledge", onclick: () => act(() => api("POST", `/v1/alerts/${a.id}/acknowledge`, { by: me() })) }, "acknowledge"));
    if (a.status !== "resolved") buttons.push(el("button", { type: "button", "data-action": "resolve", onclick: () => act(() => api("POST", `/v1/alerts/${a.id}/resolve`, { by: me() })) }, "resolve"));
    const who = a.resolved ? `resolved by ${a.resolved.by}` : a.acknowledged ? `acknowledged by ${a.acknowledged.by}` : "";
    return el("li", { "data-alert": a.id, "data-status": a.status },
      el("span", { class: `badge ${a.severity}` }, a.severity), " ",
      el("span", { class: `badge ${a.status}`, "data-field": "status" }, a.status), " ",
      el("strong", {}, a.name), el("br"),
      el("span", { class: "muted" }, `${a.message} · ${new Date(a.raised_at).toLocaleTimeString()} ${who}`), el("br"),
      buttons);
  }));
}

function renderWebhooks(hooks) {
  $("#webhooks").replaceChildren(...(hooks.length ? hooks : [null]).map((h) => {
    if (!h) return el("li", { class: "muted" }, "no subscriptions");
    return el("li", {},
      el("span", { class: `badge ${h.enabled ? "ok" : "disabled"}` }, h.enabled ? "enabled" : `disabled (${h.disabled.reason})`), " ",
      el("strong", {}, h.url), el("br"),
      el("span", { class: "muted" }, `${h.stats.delivered} delivered · ${h.pending} pending · success ${pct(h.success_rate)}${h.stats.last_error ? ` · last error: ${h.stats.last_error}` : ""}`),
      h.enabled ? null : el("button", { type: "button", onclick: () => act(() => api("POST", `/v1/webhooks/${h.id}/enable`)) }, "enable"));
  }));
}

function renderPerformance(s) {
  const rows = [
    ["requests/s", num(s.requests_per_s, 1)],
    ["events/s", num(s.events_per_s, 1)],
    ["error rate", pct(s.error_rate, 2)],
    ["request p50 / p95 / p99", `${num(s.latency_ms.p50, 3)} / ${num(s.latency_ms.p95, 3)} / ${num(s.latency_ms.p99, 3)} ms`],
    ["event p50", `${num(s.event_latency_ms.p50, 3)} ms`],
    ["event p95", `${num(s.event_latency_ms.p95, 3)} ms`],
    ["event p99", `${num(s.event_latency_ms.p99, 3)} ms`],
    ["refused events", s.rejected],
    ["mailbox", `${s.mailbox_depth} / ${s.mailbox_capacity}`],
    ["stream clients", s.stream_clients],
  ];
  $("#performance").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { "data-field": k }, v)]));
}

// ---------- live stream ----------

function onMessage(event, data) {
  if (event === "stats") {
    state.stats.set(data.experiment, data);
    renderExperiments();
    return;
  }
  const feed = $("#feed");
  const about = (data.data && (data.data.experiment_key || (data.data.alert && data.data.alert.name))) || "";
  feed.prepend(el("li", {}, `${new Date().toLocaleTimeString()} ${event} ${about}`));
  while (feed.children.length > 50) feed.lastChild.remove();
  refresh();
}

async function stream() {
  for (;;) {
    try {
      const h = headers(state.lastEventId ? { "last-event-id": state.lastEventId } : {});
      const response = await fetch("/v1/stream", { headers: h });
      if (response.status === 401) {
        await askForKey();
        continue;
      }
      if (!response.ok) throw new Error(`stream: ${response.status}`);
      $("#live").textContent = "live";
      $("#live").className = "pill on";
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let id = null, event = "message", data = "";
          for (const line of frame.split("\n")) {
            if (line.startsWith("id: ")) id = line.slice(4);
            else if (line.startsWith("event: ")) event = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
          }
          if (id) state.lastEventId = id;
          if (data) onMessage(event, JSON.parse(data));
        }
      }
    } catch (e) {
      console.warn(e);
    }
    $("#live").textContent = "reconnecting";
    $("#live").className = "pill off";
    await new Promise((r) => setTimeout(r, 1000));
  }
}

// ---------- holdouts ----------

/** Each holdout with its results: the held-out units against the exposed ones, per metric. */
async function refreshHoldouts() {
  const { holdouts } = await api("GET", "/v1/holdouts");
  $("#holdouts-panel").hidden = !holdouts.length;
  if (!holdouts.length) return;
  const results = await Promise.all(holdouts.map((h) => api("GET", `/v1/holdouts/${h.key}/results`)));
  $("#holdouts").replaceChildren(...holdouts.map((h, i) => renderHoldout(h, results[i])));
}

function renderHoldout(h, r) {
  const scope = h.experiments ? h.experiments.join(", ") : "every experiment";
  const units = r.metrics.length ? r.metrics[0].variants.map((v) => v.units) : [];
  const rows = r.metrics.map((m) => {
    const [held, exposed] = m.variants;
    const c = m.comparisons[0] || {};
    const field = m.kind === "binomial" ? "rate" : "mean";
    const show = (v) => (m.kind === "binomial" ? pct(v && v[field], 2) : num(v && v[field]));
    const lift = c.relative ? `${pct(c.relative.estimate)} [${pct(c.relative.ci && c.relative.ci[0])}, ${pct(c.relative.ci && c.relative.ci[1])}]` : "–";
    return el("tr", { "data-metric": m.metric },
      el("td", {}, m.metric), el("td", { class: "num", "data-field": "holdout" }, show(held)),
      el("td", { class: "num", "data-field": "exposed" }, show(exposed)), el("td", { class: "num", "data-field": "lift" }, lift),
      el("td", { class: "num" }, pval(c.p_value)), el("td", { class: "num" }, pval(c.sequential_p_value_adjusted)));
  });
  return el("div", { class: "holdout", "data-holdout": h.key },
    el("h3", {}, `${h.name} (${h.key}) · ${pct(h.fraction)} held out of ${scope}${h.ended_at ? " · ended" : ""}`),
    el("p", { class: "muted", "data-field": "units" }, `${units[0] ?? 0} held out · ${units[1] ?? 0} exposed${r.srm.detected ? ` · SRM p=${pval(r.srm.p_value)}` : ""}`),
    el("table", {},
      el("thead", {}, el("tr", {}, ["metric", "holdout", "exposed", "lift [95% CI]", "p", "always-valid p"].map((t) => el("th", {}, t)))),
      el("tbody", {}, rows)));
}

// ---------- identity ----------

/** One id's identity: the unit it links to (POST /v1/aliases), and the ids linked to it. */
async function lookUpIdentity(unit) {
  const who = await api("GET", `/v1/aliases/${encodeURIComponent(unit)}`);
  const linked = who.linked.map((l) =>
    el("li", { "data-linked": l.id }, `${l.id} `, el("span", { class: "muted" }, `linked ${new Date(l.linked_at).toLocaleString()}`)));
  $("#identity").replaceChildren(
    el("p", { "data-field": "links-to" },
      who.links_to ? `${who.unit_id} is ${who.links_to}: its events and assignments are that unit's` : `${who.unit_id} links to no other unit`),
    linked.length
      ? el("div", {}, el("p", {}, `ids linked to ${who.unit_id}:`), el("ul", { "data-field": "linked" }, ...linked))
      : el("p", { class: "muted", "data-field": "linked" }, "no ids are linked to it"));
}

// ---------- refresh loop ----------

let refreshing = null;

function refresh() {
  refreshing = refreshing || (async () => {
    try {
      const [experiments, alerts, hooks, perf] = await Promise.all([
        api("GET", "/v1/experiments?limit=200"),
        api("GET", "/v1/alerts?limit=20"),
        api("GET", "/v1/webhooks"),
        api("GET", "/v1/server/stats"),
      ]);
      state.experiments = experiments.experiments.filter((e) => e.status !== "archived");
      renderExperiments();
      renderAlerts(alerts.alerts.filter((a) => a.status !== "resolved").concat(alerts.alerts.filter((a) => a.status === "resolved").slice(0, 5)));
      renderWebhooks(hooks.webhooks);
      renderPerformance(perf);
      await refreshHoldouts();
      await refreshResults();
    } catch (e) {
      showError(e.message);
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

document.addEventListener("DOMContentLoaded", () => {
  $("#me").value = sessionStorage.getItem("abacus.me") || "";
  $("#me").addEventListener("change", () => sessionStorage.setItem("abacus.me", $("#me").value));
  $("#key-form").addEventListener("submit", () => {
    sessionStorage.setItem("abacus.key", $("#key").value);
    $("#key").value = "";
    const waiters = keyWaiters;
    keyWaiters = [];
    waiters.forEach((w) => w());
  });
  $("#forget").addEventListener("click", () => {
    sessionStorage.removeItem("abacus.key");
    location.reload();
  });
  $("#create").addEventListener("submit", (ev) => {
    ev.preventDefault();
    act(() => create(ev.target));
  });
  $("#identity-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    act(() => lookUpIdentity(ev.target.unit.value.trim()));
  });
  if (location.hash.length > 1) state.selected = decodeURIComponent(location.hash.slice(1));
  refresh();
  setInterval(refresh, 2000);
  stream();
});
