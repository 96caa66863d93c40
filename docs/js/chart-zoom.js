// Zoom and pan for the inline chart SVGs (see scripts/mkdocs_hooks.py).
// The frame scrolls; zoom scales the SVG's width and height, so the browser's own
// scrolling pans and hover tooltips keep working. Drag with the mouse to pan.
(function () {
  "use strict";
  function setup(chart) {
    var frame = chart.querySelector(".fsm-chart-frame");
    var svg = frame && frame.querySelector("svg");
    if (!svg) return;
    function px(name) {
      // Graphviz writes sizes in pt, our sequence diagrams in px.
      var text = svg.getAttribute(name) || "";
      var value = parseFloat(text);
      return /pt$/.test(text) ? value * 4 / 3 : value;
    }
    var full = { w: px("width"), h: px("height") };
    var scale = 1;
    function apply(next, cx, cy) {
      var old = scale;
      scale = Math.min(4, Math.max(0.05, next));
      var x = cx === undefined ? frame.clientWidth / 2 : cx;
      var y = cy === undefined ? frame.clientHeight / 2 : cy;
      var fx = (frame.scrollLeft + x) / old, fy = (frame.scrollTop + y) / old;
      svg.setAttribute("width", String(full.w * scale));
      svg.setAttribute("height", String(full.h * scale));
      frame.scrollLeft = fx * scale - x;
      frame.scrollTop = fy * scale - y;
    }
    function fit() {
      return Math.min(frame.clientWidth / full.w, frame.clientHeight / full.h);
    }
    apply(1);
    // Start at full size with the top of the chart in view, centred: the initial state.
    frame.scrollLeft = Math.max(0, (full.w - frame.clientWidth) / 2);
    chart.querySelectorAll("button[data-zoom]").forEach(function (button) {
      button.addEventListener("click", function () {
        var how = button.getAttribute("data-zoom");
        if (how === "in") apply(scale * 1.25);
        else if (how === "out") apply(scale / 1.25);
        else if (how === "fit") apply(fit());
        else apply(1);
      });
    });
    frame.addEventListener("wheel", function (event) {
      if (!event.ctrlKey && !event.metaKey) return; // plain wheel scrolls
      event.preventDefault();
      var rect = frame.getBoundingClientRect();
      apply(scale * (event.deltaY < 0 ? 1.1 : 1 / 1.1),
            event.clientX - rect.left, event.clientY - rect.top);
    }, { passive: false });
    var drag = null;
    frame.addEventListener("pointerdown", function (event) {
      if (event.button !== 0) return;
      drag = { x: event.clientX, y: event.clientY, left: frame.scrollLeft, top: frame.scrollTop };
      frame.classList.add("dragging");
    });
    window.addEventListener("pointermove", function (event) {
      if (!drag) return;
      frame.scrollLeft = drag.left - (event.clientX - drag.x);
      frame.scrollTop = drag.top - (event.clientY - drag.y);
    });
    window.addEventListener("pointerup", function () {
      drag = null;
      frame.classList.remove("dragging");
    });
  }
  function start() {
    document.querySelectorAll(".fsm-chart").forEach(setup);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
