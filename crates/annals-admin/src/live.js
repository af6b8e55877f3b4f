// The live feed: new events as they commit, from the server-sent events of live/events
// (relative: the pages may be mounted under a prefix).
// Every value goes into the page as text (textContent), never as markup.
"use strict";
(function () {
  const table = document.getElementById("live");
  const state = document.getElementById("state");
  const toggle = document.getElementById("toggle");
  const params = new URLSearchParams(location.search);
  params.set("from", table.dataset.from);
  let paused = false;
  let held = [];
  function cell(row, text, href) {
    const td = row.insertCell();
    if (href) {
      const a = document.createElement("a");
      a.href = href;
      a.textContent = text;
      td.appendChild(a);
    } else {
      td.textContent = text;
    }
  }
  function show(e) {
    const row = table.insertRow(1);
    row.className = "event";
    cell(row, e.position);
    cell(row, e.stream, "stream?" + new URLSearchParams({ name: e.stream }));
    cell(row, String(e.version), "event?" + new URLSearchParams({ stream: e.stream, version: e.version }));
    cell(row, e.type);
    cell(row, e.recorded);
  }
  const source = new EventSource("live/events?" + params);
  source.addEventListener("event", function (m) {
    const e = JSON.parse(m.data);
    if (paused) {
      held.push(e);
      toggle.textContent = "Resume (" + held.length + " new)";
    } else {
      show(e);
    }
  });
  source.onopen = function () { state.textContent = "live"; };
  source.onerror = function () { state.textContent = "reconnecting"; };
  toggle.addEventListener("click", function () {
    paused = !paused;
    toggle.textContent = paused ? "Resume" : "Pause";
    if (!paused) { held.forEach(show); held = []; }
  });
})();
