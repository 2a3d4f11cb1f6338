// Keyboard use of the query pages: letter/digit keys pick answers, Enter submits.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var form = document.getElementById("answer");
  if (!form) { return; }
  var kind = form.dataset.kind;
  var firstRank = form.querySelector("input.rank");
  if (firstRank) { firstRank.focus(); }
  var firstLikert = form.querySelector("tr.axis input[type=radio]");
  if (firstLikert) { firstLikert.focus(); }

  function check(selector) {
    var input = form.querySelector(selector);
    if (input) { input.checked = true; input.focus(); return true; }
    return false;
  }

  form.addEventListener("submit", function () {
    var button = document.getElementById("submit");
    setTimeout(function () { button.disabled = true; }, 0);  // one click, one submit (the server is idempotent anyway)
  });

  document.addEventListener("keydown", function (event) {
    var target = event.target;
    var typing = target.tagName === "TEXTAREA" || (target.tagName === "INPUT" && target.type !== "radio" && target.type !== "checkbox");
    if (event.key === "Enter") {
      if (target.tagName === "TEXTAREA" && !event.ctrlKey) { return; }
      if (target.tagName === "BUTTON") { return; }
      event.preventDefault();
      form.requestSubmit();
      return;
    }
    if (typing || event.ctrlKey || event.altKey || event.metaKey) { return; }
    var key = event.key.toLowerCase();
    var done = false;
    if (kind === "likert" && /^[1-7]$/.test(key) && target.type === "radio") {
      done = check('input[name="' + target.name + '"][value="' + key + '"]');
      var row = target.closest("tr.axis");
      var next = row && row.nextElementSibling;
      if (done && next) { next.querySelector("input[type=radio]").focus(); }
    } else if (kind === "pairwise" && (key === "a" || key === "b")) {
      done = check('input[name="choice"][data-key="' + key + '"]');
    } else if (kind === "pairwise" && /^[1-9]$/.test(key)) {
      done = check('input[name="confidence"][data-key="' + key + '"]');
    } else if (kind === "best_of_k" && /^[1-9]$/.test(key)) {
      done = check('input[name="choice"][data-key="' + key + '"]');
    }
    if (done) { event.preventDefault(); }
  });
});
