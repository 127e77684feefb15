// qjob console: refreshes the page's content every few seconds (the
// `data-refresh` seconds of <main>; pages with a button per row have
// none), unless the page is hidden, text is selected or a form field has
// the focus. Without this script, the pages work as they are.
(function () {
  "use strict";
  var main = document.querySelector("main[data-refresh]");
  if (!main || !window.fetch || !window.DOMParser) {
    return;
  }
  var every = Number(main.getAttribute("data-refresh")) * 1000;
  if (!(every >= 1000)) {
    return;
  }
  function busy() {
    var focused = document.activeElement;
    var selection = window.getSelection && window.getSelection();
    return document.hidden ||
      (selection && !selection.isCollapsed) ||
      (focused && main.contains(focused) && /^(INPUT|SELECT|TEXTAREA|BUTTON)$/.test(focused.tagName));
  }
  var pending = false;
  function refresh() {
    // One refresh at a time: a slow page is not asked for again meanwhile.
    if (pending || busy()) {
      return;
    }
    pending = true;
    fetch(window.location.href, { credentials: "same-origin", headers: { "X-Requested-With": "qjob-refresh" } })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (text) {
        if (text === null || busy()) {
          return;
        }
        var next = new DOMParser().parseFromString(text, "text/html").querySelector("main");
        if (next) {
          main.innerHTML = next.innerHTML;
        }
      })
      .catch(function () { /* the next refresh tries again */ })
      .then(function () { pending = false; });
  }
  window.setInterval(refresh, every);
})();
