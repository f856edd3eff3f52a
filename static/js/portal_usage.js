// The portal's usage charts (ECharts, served locally): daily use of the last 60 days and
// monthly use of the last 12 months against the same months a year before, stacked by
// time-of-use band when the meter reports bands. The figures come from the page
// (json_script "usage-data"); the tables under the charts show the same numbers.
// After drawing, each container gets data-rendered="1" and the ECharts instances stay
// reachable as window.kilowattUsageCharts (and through echarts.getInstanceByDom).
(function () {
  var source = document.getElementById("usage-data");
  if (!source || !window.echarts) { return; }
  var data = JSON.parse(source.textContent);
  var labels = data.labels;
  var colors = { sharp: "#dc3545", peak: "#fd7e14", flat: "#0d6efd", valley: "#20c997", total: "#198754", last_year: "#adb5bd" };
  var charts = {};
  window.kilowattUsageCharts = charts;

  function num(value) { return value === null || value === undefined || value === "" ? null : Number(value); }

  function bandSeries(rows, key) {
    if (!data.bands.length) {
      return [{ type: "bar", name: labels.total, itemStyle: { color: colors.total },
        data: rows.map(function (r) { return num(r.total); }) }];
    }
    return data.bands.map(function (band) {
      return { type: "bar", stack: key, name: labels[band] || band, itemStyle: { color: colors[band] },
        data: rows.map(function (r) { return r.bands && r.bands[band] !== undefined ? num(r.bands[band]) : (band === "flat" ? num(r.total) : null); }) };
    });
  }

  function draw(id, option, points) {
    var el = document.getElementById(id);
    if (!el) { return; }
    var chart = echarts.init(el);
    chart.setOption(option);
    charts[id] = chart;
    el.dataset.points = String(points);
    el.dataset.rendered = "1";
  }

  var base = {
    tooltip: { trigger: "axis", axisPointer: { type: "shadow" } },
    legend: { top: 0, type: "scroll" },
    grid: { left: 48, right: 12, top: 52, bottom: 28, containLabel: false },
    yAxis: { type: "value", name: labels.kwh, nameGap: 8 }
  };

  var daily = data.daily;
  draw("usage-daily-chart", Object.assign({}, base, {
    xAxis: { type: "category", data: daily.map(function (d) { return d.days > 1 ? d.date + " (" + d.days + ")" : d.date; }) },
    series: bandSeries(daily, "daily")
  }), daily.length);

  var monthly = data.monthly;
  var monthSeries = bandSeries(monthly, "monthly");
  monthSeries.push({ type: "line", name: labels.last_year, itemStyle: { color: colors.last_year },
    lineStyle: { type: "dashed" }, connectNulls: false,
    data: monthly.map(function (m) { return num(m.last_year); }) });
  draw("usage-monthly-chart", Object.assign({}, base, {
    xAxis: { type: "category", data: monthly.map(function (m) { return m.month; }) },
    series: monthSeries
  }), monthly.length);

  window.addEventListener("resize", function () {
    Object.keys(charts).forEach(function (k) { charts[k].resize(); });
  });
})();
