// Switchboard console: countdowns, confirmations, and a run's live event log (Server-Sent Events).
// No framework and no build step; pages work without it, it only makes them live.
"use strict";

function span(seconds) {
  const s = Math.floor(Math.abs(seconds));
  if (s < 60) return s + " s";
  const m = Math.floor(s / 60), r = s % 60;
  if (m < 60) return m < 10 && r ? m + " min " + r + " s" : m + " min";
  const h = Math.floor(m / 60), rm = m % 60;
  if (h < 24) return rm ? h + " h " + rm + " min" : h + " h";
  const d = Math.floor(h / 24), rh = h % 24;
  return rh ? d + " d " + rh + " h" : d + " d";
}

// <time data-countdown datetime="…">: "in 4 min 10 s", then "expired" (or data-past).
// <time data-ago datetime="…">: "3 min ago".
function tick() {
  const now = Date.now();
  document.querySelectorAll("time[data-countdown]").forEach((el) => {
    const left = (Date.parse(el.getAttribute("datetime")) - now) / 1000;
    el.textContent = left > 0 ? "in " + span(left) : el.dataset.past || "now";
    el.classList.toggle("late", left <= 0);
  });
  document.querySelectorAll("time[data-ago]").forEach((el) => {
    const past = (now - Date.parse(el.getAttribute("datetime"))) / 1000;
    el.textContent = past < 1 ? "just now" : span(past) + " ago";
  });
}

// Forms with data-confirm ask first.
document.addEventListener("submit", (event) => {
  const question = event.target.dataset && event.target.dataset.confirm;
  if (question && !window.confirm(question)) event.preventDefault();
});

// Open the step the address names (#step-x), as "Jump to failed step" does.
function openTarget() {
  if (!location.hash) return;
  const target = document.getElementById(decodeURIComponent(location.hash.slice(1)));
  if (target && target.tagName === "DETAILS") target.open = true;
}

// Replace the page's [data-live] regions with the server's fresh rendering of them.
let refreshing = null;
function refreshLive() {
  if (refreshing) return;
  refreshing = setTimeout(async () => {
    try {
      const answer = await fetch(location.pathname + location.search, { credentials: "same-origin" });
      if (answer.ok) {
        const fresh = new DOMParser().parseFromString(await answer.text(), "text/html");
        document.querySelectorAll("[data-live]").forEach((old) => {
          const next = fresh.getElementById(old.id);
          if (next) {
            const open = new Set([...old.querySelectorAll("details[open]")].map((d) => d.id));
            next.querySelectorAll("details").forEach((d) => { if (open.has(d.id)) d.open = true; });
            old.replaceWith(next);
          }
        });
        const badge = fresh.getElementById("approvals-count");
        const mine = document.getElementById("approvals-count");
        if (badge && mine) mine.replaceWith(badge);
        tick();
      }
    } finally {
      refreshing = null;
    }
  }, 150);
}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function addEventRow(body, event, severity) {
  const row = document.createElement("tr");
  row.className = "new";
  row.dataset.type = event.type;
  const at = new Date(event.at);
  row.appendChild(cell(at.toISOString().slice(11, 19), "mono"));
  const sev = cell(severity, "sev " + severity);
  row.appendChild(sev);
  row.appendChild(cell(event.type, "mono"));
  row.appendChild(cell(event.step_id || "", "mono"));
  row.appendChild(cell(event.actor.name || event.actor.kind + ":" + event.actor.id));
  const data = Object.keys(event.data || {}).length ? JSON.stringify(event.data) : "";
  row.appendChild(cell(data.length > 200 ? data.slice(0, 199) + "…" : data, "sub mono"));
  body.appendChild(row);
}

function follow(table) {
  const body = table.querySelector("tbody");
  const scroller = table.closest(".log");
  const indicator = document.getElementById("live-indicator");
  const severities = JSON.parse(table.dataset.severities);
  const ending = new Set(JSON.parse(table.dataset.ending));
  let after = table.dataset.after || "0-0";
  const source = new EventSource(table.dataset.stream + "?after=" + encodeURIComponent(after));
  source.onopen = () => indicator && indicator.classList.add("on");
  source.onerror = () => indicator && indicator.classList.remove("on");
  Object.keys(severities).forEach((type) => {
    source.addEventListener(type, (message) => {
      const event = JSON.parse(message.data);
      const stick = scroller && scroller.scrollTop + scroller.clientHeight >= scroller.scrollHeight - 30;
      const placeholder = body.querySelector("tr.none");
      if (placeholder) placeholder.remove();
      addEventRow(body, event, severities[type]);
      if (stick && scroller) scroller.scrollTop = scroller.scrollHeight;
      table.dataset.after = message.lastEventId;
      refreshLive();
      if (ending.has(type)) {
        source.close();  // the run is over: nothing more will come
        if (indicator) { indicator.classList.remove("on"); indicator.textContent = "finished"; }
      }
    });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  tick();
  setInterval(tick, 1000);
  openTarget();
  window.addEventListener("hashchange", openTarget);
  document.querySelectorAll("table[data-stream]").forEach(follow);
  // Pages without a stream of their own (Command Center, Approvals) refresh their sections.
  const polled = document.querySelector("[data-poll]");
  if (polled) {
    setInterval(() => { if (!document.hidden) refreshLive(); }, Number(polled.dataset.poll) * 1000);
  }
  const log = document.querySelector(".log");
  if (log) log.scrollTop = log.scrollHeight;
});
