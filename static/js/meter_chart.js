// Daily consumption bar chart of the meter page (ECharts, served locally).
(function () {
  var el = document.getElementById("readings-chart");
  var data = JSON.parse(document.getElementById("readings-data").textContent);
  if (!el || !window.echarts) { return; }
  var chart = echarts.init(el);
  chart.setOption({
    tooltip: { trigger: "axis" },
    grid: { left: 50, right: 20, top: 20, bottom: 40 },
    xAxis: { type: "category", data: data.map(function (d) { return d.date; }) },
    yAxis: { type: "value", name: "kWh" },
    series: [{
      type: "bar",
      name: "kWh",
      data: data.map(function (d) {
        var estimated = d.source === "estimated" || d.days > 1;
        return { value: Number(d.kwh), itemStyle: estimated ? { color: "#adb5bd", decal: { symbol: "rect" } } : {} };
      })
    }]
  });
  el.dataset.points = String(data.length);
  window.addEventListener("resize", function () { chart.resize(); });
})();
