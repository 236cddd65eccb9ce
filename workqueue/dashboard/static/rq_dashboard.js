// rq-dashboard's page scripts (its dashboard.js, queues.js and jobs.js), rewritten as one static
// file. rq-dashboard rendered them as Jinja templates without escaping and built its tables with
// underscore templates (which need eval); here every value comes from a data attribute or a JSON
// reply and goes into the page as text (textContent) or as an encoded URL segment, never as HTML.
(function ($) {
  "use strict";

  var config = document.getElementById("wq-config").dataset;
  var PREFIX = config.rqPrefix, INSTANCE = config.instance, READ_ONLY = config.readOnly === "1";
  var POLL = parseInt(config.poll, 10) || 2000;
  window.AUTOREFRESH_FLAG = 1;  // also read by workqueue.js

  $.ajaxSetup({ headers: { "X-CSRFToken": config.csrf, Accept: "application/json" } });
  $("#autorefresh-switch").change(function () { window.AUTOREFRESH_FLAG = $(this).prop("checked") ? 1 : 0; });

  var enc = encodeURIComponent;

  function jobsView(queue, registry, perPage, order, page) {
    return PREFIX + INSTANCE + "/view/jobs/" + enc(queue) + "/" + enc(registry) + "/" + enc(perPage) + "/" +
      enc(order) + "/" + enc(page);
  }

  function jobsData(queue, registry, perPage, order, page) {
    return PREFIX + INSTANCE + "/data/jobs/" + enc(queue) + "/" + enc(registry) + "/" + enc(perPage) + "/" +
      enc(order) + "/" + enc(page) + ".json";
  }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") { node.textContent = attrs[k]; } else { node.setAttribute(k, attrs[k]); }
    });
    (children || []).forEach(function (c) { if (c) { node.appendChild(c); } });
    return node;
  }

  function text(value) { return value === null || value === undefined ? "" : String(value); }

  function relative(isoDate) {
    if (!isoDate) { return ""; }
    var tzo = new Date().getTimezoneOffset();
    return Date.create(isoDate).rewind({ minutes: tzo }).relative();
  }

  // A POST form with the CSRF token (our actions answer with a page and a flashed message).
  function form(url, label, style, disabled) {
    if (READ_ONLY) { return null; }
    var button = el("button", { type: "submit", "class": "btn btn-sm " + style, text: label });
    if (disabled) { button.disabled = true; }
    return el("form", { method: "post", action: url, "class": "d-inline" }, [
      el("input", { type: "hidden", name: "csrf_token", value: config.csrf }), button
    ]);
  }

  function modalConfirm(action, callback) {
    $("#confirmation-modal").modal("show");
    $("#confirmation-modal-action").text(action);
    $("#confirmation-modal-yes").off("click").on("click", function () {
      callback();
      $("#confirmation-modal").modal("hide");
    });
    $("#confirmation-modal-no").off("click").on("click", function () { $("#confirmation-modal").modal("hide"); });
  }

  // Reload a table now, then every POLL ms while autorefresh is on.
  function refreshLoop(reload) {
    var run = function () {
      if (!window.AUTOREFRESH_FLAG) { setTimeout(run, POLL); return; }
      reload(function () { setTimeout(run, POLL); });
    };
    $(run);
    $("#refresh-button").click(function () { reload(function () {}); });
  }

  // Queues ------------------------------------------------------------------------------------------
  var REGISTRIES = [["count", "queued"], ["deferred_job_registry_count", "deferred"],
    ["scheduled_job_registry_count", "scheduled"], ["started_job_registry_count", "started"],
    ["finished_job_registry_count", "finished"], ["failed_job_registry_count", "failed"],
    ["canceled_job_registry_count", "canceled"]];

  function queueRow(q) {
    var cells = [el("td", { text: q.name })];
    REGISTRIES.forEach(function (r) {
      var link = el("a", { href: jobsView(q.name, r[1], 8, "asc", 1), text: text(q[r[0]]) });
      cells.push(el("td", { "class": r[1] === "failed" || r[1] === "canceled" ? "failed" : "narrow" }, [link]));
    });
    cells.push(el("td", { "class": "narrow wq-action text-nowrap" }, [
      form("/queues/" + enc(q.name) + "/cancel", "Cancel queued", "btn-outline-danger", !q.count),
      form("/queues/" + enc(q.name) + "/requeue-failed", "Requeue failed", "btn-outline-warning",
           !q.failed_job_registry_count)
    ]));
    return el("tr", { "data-role": "queue", "data-queue": q.name }, cells);
  }

  var queuesBody = document.querySelector("table#queues tbody");
  if (queuesBody) {
    refreshLoop(function (done) {
      $.getJSON(PREFIX + INSTANCE + "/data/queues.json").done(function (data) {
        queuesBody.textContent = "";
        data.queues.forEach(function (q) { queuesBody.appendChild(queueRow(q)); });
        if (!data.queues.length) {
          queuesBody.appendChild(el("tr", {}, [el("td", { colspan: "9", text: "No queues." })]));
        }
      }).always(done);
    });
  }

  // Jobs --------------------------------------------------------------------------------------------
  var jobsPage = document.getElementById("jobs-page");
  if (jobsPage) {
    var view = jobsPage.dataset;
    var perPage = parseInt(view.perPage, 10), page = parseInt(view.page, 10);
    var jobsBody = document.querySelector("table#jobs tbody"), pages = document.querySelector("#page-selection ul");

    var post = function (url, row) {
      $.post(url).always(function () { $(row).fadeOut("fast", function () { $(row).remove(); }); });
    };

    var jobRow = function (job) {
      var first = el("td", {}, [
        el("span", { "class": "description ellipsify" + (job.unreadable ? " wq-unreadable" : ""),
                     text: text(job.description) }),
        el("div", { "class": "job_id" }, [el("a", { href: "/jobs/" + enc(job.id), text: job.id })])
      ]);
      if (job.exc_info) {
        first.appendChild(el("span", { "class": "end_date", text: "Failed " + relative(job.ended_at) }));
        first.appendChild(el("pre", { "class": "exc_info", text: text(job.exc_info) }));
      }
      if (job.scheduled_for) {  // a delayed job: when it is due
        first.appendChild(el("span", { "class": "end_date wq-scheduled-for", text: "Scheduled for " + job.scheduled_for }));
      }
      if (job.waiting_for) {  // a job enqueued with --after: what it waits for
        first.appendChild(el("span", { "class": "end_date wq-waiting-for",
          text: "Waits for " + job.waiting_for.jobs.length + " job(s)" +
                (job.waiting_for.batches.length ? " of batch " + job.waiting_for.batches.join(", ") : "") }));
      }
      var row = el("tr", { "data-role": "job", "data-job-id": job.id }, [first,
        el("td", {}, [el("span", { "class": "creation_date", text: relative(job.created_at) })])]);
      var actions = el("td", { "class": "actions narrow" });
      if (!READ_ONLY && job.exc_info && !job.unreadable) {
        var requeue = el("a", { href: "#", "data-role": "requeue-job-btn",
                                "class": "btn btn-outline-warning btn-sm btn-block", text: "Requeue" });
        $(requeue).click(function (e) { e.preventDefault(); post(PREFIX + "job/" + enc(job.id) + "/requeue", row); });
        actions.appendChild(requeue);
      }
      if (!READ_ONLY && view.enableDelete === "1") {
        var remove = el("a", { href: "#", "data-role": "delete-job-btn", "class": "btn btn-outline-danger btn-sm",
                               text: "Delete" });
        $(remove).click(function (e) {
          e.preventDefault();
          modalConfirm("delete job", function () { post(PREFIX + "job/" + enc(job.id) + "/delete", row); });
        });
        actions.appendChild(remove);
      }
      row.appendChild(actions);
      return row;
    };

    var pageLink = function (label, number, disabled, active) {
      var href = disabled ? "#" : jobsView(view.queue, view.registry, perPage, view.order, number);
      return el("li", { "class": "page-item" + (disabled ? " disabled" : "") + (active ? " active" : "") },
        [el("a", { "class": "page-link", href: href, text: label })]);
    };

    var renderPages = function (p) {
      pages.textContent = "";
      var last = p.num_pages;
      pages.appendChild(pageLink("\u00ab", 1, page <= 1 || !last));
      pages.appendChild(pageLink("\u2039", page - 1, page <= 1 || !last));
      (p.pages_in_window || []).forEach(function (w) {
        pages.appendChild(pageLink(String(w.number), w.number, false, w.number === page));
      });
      pages.appendChild(pageLink("\u203a", page + 1, page >= last));
      pages.appendChild(pageLink("\u00bb", last, page >= last || !last));
    };

    refreshLoop(function (done) {
      $.getJSON(jobsData(view.queue, view.registry, perPage, view.order, page)).done(function (data) {
        jobsBody.textContent = "";
        data.jobs.forEach(function (job) { jobsBody.appendChild(jobRow(job)); });
        if (!data.jobs.length) { jobsBody.appendChild(el("tr", {}, [el("td", { colspan: "3", text: "No jobs." })])); }
        renderPages(data.pagination);
      }).always(done);
    });

    $("#empty-btn, #compact-btn, #requeue-all-btn").click(function (e) {
      e.preventDefault();
      var href = this.getAttribute("href"), what = this.dataset.confirm;
      modalConfirm(what, function () { $.post(href); });
    });

    var go = function () {
      var queue = $("#select-queue").val() || view.queue;
      window.location.href = jobsView(queue, $("#select-registry").val(), $("#select-per-page").val() || perPage,
                                      $("#select-sort-order").val(), 1);
    };
    $("#select-queue").on("click", function () { $(this).val(""); });
    $("#select-queue").on("mouseleave", function () { if (!$(this).val()) { $(this).val(view.queue); } });
    $("#select-queue, #select-registry, #select-sort-order, #select-per-page").change(go);
  }
})(jQuery);
