// Applies the chosen theme before the page paints: ?theme=dark|light (kept for the
// session), else the stored choice, else the system's (CSS prefers-color-scheme).
(function () {
  var q = new URLSearchParams(location.search).get("theme");
  var t = q || (function () { try { return localStorage.getItem("trellis-theme"); } catch (e) { return null; } })();
  if (q) { try { localStorage.setItem("trellis-theme", q); } catch (e) {} }
  if (t === "dark" || t === "light") document.documentElement.dataset.theme = t;
})();
