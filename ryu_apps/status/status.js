// The status page: reads the controller's REST API every few seconds and
// renders it. Read-only (no request here changes anything), and every value
// goes in as text, never as markup: reasons and contacts come from people.
"use strict";

const REFRESH_MS = 5000;
const API = "v1";  // relative to /smtp/
let token = sessionStorage.getItem("smtp-border-read-token") || "";

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  return node;
}

function row(table, cells, attrs) {
  const labels = [...table.querySelectorAll("thead th")].map((th) => th.textContent);
  const tr = el("tr", null, attrs);
  cells.forEach((cell, i) => {
    const td = cell instanceof Node ? wrap(cell) : el("td", cell === null || cell === undefined ? "–" : cell);
    td.dataset.label = labels[i] || "";
    tr.appendChild(td);
  });
  return tr;
}

function wrap(node) {
  const td = el("td");
  td.appendChild(node);
  return td;
}

function yesNo(value) {
  return el("span", value ? "yes" : "no", { class: value ? "yes" : "no" });
}

function replaceRows(table, rows, empty) {
  const body = table.tBodies[0];
  body.replaceChildren(...rows);
  if (!rows.length) {
    const td = el("td", empty, { colspan: String(table.tHead.rows[0].cells.length) });
    body.appendChild(el("tr")).appendChild(td);
  }
}

async function get(path, withToken) {
  const headers = { Accept: "application/json" };
  if (withToken && token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(`${API}/${path}`, { headers, cache: "no-store", credentials: "omit" });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(body.error || `${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

// Times as the API gives them (UTC, ISO 8601), shown with their date: a
// page left open overnight, or read from another time zone, is not misread.
function utc(iso) {
  return iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace(/(Z|\+00:00)$/, "") + " UTC" : null;
}

function renderBanner(switches) {
  const banner = document.getElementById("banner");
  const behind = switches.filter((s) => s.role === "enforcing" && !s.in_sync);
  banner.hidden = !behind.length;
  banner.textContent = behind.length
    ? `${behind.length} enforcing switch(es) NOT in sync: ${behind.map((s) => `${s.name || s.dpid} (${s.pending || "not confirmed"})`).join("; ")}. The policy may not be in force there.`
    : "";
}

function renderSwitches(document_) {
  const table = document.getElementById("switches");
  const rows = document_.switches.map((s) => {
    const name = s.name ? `${s.name} (${s.dpid})` : s.dpid;
    const profile = s.pipeline ? s.pipeline.pipeline + (s.pipeline.meters ? "" : ", no meters") : null;
    const role = s.openflow_role ? `${s.role}, ${s.openflow_role}` : s.role;
    return row(table, [name, role, yesNo(s.connected), profile, yesNo(s.in_sync), s.flow_count, s.pending],
      { "data-dpid": s.dpid, class: s.in_sync ? "in-sync" : "not-in-sync" });
  });
  replaceRows(table, rows, "no switch listed or connected");
}

function renderExceptions(inventory) {
  const relays = inventory.gateways.map((g) => `${g.name} (${g.addresses.join(", ")})`).join("; ");
  const limit = inventory.relay_max_message_size ? `, messages up to ${inventory.relay_max_message_size}` : "";
  document.getElementById("relays").textContent =
    `Relays: ${relays || "none"}${limit}. ${inventory.summary.active} exception(s) in force, ` +
    `${inventory.summary.expiring_soon} expiring within ${inventory.summary.soon_days} days, ` +
    `${inventory.summary.for_review} for review.`;
  const table = document.getElementById("exceptions");
  const rows = inventory.exceptions.map((e) => {
    let state = el("span", "active");
    let kind = "active";
    if (e.lapsed) { state = el("span", "lapsed", { class: "badge bad" }); kind = "inactive"; }
    else if (!e.active) { state = el("span", "expired", { class: "badge bad" }); kind = "inactive"; }
    else if (e.review) { state = el("span", "review", { class: "badge warn", title: e.review }); kind = "review"; }
    else if (e.expiring_soon) { state = el("span", `expires in ${Math.floor(e.days_left)} d`, { class: "badge warn" }); kind = "expiring"; }
    const grounds = e.needs_message_size ? `${e.grounds}: needs ${e.needs_message_size}` : e.grounds;
    const tr = row(table, [e.id, e.address, e.direction, e.source, state, utc(e.expires) || "never", e.contact, grounds, e.reason],
      { "data-id": e.id, class: kind });
    tr.cells[0].classList.add("addr");
    tr.cells[1].classList.add("addr");
    return tr;
  });
  replaceRows(table, rows, "no exception");
}

function renderBlocked(recent, top) {
  const table = document.getElementById("blocked");
  const rows = recent.events.map((a) => {
    const tr = row(table, [a.time.replace("T", " ").replace(/\.\d+/, "").replace("Z", ""), a.direction,
      `${a.src}:${a.src_port}`, `${a.dst}:${a.dst_port}`, a.switch, a.in_port], { "data-src": a.src, title: a.clause });
    tr.cells[0].classList.add("time");
    return tr;
  });
  replaceRows(table, rows, "no blocked attempt recorded");
  for (const direction of ["outbound", "inbound"]) {
    const list = document.getElementById(`top-${direction}`);
    list.replaceChildren(...top[direction].map((h) => el("li", `${h.address}: ${h.attempts}`, { "data-address": h.address })));
    if (!top[direction].length) list.replaceChildren(el("li", "none"));
  }
  const note = recent.unsampled_switches ? ` Switches ${recent.unsampled_switches.join(", ")} block without samples: not listed.` : "";
  document.getElementById("blocked-note").textContent = `Sampled (one per connection, capped per switch).${note}`;
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const [switches, inventory] = await Promise.all([get("switches"), get("mailservers")]);
    renderSwitches(switches);
    renderBanner(switches.switches);
    renderExceptions(inventory);
    const form = document.getElementById("token-form");
    try {
      const [recent, top] = await Promise.all([get("blocked?limit=50", true), get("blocked/top?window=24h&limit=10", true)]);
      renderBlocked(recent, top);
      form.hidden = true;
    } catch (error) {
      if (error.status !== 401 && error.status !== 403) throw error;
      form.hidden = false;
      document.getElementById("blocked-note").textContent = error.message;
    }
    const enforcing = switches.switches.filter((s) => s.in_sync).length;
    status.textContent = `${enforcing} of ${switches.switches.length} switch(es) in sync · updated ${utc(new Date().toISOString())}`;
    status.classList.remove("stale");
    document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
  } catch (error) {
    status.textContent = `cannot read the controller: ${error.message} (showing the last answer)`;
    status.classList.add("stale");
  }
}

document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  token = document.getElementById("token").value.trim();
  sessionStorage.setItem("smtp-border-read-token", token);
  refresh();
});

get("version").then((b) => {
  document.getElementById("build").textContent = `smtp-border ${b.version} · ${b.framework} ${b.framework_version} · Python ${b.python}`;
}).catch(() => {});

refresh();
setInterval(refresh, REFRESH_MS);
