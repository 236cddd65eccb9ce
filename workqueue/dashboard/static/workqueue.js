// The live parts of workqueue's pages. Everything from a job (descriptions, progress messages,
// errors, results) goes into the page as text (textContent), never as HTML.
(function () {
  "use strict";

  var config = document.getElementById("wq-config").dataset;
  var READ_ONLY = config.readOnly === "1";
  var POLL = parseInt(config.poll, 10) || 2000;
  var SVG = "http://www.w3.org/2000/svg";

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") { node.textContent = attrs[k]; } else { node.setAttribute(k, attrs[k]); }
    });
    (children || []).forEach(function (c) { if (c) { node.appendChild(c); } });
    return node;
  }

  function svg(tag, attrs, text) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function cell(text, attrs) { return el("td", Object.assign({ text: text === null || text === undefined ? "-" : String(text) }, attrs || {})); }

  function seconds(s) {
    if (s === null || s === undefined) { return "-"; }
    if (s < 1) { return Math.round(s * 1000) + " ms"; }
    if (s < 120) { return s.toFixed(1) + " s"; }
    return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
  }

  function bar(fraction, label, title) {
    var pct = Math.max(0, Math.min(100, fraction * 100));
    return el("div", { "class": "progress wq-progress", title: title || "" }, [
      el("div", { "class": "progress-bar", role: "progressbar", style: "width: " + pct.toFixed(1) + "%",
                  "aria-valuenow": pct.toFixed(0), "aria-valuemin": "0", "aria-valuemax": "100" }),
      el("span", { "class": "wq-progress-label", text: label })
    ]);
  }

  function jobLink(id) { return el("a", { href: "/jobs/" + encodeURIComponent(id), text: id }); }

  // A POST form with the CSRF token: the outcome comes back as a flashed message on reload.
  function action(url, label, style, fields) {
    if (READ_ONLY) { return null; }
    var form = el("form", { method: "post", action: url, "class": "d-inline wq-action" }, [
      el("input", { type: "hidden", name: "csrf_token", value: config.csrf })
    ]);
    Object.keys(fields || {}).forEach(function (k) { form.appendChild(el("input", { type: "hidden", name: k, value: fields[k] })); });
    form.appendChild(el("button", { type: "submit", "class": "btn btn-sm " + style, text: label }));
    return form;
  }

  function fill(tbody, rows, columns, empty) {
    tbody.textContent = "";
    if (!rows.length) { tbody.appendChild(el("tr", {}, [cell(empty, { colspan: String(columns) })])); }
    rows.forEach(function (row) { tbody.appendChild(row); });
  }

  function poll(url, render, every) {
    var run = function () {
      if (typeof AUTOREFRESH_FLAG !== "undefined" && !AUTOREFRESH_FLAG) { setTimeout(run, every); return; }
      fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then(function (r) { if (!r.ok) { throw new Error(url + ": " + r.status); } return r.json(); })
        .then(render)
        .catch(function (e) { console.warn(e); })
        .then(function () { setTimeout(run, every); });
    };
    run();
  }

  // Live work ----------------------------------------------------------------------------------
  function renderLive(data) {
    document.getElementById("running-count").textContent = data.jobs.length + " running";
    fill(document.querySelector("#running-jobs tbody"), data.jobs.map(function (j) {
      var p = j.progress;
      var progress = p ? bar(p.percent / 100, p.percent.toFixed(0) + "% " + (p.message || ""), p.done + " of " + p.total) : el("span", { "class": "text-muted", text: "no progress reported" });
      return el("tr", { "data-job-id": j.id }, [
        el("td", {}, [jobLink(j.id)]), cell(j.task), cell(j.queue), cell(j.worker), cell(seconds(j.elapsed)),
        el("td", {}, [progress]),
        el("td", { "class": "wq-action" }, [action("/jobs/" + encodeURIComponent(j.id) + "/stop", "Stop", "btn-outline-danger")])
      ]);
    }), 7, "No job is running.");

    var busy = data.workers.filter(function (w) { return w.state === "busy"; }).length;
    document.getElementById("workers-count").textContent = busy + " busy, " + (data.workers.length - busy) + " idle";
    // Consumers started with --workers MIN-MAX: their size, bounds and last scaling, and why.
    var pools = document.getElementById("scaling-pools");
    if (pools) {
      pools.textContent = "";
      (data.pools || []).forEach(function (p) {
        pools.appendChild(el("li", { text: "pool " + p.name + ": " + p.workers + " workers (" + p.bounds + "), " +
          p.busy + " busy, " + p.waiting + " waiting" + (p.scaled ? "; " + p.scaled : "") }));
      });
    }
    fill(document.querySelector("#live-workers tbody"), data.workers.map(function (w) {
      var stopUrl = "/workers/" + encodeURIComponent(w.name) + "/stop";
      return el("tr", { "data-worker": w.name }, [
        cell(w.name), cell(w.queues.join(", ")),
        el("td", {}, [el("span", { "class": "badge " + (w.state === "busy" ? "badge-success" : "badge-secondary"),
          text: w.state + (w.slots ? " " + w.slots : ""), title: w.slots ? "jobs running / jobs it runs at once" : "" })]),
        el("td", {}, [w.current_job ? jobLink(w.current_job) : el("span", { text: "-" })]),
        cell(w.finished), cell(w.failed),
        el("td", {}, [bar(w.utilisation, (w.utilisation * 100).toFixed(0) + "% busy", "over " + seconds(w.age))]),
        el("td", { "class": "wq-action text-nowrap" }, [
          action(stopUrl, "Stop", "btn-outline-warning"),
          action(stopUrl, "Stop now", "btn-outline-danger", { now: "1" })
        ])
      ]);
    }), 8, "No worker is running. Start some: python consumer_main.py");
    if (data.queues) { renderQueues(data.queues); }
  }

  // Queues: paused or not, waiting jobs per priority level, pause/resume ----------------------
  function renderQueues(queues) {
    var held = queues.filter(function (q) { return q.paused; }).length;
    document.getElementById("queues-count").textContent = queues.length + " queues" + (held ? ", " + held + " paused" : "");
    fill(document.querySelector("#live-queues tbody"), queues.map(function (q) {
      var base = "/queues/" + encodeURIComponent(q.name);
      var levels = q.by_priority.map(function (p) { return p.name + " " + p.count; }).join(", ");
      return el("tr", { "data-queue": q.name }, [
        cell(q.name),
        el("td", {}, [el("span", { "class": "badge " + (q.paused ? "badge-warning" : "badge-success"), text: q.paused ? "paused" : "running" })]),
        cell(q.waiting), cell(levels || "-"),
        el("td", { "class": "wq-action" }, [
          q.paused ? action(base + "/resume", "Resume", "btn-outline-success") : action(base + "/pause", "Pause", "btn-outline-warning")
        ])
      ]);
    }), 5, "No queue yet.");
  }

  // History ------------------------------------------------------------------------------------
  var W = 600, H = 200, LEFT = 40, BOTTOM = 20, TOP = 10;
  var COLOURS = ["#007bff", "#fd7e14", "#6f42c1", "#20c997", "#e83e8c", "#6c757d"];

  function axes(chart, minutes, max) {
    chart.textContent = "";
    var plotH = H - BOTTOM - TOP;
    chart.appendChild(svg("line", { x1: LEFT, y1: H - BOTTOM, x2: W, y2: H - BOTTOM, stroke: "#999" }));
    chart.appendChild(svg("text", { x: LEFT - 4, y: TOP + 8, "text-anchor": "end", "font-size": 11 }, String(max)));
    chart.appendChild(svg("text", { x: LEFT - 4, y: H - BOTTOM, "text-anchor": "end", "font-size": 11 }, "0"));
    var step = (W - LEFT) / minutes.length;
    minutes.forEach(function (m, i) {
      if (i % 10 === 0 && i < minutes.length - 5) {
        var t = new Date(m * 1000);
        var label = ("0" + t.getHours()).slice(-2) + ":" + ("0" + t.getMinutes()).slice(-2);
        chart.appendChild(svg("text", { x: LEFT + i * step, y: H - 4, "font-size": 11 }, label));
      }
    });
    return { step: step, y: function (v) { return H - BOTTOM - (max ? v / max * plotH : 0); } };
  }

  function renderEnded(data) {
    var chart = document.getElementById("chart-ended");
    var totals = data.finished.map(function (f, i) { return f + data.failed[i]; });
    var max = Math.max.apply(null, totals.concat([1]));
    var a = axes(chart, data.minutes, max);
    data.minutes.forEach(function (m, i) {
      var x = LEFT + i * a.step + 1, w = Math.max(1, a.step - 2);
      var yFinished = a.y(data.finished[i]), yTop = a.y(totals[i]);
      var group = svg("g", {});
      group.appendChild(svg("title", {}, new Date(m * 1000).toLocaleTimeString() + ": " + data.finished[i] + " finished, " + data.failed[i] + " failed"));
      group.appendChild(svg("rect", { x: x, y: yFinished, width: w, height: H - BOTTOM - yFinished, "class": "wq-finished-bar" }));
      group.appendChild(svg("rect", { x: x, y: yTop, width: w, height: yFinished - yTop, "class": "wq-failed-bar" }));
      chart.appendChild(group);
    });
  }

  function renderBacklog(data) {
    var chart = document.getElementById("chart-backlog"), legend = document.getElementById("backlog-legend");
    var names = Object.keys(data.queues);
    var max = 1;
    names.forEach(function (n) { data.queues[n].backlog.forEach(function (v) { if (v !== null && v > max) { max = v; } }); });
    var a = axes(chart, data.minutes, max);
    legend.textContent = "";
    names.forEach(function (name, k) {
      var colour = COLOURS[k % COLOURS.length], points = [];
      data.queues[name].backlog.forEach(function (v, i) {
        if (v !== null) { points.push((LEFT + (i + 0.5) * a.step).toFixed(1) + "," + a.y(v).toFixed(1)); }
      });
      var line = svg("polyline", { points: points.join(" "), fill: "none", stroke: colour, "stroke-width": 2 });
      line.appendChild(svg("title", {}, name));
      chart.appendChild(line);
      points.forEach(function (xy) {  // a marker per sample, so a lone sample shows too
        var at = xy.split(",");
        chart.appendChild(svg("circle", { cx: at[0], cy: at[1], r: 2.5, fill: colour }));
      });
      legend.appendChild(el("span", { "class": "wq-key", style: "border-color: " + colour, text: name }));
    });
  }

  function renderTasks(tasks) {
    fill(document.querySelector("#task-stats tbody"), tasks.map(function (t) {
      return el("tr", {}, [cell(t.queue), cell(t.task), cell(t.finished), cell(t.failed), cell(t.running),
        cell(t.throughput.toFixed(2)), cell(seconds(t.run_p50)), cell(seconds(t.run_p95)), cell(seconds(t.wait_p50))]);
    }), 9, "No job has ended in the last hour.");
  }

  // One job ------------------------------------------------------------------------------------
  function renderJob(job) {
    document.querySelectorAll("#job-page [data-field]").forEach(function (node) {
      var value = job[node.dataset.field];
      if (node.hasAttribute("data-json")) { node.textContent = value === null ? "-" : JSON.stringify(value, null, 2); }
      else if (node.dataset.field === "elapsed") { node.textContent = seconds(value); }
      else { node.textContent = value === null || value === undefined ? "-" : String(value); }
    });
    var progress = document.getElementById("job-progress");
    progress.textContent = "";
    var p = job.progress;
    progress.appendChild(p ? bar(p.percent / 100, p.percent.toFixed(0) + "% " + (p.message || ""), p.done + " of " + p.total) : el("span", { text: "-" }));
    document.getElementById("stop-job-form").hidden = !job.can_stop;
    document.getElementById("requeue-job-form").hidden = !job.can_requeue;
  }

  // Enqueue form: show the selected task's fields only --------------------------------------------
  function enqueueForm() {
    var select = document.getElementById("task");
    var show = function () {
      document.querySelectorAll(".wq-task-fields").forEach(function (f) { f.hidden = f.dataset.task !== select.value; });
    };
    select.addEventListener("change", show);
    show();
  }

  if (document.getElementById("running-jobs")) {
    poll("/api/live", renderLive, POLL);
    poll("/api/history?minutes=60", function (data) { renderEnded(data); renderBacklog(data); renderTasks(data.tasks); }, 5 * POLL);
  }
  var jobPage = document.getElementById("job-page");
  if (jobPage) { poll("/api/jobs/" + encodeURIComponent(jobPage.dataset.jobId), renderJob, POLL); }
  if (document.getElementById("enqueue-form")) { enqueueForm(); }
})();
