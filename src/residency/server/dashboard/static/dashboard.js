// Draws the page's plotly figures and swaps in new ones when the server says a file changed.
// The HTML it swaps in was rendered and escaped by the server's Jinja2 template.
"use strict";

const CONFIG = { displayModeBar: false, responsive: true };

function draw(figures) {
  for (const [id, figure] of Object.entries(figures)) {
    const element = document.getElementById(id);
    if (element) {
      Plotly.react(element, figure.data, figure.layout, CONFIG);
      if (element.classList.contains("highlight")) {
        highlightOnHover(element);
      }
    }
  }
  for (const details of document.querySelectorAll("details.burndowns:not([data-resizing])")) {
    details.dataset.resizing = "1";
    details.addEventListener("toggle", () => {
      for (const chart of details.querySelectorAll(".chart")) {
        Plotly.Plots.resize(chart);  // drawn while closed: size it now it shows
      }
    });
  }
}

// The overview draws every country thin; the one under the pointer is drawn thick and the
// others fade, so one country's line can be followed among fifty.
function highlightOnHover(element) {
  if (element.dataset.highlighting) {
    return;  // Plotly.react keeps the element and its listeners
  }
  element.dataset.highlighting = "1";
  const countries = () => element.data.filter((trace) => trace.name !== "job target ε");
  element.on("plotly_hover", (event) => {
    const name = event.points[0].data.name;
    const lines = countries();
    Plotly.restyle(element, {
      "line.width": lines.map((trace) => (trace.name === name ? 4 : 1)),
      opacity: lines.map((trace) => (trace.name === name ? 1 : 0.25)),
    }, lines.map((trace) => element.data.indexOf(trace)));
  });
  element.on("plotly_unhover", () => {
    const lines = countries();
    Plotly.restyle(element, { "line.width": 1.5, opacity: 0.75 },
      lines.map((trace) => element.data.indexOf(trace)));
  });
}

function live(on) {
  const badge = document.getElementById("live");
  badge.textContent = on ? "live" : "reconnecting";
  badge.className = on ? "live-on" : "live-off";
}

function start() {
  draw(JSON.parse(document.getElementById("figures").textContent));
  const since = encodeURIComponent(document.body.dataset.version);
  const source = new EventSource(`events?since=${since}`);
  source.onopen = () => live(true);
  source.onerror = () => live(false);
  source.addEventListener("state", (event) => {
    const state = JSON.parse(event.data);
    document.getElementById("content").innerHTML = state.html;
    document.body.dataset.version = state.version;
    document.getElementById("read-at").textContent = state.read_at;
    draw(state.figures);
  });
}

document.addEventListener("DOMContentLoaded", start);
