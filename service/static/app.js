// Communiqué web UI: small progressive enhancements; every page works without them.
(function () {
  "use strict";

  // Confirmation before anything irreversible (forms marked data-confirm).
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var message = form.getAttribute && form.getAttribute("data-confirm");
    if (message && !window.confirm(message)) { event.preventDefault(); }
  });

  function debounce(fn, ms) {
    var timer = null;
    return function () { clearTimeout(timer); timer = setTimeout(fn, ms); };
  }

  // Live preview beside the release editor: the whole form (kicker, title, highlights, dateline,
  // body, about, press contacts) as the email shows it.
  document.querySelectorAll("[data-live-preview]").forEach(function (textarea) {
    var target = document.getElementById(textarea.getAttribute("data-live-preview"));
    var url = textarea.getAttribute("data-preview-url");
    var form = textarea.form;
    if (!target || !url) { return; }
    var refresh = debounce(function () {
      var body;
      if (form) {
        body = new FormData(form);
      } else {
        body = new FormData();
        body.append("body", textarea.value);
        var token = document.querySelector("input[name=csrf_token]");
        if (token) { body.append("csrf_token", token.value); }
      }
      fetch(url, { method: "POST", body: body, credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : ""; })
        .then(function (html) { target.innerHTML = html; })
        .catch(function () { /* the next keystroke tries again */ });
    }, 400);
    (form || textarea).addEventListener("input", refresh);
    (form || textarea).addEventListener("change", refresh);
    refresh();
  });

  // Live recipient count on the schedule form.
  document.querySelectorAll("[data-audience-count]").forEach(function (output) {
    var form = output.closest("form");
    var url = output.getAttribute("data-audience-count");
    var refresh = debounce(function () {
      var params = new URLSearchParams();
      form.querySelectorAll("input[name=lists]:checked").forEach(function (box) { params.append("lists", box.value); });
      ["language", "country", "media_type", "tag"].forEach(function (name) {
        var field = form.elements[name];
        if (field && field.value) { params.append(name, field.value); }
      });
      fetch(url + "?" + params.toString(), { credentials: "same-origin" })
        .then(function (r) { return r.json(); })
        .then(function (data) { output.textContent = data.text; output.setAttribute("data-count", data.count); });
    }, 250);
    form.addEventListener("input", refresh);
    form.addEventListener("change", refresh);
    refresh();
  });

  // The countdown of a web "send now" (its Undo button works until the blast starts).
  document.querySelectorAll("[data-countdown]").forEach(function (el) {
    var left = parseInt(el.getAttribute("data-countdown"), 10);
    var tick = function () {
      left -= 1;
      if (left <= 0) { window.location.reload(); return; }
      el.textContent = left;
      setTimeout(tick, 1000);
    };
    if (left > 0) { setTimeout(tick, 1000); }
  });

  // Live blast progress (dashboard rows and the blast page), polling a small JSON endpoint.
  var live = document.querySelectorAll("[data-progress-url]");
  if (live.length) {
    var poll = function () {
      var pending = 0;
      live.forEach(function (box) {
        var status = box.getAttribute("data-status");
        if (["finished", "cancelled", "expired"].indexOf(status) >= 0) { return; }
        pending += 1;
        fetch(box.getAttribute("data-progress-url"), { credentials: "same-origin" })
          .then(function (r) { return r.json(); })
          .then(function (data) {
            var was = box.getAttribute("data-status");
            box.setAttribute("data-status", data.status);
            var done = data.counts.sent + data.counts.failed + data.counts.bounced;
            box.querySelectorAll("[data-count]").forEach(function (el) {
              var key = el.getAttribute("data-count");
              if (key in data.counts) { el.textContent = data.counts[key]; }
            });
            box.querySelectorAll("[data-field=rate]").forEach(function (el) { el.textContent = data.rate; });
            box.querySelectorAll("[data-field=recipients]").forEach(function (el) { el.textContent = data.recipients; });
            box.querySelectorAll("[data-field=eta]").forEach(function (el) {
              el.textContent = data.eta_label || "—";
            });
            box.querySelectorAll("[data-field=status]").forEach(function (el) {
              el.textContent = data.status_label; el.className = "badge badge-" + data.status;
            });
            box.querySelectorAll("progress").forEach(function (el) {
              el.max = Math.max(data.recipients, 1); el.value = done;
            });
            if (was !== data.status && box.hasAttribute("data-reload-on-change")) { window.location.reload(); }
          })
          .catch(function () { /* a missed poll is retried on the next tick */ });
      });
      if (pending) { setTimeout(poll, 1500); }
    };
    setTimeout(poll, 1000);
  }
})();
