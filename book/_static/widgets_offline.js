// Loaded between require.js and the widget manager (_config.yml, nb_ipywidgets_js).
(function () {
  // The manager finds its fonts next to its require.js module URI, which is page-relative
  // by default; map the module to the local copy whatever the page's depth.
  var here = document.currentScript.src.replace(/[^\/]*$/, "");
  var manager = here + "offline/html-manager";
  // anywidget (the heatmap explorer's widget base) is not bundled with the manager, which
  // asks require.js for it first and only then tries a CDN: the local copy answers.
  require.config({paths: {"@jupyter-widgets/html-manager/dist": manager,
                          "@jupyter-widgets/html-manager": manager + "/embed-amd",
                          "anywidget": here + "offline/anywidget/index"}});
  // Widget labels are typeset with MathJax 2's MathJax.Hub.Queue; this book runs MathJax 3,
  // so every object assigned to window.MathJax gets a Hub that forwards to typesetPromise.
  var hub = {Queue: function (job) {
    var mj = window.MathJax;
    if (mj && mj.typesetPromise && job && job[2]) { mj.typesetPromise([job[2]]); }
  }};
  function withHub(value) {
    if (value && typeof value === "object" && !value.Hub) { value.Hub = hub; }
    return value;
  }
  var current = withHub(window.MathJax);
  Object.defineProperty(window, "MathJax", {configurable: true,
    get: function () { return current; },
    set: function (value) { current = withHub(value); }});
})();
