// Live updates for the pgflow dashboard: every 2 s, fetch the page's content block
// (?fragment=live) and swap in each element marked data-live, unless the reader is typing
// in it. Pages work without this script; it only keeps them current.
(function () {
  "use strict";
  var INTERVAL_MS = 2000;
  var busy = false;

  function liveElements(root) {
    var found = {};
    root.querySelectorAll("[data-live]").forEach(function (element) {
      found[element.getAttribute("data-live")] = element;
    });
    return found;
  }

  function refresh() {
    if (busy || document.hidden) {
      return;
    }
    var current = liveElements(document);
    if (Object.keys(current).length === 0) {
      return;
    }
    var url = new URL(window.location.href);
    url.searchParams.set("fragment", "live");
    busy = true;
    fetch(url.toString(), { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) {
        return response.ok ? response.text() : null;
      })
      .then(function (html) {
        if (html === null) {
          return;
        }
        var parsed = new DOMParser().parseFromString(html, "text/html");
        var fresh = liveElements(parsed);
        Object.keys(current).forEach(function (key) {
          var old = current[key];
          if (fresh[key] && !old.contains(document.activeElement)) {
            old.replaceWith(document.importNode(fresh[key], true));
          }
        });
      })
      .catch(function () {
        // The server may be restarting: try again at the next tick.
      })
      .finally(function () {
        busy = false;
      });
  }

  document.addEventListener("submit", function (event) {
    var button = event.submitter;
    var question = button && button.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });

  window.setInterval(refresh, INTERVAL_MS);
})();
