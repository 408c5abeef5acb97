// The HTML report's script, inlined into every report (templates/page.html.j2): draws each
// [data-tl-view] element with circuitsvis from the JSON in #tl-data, offline.
(function () {
  var data = JSON.parse(document.getElementById("tl-data").textContent);
  var count = 0;
  function mount(holder, component, props) {
    holder.replaceChildren();
    var div = document.createElement("div");
    div.id = "tl-cv-" + count++;
    div.className = "cv-root";
    holder.appendChild(div);
    CircuitsVis.render(div.id, component, props);
  }
  function decode(layer) {
    var bin = atob(layer.data), n = layer.n, k = 0, out = [];
    for (var h = 0; h < layer.heads.length; h++) {
      var rows = [];
      for (var i = 0; i < n; i++) {
        var row = new Array(n).fill(0);
        for (var j = 0; j <= i; j++, k += 2) {
          row[j] = (bin.charCodeAt(k) | (bin.charCodeAt(k + 1) << 8)) / 65535;
        }
        rows.push(row);
      }
      out.push(rows);
    }
    return out;
  }
  document.querySelectorAll("[data-tl-view]").forEach(function (el) {
    var view = data.views[el.dataset.tlView];
    var holder = el.querySelector(".cv-holder");
    if (view.kind === "tokens") {
      mount(holder, CircuitsVis.ColoredTokens,
            {tokens: view.tokens, values: view.values, minValue: 0, maxValue: 1});
      return;
    }
    var layerSel = el.querySelector("select.layer"), headSel = el.querySelector("select.head");
    function draw() {
      var layer = view.layers[layerSel.value], full = decode(layer);
      full.forEach(function (rows) {
        view.masked.forEach(function (c) { rows[c[0]][c[1]] = view.maskedValue; });
      });
      var idx = headSel.value === "all" ? layer.heads.map(function (_, i) { return i; })
                                        : [Number(headSel.value)];
      mount(holder, CircuitsVis.AttentionHeads, {
        attention: idx.map(function (i) { return full[i]; }),
        tokens: view.tokens,
        attentionHeadNames: idx.map(function (i) {
          return "L" + layerSel.value + "H" + layer.heads[i];
        }),
        maskUpperTri: true,
        maxValue: 1,
        minValue: view.maskedValue,
        negativeColor: view.maskedColor
      });
    }
    layerSel.addEventListener("change", draw);
    headSel.addEventListener("change", draw);
    draw();
  });
})();
