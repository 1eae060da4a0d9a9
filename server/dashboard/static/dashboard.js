// Draws the page's plotly figures and swaps in new ones when the server says a file changed.
// The HTML it swaps in was rendered and escaped by the server's Jinja2 template.
"use strict";

const CONFIG = { displayModeBar: false, responsive: true };

function draw(figures) {
  for (const [id, figure] of Object.entries(figures)) {
    const element = document.getElementById(id);
    if (element) {
      Plotly.react(element, figure.data, figure.layout, CONFIG);
    }
  }
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
