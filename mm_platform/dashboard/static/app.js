// Draws the server-built Plotly figures and wires the explorer's live search and the filters.
(function () {
  "use strict";

  function draw(el) {
    var src = document.getElementById(el.dataset.figure);
    if (!src || typeof Plotly === "undefined") return;
    var fig = JSON.parse(src.textContent);
    Plotly.newPlot(el, fig.data, fig.layout, { responsive: true, displaylogo: false });
  }
  document.querySelectorAll("[data-figure]").forEach(draw);

  // Series explorer: the list is searched and paged on the server; typing refreshes it in place.
  var form = document.getElementById("series-search");
  var list = document.getElementById("series-list");
  if (form && list) {
    var box = form.querySelector("input[name=q]");
    var timer = null;
    var seq = 0;
    var refresh = function (page) {
      var params = new URLSearchParams(new FormData(form));
      params.set("page", page || 1);
      var mine = ++seq;
      list.setAttribute("aria-busy", "true");
      fetch(form.dataset.listUrl + "?" + params.toString(), { headers: { Accept: "text/html" } })
        .then(function (resp) { return resp.ok ? resp.text() : Promise.reject(resp.status); })
        .then(function (html) {
          if (mine !== seq) return;  // a newer search has been sent meanwhile
          list.innerHTML = html;
          list.removeAttribute("aria-busy");
          ["sid", "page"].forEach(function (k) { if (!params.get(k) || params.get(k) === "1") params.delete(k); });
          if (!params.get("q")) params.delete("q");
          var keep = new URLSearchParams(params);
          var sid = form.querySelector("input[name=sid]").value;
          if (sid) keep.set("sid", sid);
          history.replaceState(null, "", location.pathname + (keep.toString() ? "?" + keep.toString() : ""));
        })
        .catch(function () { list.removeAttribute("aria-busy"); });
    };
    box.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () { refresh(1); }, 200);
    });
    form.addEventListener("submit", function (e) { e.preventDefault(); refresh(1); });
    var sort = form.querySelector("select[name=sort]");
    if (sort) sort.addEventListener("change", function () { refresh(1); });
    list.addEventListener("click", function (e) {
      var a = e.target.closest("a[data-page]");
      if (a) { e.preventDefault(); refresh(a.dataset.page); }
    });
  }

  // Promotion log: changing a filter reloads the (server-side filtered and paged) page.
  document.querySelectorAll("form[data-autosubmit] select").forEach(function (s) {
    s.addEventListener("change", function () { s.form.submit(); });
  });
})();
