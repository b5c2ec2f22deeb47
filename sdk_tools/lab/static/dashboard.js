// memwall device lab dashboard. Reads the JSON API only; report text is inserted with textContent,
// never as HTML, because device names and error messages come from the apps.
"use strict";

(() => {
  const API = "/api/v1";
  const PAGE = 500;
  const MiB = 1024 * 1024;
  const COLORS = { predicted: "#3e63dd", measured: "#f76808", component: "#9db1f0", rss: "#c2c8d0" };
  const FAILED = new Set(["oom", "crash", "error"]);
  // Parts of a prediction that overlap others (trainable ⊂ parameters) or are the total itself.
  const NOT_COMPONENTS = new Set(["predicted_peak_bytes", "trainable_parameter_bytes"]);
  const charts = {};
  const knownModels = new Set();

  const fmtMiB = (b) => (b == null ? "–" : `${(b / MiB).toFixed(1)} MiB`);
  const fmtPct = (p) => (p == null ? "–" : `${p > 0 ? "+" : ""}${p.toFixed(1)}%`);
  const byId = (id) => document.getElementById(id);

  function cell(text, className) {
    const td = document.createElement("td");
    td.textContent = text == null ? "–" : String(text);
    if (className) td.className = className;
    if (text != null) td.title = String(text);
    return td;
  }

  function rowOf(cells) {
    const tr = document.createElement("tr");
    tr.append(...cells);
    return tr;
  }

  async function getJSON(path) {
    const response = await fetch(path, { headers: { Accept: "application/json" } });
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`;
      try {
        message = (await response.json()).message || message;
      } catch {
        // Not a lab error body; keep the status line.
      }
      throw new Error(`${path}: ${message}`);
    }
    return response.json();
  }

  function filterParams() {
    const params = new URLSearchParams();
    for (const select of document.querySelectorAll("#filters select")) {
      if (select.value) params.set(select.name, select.value);
    }
    return params;
  }

  function setOptions(select, values) {
    const current = select.value;
    select.replaceChildren(new Option("all", ""), ...values.map(([value, label]) => new Option(label, value)));
    select.value = current;
  }

  function median(values) {
    const sorted = [...values].sort((a, b) => a - b);
    const mid = Math.floor(sorted.length / 2);
    return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  }

  function draw(id, config) {
    charts[id]?.destroy();
    charts[id] = new Chart(byId(id), config);
  }

  const mibAxis = (title) => ({
    beginAtZero: true,
    title: { display: true, text: title },
    ticks: { callback: (value) => `${value} MiB` },
  });

  function renderPeakChart(items) {
    // Items arrive newest first, so a group's prediction is that of its latest run.
    const groups = new Map();
    for (const r of items) {
      if (r.status !== "ok" || r.measured_peak_bytes == null) continue;
      const key = JSON.stringify([r.device_name, r.model, r.plan, r.backend]);
      if (!groups.has(key)) groups.set(key, { predicted: r.predicted_peak_bytes, measured: [] });
      groups.get(key).measured.push(r.measured_peak_bytes);
    }
    const keys = [...groups.keys()].sort();
    const labels = keys.map((key) => {
      const [device, model, plan, backend] = JSON.parse(key);
      return [device, `${model} · ${backend}`, plan.length > 40 ? `${plan.slice(0, 39)}…` : plan];
    });
    draw("peak-chart", {
      type: "bar",
      data: {
        labels,
        datasets: [
          { label: "predicted peak", data: keys.map((k) => groups.get(k).predicted / MiB), backgroundColor: COLORS.predicted },
          { label: "measured peak (median)", data: keys.map((k) => median(groups.get(k).measured) / MiB), backgroundColor: COLORS.measured },
        ],
      },
      options: {
        animation: false,
        maintainAspectRatio: false,
        scales: { y: mibAxis("peak above baseline") },
        plugins: {
          tooltip: {
            callbacks: {
              title: (ctx) => labels[ctx[0].dataIndex].join(" · "),
              label: (ctx) => `${ctx.dataset.label}: ${ctx.parsed.y.toFixed(1)} MiB`,
              afterBody: (ctx) => `${groups.get(keys[ctx[0].dataIndex]).measured.length} run(s)`,
            },
          },
        },
      },
    });
  }

  function errorClass(pct) {
    if (pct == null) return "num";
    const size = Math.abs(pct);
    return size > 25 ? "num err-high" : size > 10 ? "num err-mid" : "num";
  }

  function renderRuns(items) {
    const body = byId("runs").tBodies[0];
    body.replaceChildren(
      ...items.map((r) => {
        const tr = rowOf([
          cell(r.id, "num"),
          cell(r.received_at.replace("T", " ").slice(0, 19)),
          cell(`${r.device_name} (${r.device_model})`),
          cell(r.model),
          cell(r.backend),
          cell(r.plan, "plan"),
          cell(fmtMiB(r.predicted_peak_bytes), "num"),
          cell(fmtMiB(r.measured_peak_bytes), "num"),
          cell(fmtPct(r.error_pct), errorClass(r.error_pct)),
          cell(r.status, `status-${r.status}`),
        ]);
        tr.dataset.id = r.id;
        tr.addEventListener("click", () => selectRun(r.id).catch(showError));
        return tr;
      }),
    );
  }

  function renderFailed(items) {
    const failed = items.filter((r) => FAILED.has(r.status));
    byId("failed").tBodies[0].replaceChildren(
      ...failed.map((r) =>
        rowOf([
          cell(r.id, "num"),
          cell(r.received_at.replace("T", " ").slice(0, 19)),
          cell(`${r.device_name} (${r.device_model})`),
          cell(r.model),
          cell(r.plan, "plan"),
          cell(r.status, `status-${r.status}`),
          cell(r.error_kind),
          cell(r.error_message, "message"),
        ]),
      ),
    );
    byId("no-failures").hidden = failed.length > 0;
    return failed.length;
  }

  function facts(report, summary) {
    const { device, bundle, run = {}, memory = {}, error } = report;
    const steps = run.step_times_ms || [];
    const losses = (run.loss_curve || []).filter((x) => x != null);
    const pairs = [
      ["device", `${device.manufacturer} ${device.model} · ${device.os} ${device.os_version} · ${device.abi}`],
      ["device RAM", fmtMiB(device.ram_bytes)],
      ["app limit", fmtMiB(device.app_memory_limit_bytes)],
      ["bundle", `${bundle.name} (${bundle.manifest_sha256.slice(0, 12)})`],
      ["plan", summary.plan],
      ["status", summary.status],
      ["steps", run.steps == null ? null : `${run.steps} × batch ${run.batch_size} / ${run.micro_batches} micro`],
      ["step time", steps.length ? `${median(steps).toFixed(1)} ms median` : null],
      ["loss", losses.length ? `${losses[0].toFixed(4)} → ${losses[losses.length - 1].toFixed(4)}` : null],
      ["accuracy", run.accuracy_before == null ? null : `${run.accuracy_before} → ${run.accuracy_after ?? "–"}`],
      ["baseline", fmtMiB(memory.baseline_bytes)],
      ["peak RSS", fmtMiB(memory.peak_rss_bytes)],
      ["error", error ? `${error.kind}: ${error.message}` : null],
    ];
    return pairs.flatMap(([term, value]) => {
      const dt = document.createElement("dt");
      const dd = document.createElement("dd");
      dt.textContent = term;
      dd.textContent = value ?? "–";
      return [dt, dd];
    });
  }

  async function selectRun(id) {
    const { summary, report } = await getJSON(`${API}/reports/${id}`);
    for (const tr of byId("runs").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.id === String(id));
    byId("breakdown-title").textContent = `#${id} · ${summary.device_name} · ${summary.model} · ${summary.plan}`;
    const predicted = report.bundle.predicted || {};
    const components = Object.keys(predicted).filter((k) => !NOT_COMPONENTS.has(k));
    const bars = [
      ...components.map((k) => [k.replace(/_bytes$/, "").replaceAll("_", " "), predicted[k], COLORS.component]),
      ["predicted peak", report.bundle.predicted_peak_bytes, COLORS.predicted],
      ["measured peak", summary.measured_peak_bytes, COLORS.measured],
      ["peak RSS (process)", summary.peak_rss_bytes, COLORS.rss],
    ];
    draw("breakdown-chart", {
      type: "bar",
      data: {
        labels: bars.map((b) => b[0]),
        datasets: [{ label: "MiB", data: bars.map((b) => (b[1] == null ? null : b[1] / MiB)), backgroundColor: bars.map((b) => b[2]) }],
      },
      options: {
        indexAxis: "y",
        animation: false,
        maintainAspectRatio: false,
        scales: { x: mibAxis("MiB") },
        plugins: { legend: { display: false } },
      },
    });
    byId("breakdown-facts").replaceChildren(...facts(report, summary));
  }

  function showError(error) {
    const box = byId("load-error");
    box.textContent = `Could not load: ${error.message}`;
    box.hidden = false;
  }

  async function refresh() {
    const params = filterParams();
    byId("csv-link").href = `${API}/reports.csv${params.size ? `?${params}` : ""}`;
    params.set("limit", String(PAGE));
    const [page, devices] = await Promise.all([getJSON(`${API}/reports?${params}`), getJSON(`${API}/devices`)]);
    const items = page.items;
    items.forEach((r) => knownModels.add(r.model));
    setOptions(document.querySelector("select[name=device]"), devices.map((d) => [d.device_id, d.name]));
    setOptions(document.querySelector("select[name=model]"), [...knownModels].sort().map((m) => [m, m]));
    renderPeakChart(items);
    renderRuns(items);
    const failed = renderFailed(items);
    const shown = page.total > items.length ? ` (latest ${items.length} shown)` : "";
    byId("totals").textContent = page.total
      ? `${page.total} runs${shown} · ${devices.length} devices · ${failed} failed`
      : "No reports yet: register a device (memwall lab register) and post a run.";
    byId("runs-count").textContent = `(${items.length})`;
    const first = items.find((r) => r.status === "ok") || items[0];
    if (first) await selectRun(first.id);
    byId("load-error").hidden = true;
    document.body.dataset.loaded = "true";
  }

  document.addEventListener("DOMContentLoaded", () => {
    byId("filters").addEventListener("change", () => refresh().catch(showError));
    refresh().catch(showError);
  });
})();
