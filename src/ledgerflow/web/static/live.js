// Live refresh: re-fetch the element marked data-live every few seconds, without a build step.
(function () {
  var box = document.querySelector("[data-live]");
  if (!box) return;
  var every = parseInt(box.getAttribute("data-every") || "5", 10) * 1000;
  setInterval(function () {
    fetch(box.getAttribute("data-live"), {credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) { if (html !== null) box.innerHTML = html; })
      .catch(function () {});
  }, every);
})();
