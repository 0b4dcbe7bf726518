// farmbench report: draw the figures declared on the page and make tables sortable. No external libraries
// besides plotly.js (beside the page or inlined); no network access (the page's CSP forbids it anyway).
(function () {
  "use strict";

  function sortTable(table, index, header) {
    var ascending = header.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(header.parentNode.cells, function (cell) { cell.removeAttribute("aria-sort"); });
    header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var numeric = header.getAttribute("data-type") === "num";
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    function key(row) {
      var cell = row.cells[index];
      if (!cell) { return null; }
      var raw = cell.hasAttribute("data-v") ? cell.getAttribute("data-v") : cell.textContent.trim();
      if (numeric) {
        var value = parseFloat(raw);
        return isNaN(value) ? null : value;
      }
      return raw === "" ? null : raw.toLowerCase();
    }
    var keyed = rows.map(function (row, position) { return { row: row, key: key(row), position: position }; });
    keyed.sort(function (a, b) {
      // Missing values go last in either direction; ties keep their order.
      if (a.key === null && b.key === null) { return a.position - b.position; }
      if (a.key === null) { return 1; }
      if (b.key === null) { return -1; }
      var order = numeric ? a.key - b.key : (a.key < b.key ? -1 : a.key > b.key ? 1 : 0);
      if (order === 0) { return a.position - b.position; }
      return ascending ? order : -order;
    });
    keyed.forEach(function (item) { body.appendChild(item.row); });
  }

  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    if (!table.tHead || !table.tBodies.length) { return; }
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (header, index) {
      header.tabIndex = 0;
      header.setAttribute("role", "columnheader button");
      header.addEventListener("click", function () { sortTable(table, index, header); });
      header.addEventListener("keydown", function (event) {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); sortTable(table, index, header); }
      });
    });
  });

  var plots = document.querySelectorAll("div.fb-plot");
  if (typeof window.Plotly === "undefined") {
    if (plots.length) {
      document.getElementById("plotly-missing").hidden = false;
      document.body.setAttribute("data-plots-rendered", "0");
    }
    return;
  }
  var pending = Array.prototype.map.call(plots, function (div) {
    var figure = JSON.parse(document.getElementById(div.getAttribute("data-figure")).textContent);
    return window.Plotly.newPlot(div, figure.data, figure.layout, { responsive: true, displaylogo: false });
  });
  Promise.all(pending).then(function () {
    document.body.setAttribute("data-plots-rendered", String(pending.length));
  }, function (error) {
    document.body.setAttribute("data-plots-failed", String(error));
    console.error("farmbench: a figure failed to render", error);
  });
}());
