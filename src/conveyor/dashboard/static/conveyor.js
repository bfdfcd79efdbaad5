// Conveyor dashboard: live regions over server-sent events, confirmations, select-all.
// Loaded as a file (the Content-Security-Policy allows no inline script).
"use strict";

(function () {
  // Live region: <section id="live" data-live="PAGE"> is replaced by what /live sends.
  const region = document.querySelector("[data-live]");
  let source = null;

  function connect() {
    if (!region || source) return;
    const params = new URLSearchParams(window.location.search);
    params.set("page", region.dataset.live);
    if (region.dataset.liveTask) params.set("task_id", region.dataset.liveTask);
    // What is shown already: the stream sends the block only once it differs.
    if (region.dataset.liveDigest) params.set("digest", region.dataset.liveDigest);
    source = new EventSource((document.body.dataset.root || "") + "/live?" + params.toString());
    source.addEventListener("open", function () {
      region.dataset.streaming = "1";
    });
    source.addEventListener("live", function (event) {
      // Rows chosen in a live table stay chosen when it is redrawn.
      const chosen = new Set();
      region.querySelectorAll("input[name=id]:checked").forEach(function (box) {
        chosen.add(box.value);
      });
      region.innerHTML = event.data;
      region.querySelectorAll("input[name=id]").forEach(function (box) {
        if (chosen.has(box.value)) box.checked = true;
      });
      region.dataset.liveDigest = event.lastEventId;
      region.dataset.updated = String(Date.now());
    });
  }

  function disconnect() {
    if (source) {
      source.close();
      source = null;
      delete region.dataset.streaming;
    }
  }

  // No updates while the tab is hidden; catch up when it is shown again.
  document.addEventListener("visibilitychange", function () {
    if (document.hidden) disconnect();
    else connect();
  });
  if (!document.hidden) connect();

  // Forms that change things ask first.
  document.addEventListener("submit", function (event) {
    const form = event.target;
    const button = event.submitter;
    let question = (button && button.dataset.confirm) || form.dataset.confirm;
    if (button && button.hasAttribute("data-confirm-selection")) {
      // A bulk button: "Pause {n} selected queue(s)?"
      const count = form.querySelectorAll("input[name=id]:checked").length;
      if (count === 0) {
        event.preventDefault();
        window.alert("Select rows first.");
        return;
      }
      question = button.dataset.confirmSelection.replace("{n}", String(count));
    } else if (form.hasAttribute("data-confirm-selection")) {
      const count = form.querySelectorAll("input[name=id]:checked").length;
      const noun = form.dataset.noun || "dead letter";
      if (count === 0) {
        event.preventDefault();
        window.alert("Select " + noun + "s first.");
        return;
      }
      let verb = button && button.value === "purge" ? "Delete" : "Replay";
      if (button && button.dataset.verb) verb = button.dataset.verb;
      question = verb + " " + count + " selected " + noun + "(s)?";
    }
    if (question && !window.confirm(question)) event.preventDefault();
  });

  // The header checkbox selects every row.
  document.addEventListener("change", function (event) {
    const box = event.target;
    if (!box.matches("[data-select-all]")) return;
    box.closest("form").querySelectorAll("input[name=id]").forEach(function (row) {
      row.checked = box.checked;
    });
  });
})();
