// The admin dashboard: sign in with the admin token, live cards, the clicks
// chart, audience breakdowns, the whole player table (search, edit, delete) and the
// live activity feed (sent only to admin sockets, paged back over HTTP).
import "uplot/dist/uPlot.min.css";
import "./styles/dashboard.css";
import { ApiError, api } from "./lib/api.js";
import { ClicksChart } from "./lib/chart.js";
import { age, country, dec, el, num, plural, short } from "./lib/format.js";
import { Live, showStatus } from "./lib/live.js";
import { milestoneText, toast } from "./lib/toast.js";

const TOKEN_KEY = "clickky.admin"; // sessionStorage: the token lives as long as this tab
const PAGE_SIZE = 20;
const STATUS_POLL_MS = 5000;
const FEED_PAGE = 30;
const TABLE_REFRESH_MS = 1000; // at most this often after a tick, so the table stays live
const DIMENSIONS = [
  ["device", "Devices"],
  ["browser", "Browsers"],
  ["platform", "Platforms"],
  ["country", "Countries"],
];

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"),
  signout: $("signout"),
  signin: $("signin"),
  signinForm: $("signin-form"),
  token: $("token"),
  signinButton: $("signin-button"),
  signinError: $("signin-error"),
  console: $("console"),
  users: $("card-users"),
  global: $("card-global"),
  online: $("card-online"),
  cps: $("card-cps"),
  avg: $("card-avg"),
  snapshot: $("card-snapshot"),
  snapshotSub: $("card-snapshot-sub"),
  snapshotBox: $("card-snapshot-box"),
  chart: $("chart"),
  chartSummary: $("chart-summary"),
  chartError: $("chart-error"),
  search: $("search"),
  usersTotal: $("users-total"),
  usersBody: $("users-body"),
  usersEmpty: $("users-empty"),
  prev: $("prev"),
  next: $("next"),
  pageInfo: $("page-info"),
  breakdowns: $("breakdowns"),
  breakdownNote: $("breakdown-note"),
  confirm: $("confirm"),
  confirmText: $("confirm-text"),
  toasts: $("toasts"),
  feed: $("feed"),
  feedEmpty: $("feed-empty"),
  feedOlder: $("feed-older"),
};

let token = sessionStorage.getItem(TOKEN_KEY);
let room = null;
let snapshot = null; // {status, at}: the last /api/admin/status and when it came
let statusTimer = null;
let signedIn = false;

const live = new Live({
  state: onState,
  status: (name) => showStatus(ui.status, name),
  connected: () => loadFeed(null),
  forbidden: () => signOut("The admin token is no longer accepted. Sign in again."),
  event: (name, data) => {
    if (name === "activity") return addFeed([data], true);
    if (name !== "milestone") return;
    const text = milestoneText(data, null);
    if (text) toast(ui.toasts, text, { kind: "party", icon: "🎉" });
  },
});
const chart = new ClicksChart(ui.chart, {
  summary: ui.chartSummary,
  error: ui.chartError,
});

// -- sign-in ---------------------------------------------------------------------------
ui.signinForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const candidate = ui.token.value.trim();
  if (!candidate) return signinError("Enter the admin token.");
  ui.signinButton.disabled = true;
  try {
    await signIn(candidate);
    ui.token.value = "";
  } catch (error) {
    signinError(signinMessage(error));
  } finally {
    ui.signinButton.disabled = false;
  }
});

ui.signout.addEventListener("click", () => signOut(""));

function signinMessage(error) {
  if (!(error instanceof ApiError)) return "Something went wrong. Try again.";
  if (error.code === "admin_disabled") return "Admin routes are disabled on this server (ADMIN_TOKEN is unset).";
  if (error.status === 401 || error.status === 403) return "That token was not accepted.";
  if (error.status === 0) return "The server could not be reached. Try again.";
  return error.detail || `The server answered ${error.status}.`;
}

function signinError(text) {
  ui.signinError.textContent = text;
  ui.token.setAttribute("aria-invalid", text ? "true" : "false");
  if (text) ui.token.focus();
}

/** Check the token against the admin status route, then open the console. */
async function signIn(candidate) {
  const status = await api("/api/admin/status", { token: candidate });
  token = candidate;
  sessionStorage.setItem(TOKEN_KEY, token);
  signedIn = true;
  ui.signin.hidden = true;
  ui.console.hidden = false;
  ui.status.hidden = false;
  ui.signout.hidden = false;
  gotStatus(status);
  live.start(null, { admin: token }); // an admin socket: it also receives the activity feed
  chart.load();
  loadTable();
  loadBreakdowns();
  clearInterval(statusTimer);
  statusTimer = setInterval(pollStatus, STATUS_POLL_MS);
}

function signOut(message) {
  token = null;
  signedIn = false;
  sessionStorage.removeItem(TOKEN_KEY);
  clearInterval(statusTimer);
  live.socket?.disconnect();
  chart.stop();
  ui.console.hidden = true;
  ui.status.hidden = true;
  ui.signout.hidden = true;
  ui.signin.hidden = false;
  ui.usersBody.replaceChildren();
  ui.feed.replaceChildren();
  feedIds.clear();
  feedNext = null;
  shownRows = "";
  signinError(message);
  if (!message) ui.token.focus();
}

/** Every admin call: a refused token signs out at once. */
async function admin(path, options = {}) {
  try {
    return await api(path, { ...options, token });
  } catch (error) {
    if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
      signOut("The admin token is no longer accepted. Sign in again.");
    }
    throw error;
  }
}

// -- cards -------------------------------------------------------------------------------
function onState(body) {
  room = body;
  renderCards();
  // `clicks` only grows with real clicks; older servers only send `global`.
  chart.tick(body.clicks ?? body.global);
  tableSoon();
}

async function pollStatus() {
  if (!signedIn) return;
  try {
    gotStatus(await admin("/api/admin/status"));
  } catch {
    // shown by the sign-out, or the next poll will tell
  }
}

function gotStatus(status) {
  snapshot = { status, at: performance.now() };
  if (!room) room = status;
  renderCards();
}

function renderCards() {
  if (room) {
    ui.users.textContent = num(room.users);
    ui.global.textContent = num(room.global);
    ui.online.textContent = num(room.online);
    ui.cps.textContent = dec(room.cps);
    const avg = room.users ? room.global / room.users : null;
    ui.avg.textContent = avg === null ? "—" : avg >= 100 ? num(avg) : dec(avg);
  }
  renderSnapshot();
}

function renderSnapshot() {
  if (!snapshot) return;
  const { status, at } = snapshot;
  const info = status.snapshot ?? {};
  const since = info.age_s === null || info.age_s === undefined ? null : info.age_s + (performance.now() - at) / 1000;
  ui.snapshot.textContent = since === null ? "never" : `${age(since)} ago`;
  const parts = [];
  if (status.restore === "in_progress") parts.push("restoring from snapshot…");
  if (Number.isFinite(info.rows)) parts.push(plural(info.rows, "row"));
  if (Number.isFinite(status.workers)) parts.push(plural(status.workers, "worker"));
  if (info.failures) parts.push(`${plural(info.failures, "failure")}${info.last_error ? `: ${info.last_error}` : ""}`);
  ui.snapshotSub.textContent = parts.join(" · ");
  const stale = since === null || since > 120 || info.failures > 0 || status.workers === 0;
  ui.snapshotBox.classList.toggle("stat-warn", stale);
}
setInterval(renderSnapshot, 1000);

// -- the player table ------------------------------------------------------------------------
const table = { offset: 0, total: 0, query: "", editing: null, timer: null, loading: false, again: false };

ui.search.addEventListener("input", () => {
  clearTimeout(table.timer);
  table.timer = setTimeout(() => {
    table.query = ui.search.value.trim();
    table.offset = 0;
    loadTable();
  }, 200);
});
ui.prev.addEventListener("click", () => {
  table.offset = Math.max(0, table.offset - PAGE_SIZE);
  loadTable();
});
ui.next.addEventListener("click", () => {
  table.offset += PAGE_SIZE;
  loadTable();
});

let lastTableLoad = 0;
let tableTimer = null;
/** After a tick: reload the table soon, at most once a second, never under an open edit. */
function tableSoon() {
  if (tableTimer) return;
  const wait = Math.max(0, TABLE_REFRESH_MS - (performance.now() - lastTableLoad));
  tableTimer = setTimeout(() => {
    tableTimer = null;
    loadTable();
  }, wait);
}

async function loadTable() {
  if (!signedIn || table.editing) return;
  if (table.loading) {
    table.again = true;
    return;
  }
  table.loading = true;
  lastTableLoad = performance.now();
  const query = table.query;
  try {
    if (query) {
      const body = await api(`/api/users?q=${encodeURIComponent(query)}&limit=50`);
      renderRows(body.entries);
      ui.pageInfo.textContent = "";
      ui.usersTotal.textContent = body.entries.length
        ? `${plural(body.entries.length, "match", "matches")}${body.entries.length === 50 ? "+" : ""}`
        : "";
      ui.usersEmpty.textContent = `No player's name starts with “${query}”.`;
      ui.prev.hidden = ui.next.hidden = true;
    } else {
      const body = await api(`/api/leaderboard?offset=${table.offset}&limit=${PAGE_SIZE}`);
      table.total = body.total;
      if (table.offset > 0 && table.offset >= body.total) {
        table.offset = Math.max(0, Math.floor((body.total - 1) / PAGE_SIZE) * PAGE_SIZE);
        table.loading = false;
        return loadTable();
      }
      renderRows(body.entries);
      const last = Math.min(body.total, table.offset + body.entries.length);
      ui.pageInfo.textContent = body.total ? `${num(table.offset + 1)}–${num(last)} of ${num(body.total)}` : "";
      ui.usersTotal.textContent = plural(body.total, "player");
      ui.usersEmpty.textContent = "No players yet.";
      ui.prev.hidden = ui.next.hidden = false;
      ui.prev.disabled = table.offset === 0;
      ui.next.disabled = last >= body.total;
    }
  } catch (error) {
    ui.usersEmpty.textContent = error.detail || "The players could not be loaded.";
    ui.usersEmpty.hidden = false;
  } finally {
    table.loading = false;
    if (table.again) {
      table.again = false;
      tableSoon();
    }
  }
}

let shownRows = "";
function renderRows(entries) {
  if (table.editing) return;
  // The table reloads every second while clicks flow: leave the DOM (and the keyboard
  // focus in it) alone when nothing changed, and put the focus back when something did.
  const key = JSON.stringify(entries);
  if (key === shownRows && ui.usersBody.rows.length === entries.length) return;
  shownRows = key;
  const focused = document.activeElement?.closest?.("#users-body tr");
  const refocus = focused && {
    username: focused.dataset.username,
    index: [...focused.querySelectorAll("button")].indexOf(document.activeElement),
  };
  const rows = entries.map((entry) => {
    const row = el("tr");
    row.dataset.username = entry.username;
    row.append(el("td", "num rank", num(entry.rank)));
    const name = el("td", "name", entry.username);
    row.append(name, el("td", "num count", num(entry.count)));
    const actions = el("td", "actions");
    const edit = iconButton("edit", "Edit", "btn btn-small");
    edit.setAttribute("aria-label", `Set the count of ${entry.username}`);
    edit.addEventListener("click", () => startEdit(row, entry));
    const remove = iconButton("trash", "Delete", "btn btn-small btn-ghost danger-text");
    remove.setAttribute("aria-label", `Delete ${entry.username}`);
    remove.addEventListener("click", () => confirmDelete(entry));
    actions.append(edit, remove);
    row.append(actions);
    return row;
  });
  ui.usersBody.replaceChildren(...rows);
  ui.usersEmpty.hidden = rows.length > 0;
  if (refocus) {
    const row = rows.find((r) => r.dataset.username === refocus.username);
    row?.querySelectorAll("button")[refocus.index]?.focus();
  }
}

const ICONS = {
  edit: "M17 3a2.85 2.85 0 1 1 4 4L7.5 20.5 2 22l1.5-5.5Z",
  trash: "M3 6h18M19 6v14a2 2 0 0 1-2 2H7a2 2 0 0 1-2-2V6m3 0V4a2 2 0 0 1 2-2h4a2 2 0 0 1 2 2v2",
};

/** A button with an icon and a label; on phones only the icon shows (CSS). */
function iconButton(icon, label, className) {
  const button = el("button", className);
  button.type = "button";
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("class", "icon");
  svg.setAttribute("aria-hidden", "true");
  const path = document.createElementNS("http://www.w3.org/2000/svg", "path");
  path.setAttribute("d", ICONS[icon]);
  svg.append(path);
  button.append(svg, el("span", "btn-label", label));
  return button;
}

function startEdit(row, entry) {
  table.editing = entry.username;
  const cell = row.querySelector(".count");
  const actions = row.querySelector(".actions");
  const form = el("form", "edit-form");
  const input = el("input");
  input.type = "number";
  input.min = "0";
  input.step = "1";
  input.inputMode = "numeric";
  input.value = String(entry.count);
  input.required = true;
  input.setAttribute("aria-label", `New count for ${entry.username}`);
  const save = el("button", "btn btn-small btn-primary", "Save");
  save.type = "submit";
  const cancel = el("button", "btn btn-small", "Cancel");
  cancel.type = "button";
  const error = el("p", "field-error edit-error");
  error.setAttribute("aria-live", "polite");
  form.append(input, save, cancel, error);
  cell.replaceChildren(form);
  cell.classList.add("editing");
  cell.colSpan = 2; // the form takes the actions' place
  actions.hidden = true;
  row.classList.add("is-editing");
  input.focus();
  input.select();
  const close = () => {
    table.editing = null;
    shownRows = "";
    loadTable();
  };
  cancel.addEventListener("click", close);
  input.addEventListener("keydown", (event) => {
    if (event.key === "Escape") close();
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const value = Number(input.value);
    if (!Number.isInteger(value) || value < 0) {
      error.textContent = "A whole number, 0 or more.";
      return;
    }
    save.disabled = true;
    try {
      const body = await admin(`/api/admin/users/${encodeURIComponent(entry.username)}`, {
        method: "PUT",
        body: { count: value },
      });
      toast(ui.toasts, `${body.username} now has ${plural(body.count, "click")}.`, { kind: "ok", icon: "✓" });
      table.editing = null;
      shownRows = "";
      await loadTable();
      flash(body.username);
    } catch (failure) {
      save.disabled = false;
      if (failure instanceof ApiError && failure.status === 404) {
        toast(ui.toasts, `${entry.username} no longer exists.`, { kind: "warn" });
        close();
      } else {
        error.textContent = failure.detail || "That did not work. Try again.";
      }
    }
  });
}

function flash(username) {
  for (const row of ui.usersBody.rows) {
    if (row.dataset.username === username) row.classList.add("flash");
  }
}

async function confirmDelete(entry) {
  ui.confirmText.textContent =
    `${entry.username} and their ${plural(entry.count, "click")} will be removed, ` +
    "and the global count goes down by as much. The name becomes free again.";
  ui.confirm.returnValue = "";
  ui.confirm.showModal();
  ui.confirm.querySelector('[value="cancel"]').focus();
  const choice = await new Promise((resolve) =>
    ui.confirm.addEventListener("close", () => resolve(ui.confirm.returnValue), { once: true }),
  );
  if (choice !== "delete") return;
  try {
    const body = await admin(`/api/admin/users/${encodeURIComponent(entry.username)}`, {
      method: "DELETE",
    });
    toast(ui.toasts, `Deleted ${body.username}.`, { kind: "ok", icon: "✓" });
  } catch (failure) {
    if (failure instanceof ApiError && failure.status === 404) {
      toast(ui.toasts, `${entry.username} was already gone.`, { kind: "warn" });
    } else {
      toast(ui.toasts, failure.detail || "The delete did not go through.", { kind: "warn" });
    }
  }
  loadTable();
}

// -- audience breakdowns (shown once the server offers them) ---------------------------------
let breakdownWindow = "day";
let breakdownTimer = null;

for (const button of document.querySelectorAll("[data-breakdown]")) {
  button.addEventListener("click", () => {
    breakdownWindow = button.dataset.breakdown;
    for (const other of document.querySelectorAll("[data-breakdown]")) {
      other.setAttribute("aria-pressed", String(other === button));
    }
    loadBreakdowns();
  });
}

async function loadBreakdowns() {
  clearTimeout(breakdownTimer);
  if (!signedIn) return;
  const windowName = breakdownWindow;
  let results;
  try {
    results = await Promise.all(
      DIMENSIONS.map(([dimension]) =>
        api(`/api/stats/breakdown?dimension=${dimension}&window=${windowName}`),
      ),
    );
  } catch (error) {
    ui.breakdowns.replaceChildren();
    ui.breakdownNote.hidden = false;
    if (error instanceof ApiError && error.status === 404) {
      ui.breakdownNote.textContent =
        "Device, browser, platform and country breakdowns are not available from this server yet.";
    } else {
      ui.breakdownNote.textContent = "The breakdowns could not be loaded; retrying shortly.";
      breakdownTimer = setTimeout(loadBreakdowns, 15000);
    }
    return;
  }
  if (windowName !== breakdownWindow) return;
  ui.breakdownNote.hidden = true;
  ui.breakdowns.replaceChildren(
    ...results.map((body, i) => breakdownPanel(DIMENSIONS[i], body?.entries ?? [])),
  );
  breakdownTimer = setTimeout(loadBreakdowns, 30000);
}

/** "mobile" -> "Mobile", "unknown" -> "Unknown"; names like "Chrome" or "iOS" stay as they are. */
function readable(value) {
  const text = String(value || "unknown");
  if (text !== text.toLowerCase()) return text;
  return text.charAt(0).toUpperCase() + text.slice(1);
}

function breakdownPanel([dimension, title], entries) {
  const panel = el("div", "breakdown");
  panel.append(el("h3", "", title));
  const total = entries.reduce((sum, entry) => sum + (entry.clicks || 0), 0);
  if (!total) {
    panel.append(el("p", "empty", "No clicks in this window."));
    return panel;
  }
  const sorted = [...entries].sort((a, b) => b.clicks - a.clicks);
  // Six bars at most; the rest is summed as "Other", so small slices stay honest.
  const shown = sorted.slice(0, 6);
  const rest = sorted.slice(6).reduce((sum, entry) => sum + entry.clicks, 0);
  if (rest) shown.push({ value: "Other", clicks: rest });
  const top = Math.max(...shown.map((entry) => entry.clicks));
  const list = el("ul", "bars");
  for (const entry of shown) {
    const place = dimension === "country" && entry.value !== "Other" ? country(entry.value) : null;
    const item = el("li", "bar-row");
    const name = el("span", "bar-label", place ? place.name : readable(entry.value));
    name.title = name.textContent;
    if (place?.code) {
      const badge = el("span", "cc", place.code);
      badge.setAttribute("aria-hidden", "true");
      name.prepend(badge);
    }
    const track = el("span", "bar-track");
    const fill = el("span", "bar-fill");
    fill.style.width = `${Math.max(2, (entry.clicks / top) * 100)}%`;
    track.append(fill);
    const share = (entry.clicks / total) * 100;
    const percent = share > 0 && share < 1 ? "<1" : String(Math.round(share));
    const value = el("span", "bar-value", `${short(entry.clicks)} · ${percent}%`);
    value.title = `${num(entry.clicks)} clicks`;
    item.append(name, track, value);
    list.append(item);
  }
  panel.append(list);
  return panel;
}

// -- activity feed ----------------------------------------------------------------------------
const feedIds = new Set(); // entries shown, by stream id: a reconnect's reload adds no duplicates
let feedNext = null; // the cursor of the next older page, null at the end of the history

ui.feedOlder.addEventListener("click", () => loadFeed(feedNext));

/** The newest page (on every (re)connect, filling any gap), or the page before `before`. */
async function loadFeed(before) {
  const query = `limit=${FEED_PAGE}` + (before ? `&before=${encodeURIComponent(before)}` : "");
  try {
    const page = await admin(`/api/admin/activity?${query}`);
    if (before || feedNext === null) feedNext = page.next;
    addFeed(page.entries, false);
  } catch {
    // the sign-out (or the live events) tell the rest
  }
}

/** Show entries, newest first; live ones go on top, paged ones where their id says. */
function addFeed(entries, live) {
  for (const entry of entries) {
    if (!entry?.id || feedIds.has(entry.id)) continue;
    feedIds.add(entry.id);
    const item = el("li");
    item.dataset.kind = entry.kind;
    item.dataset.id = entry.id;
    const at = new Date(entry.at_ms);
    const time = el("time", null, at.toLocaleTimeString([], { hour12: false }));
    time.dateTime = at.toISOString();
    item.append(time, el("span", "feed-text", feedText(entry)));
    const after = live ? ui.feed.firstElementChild : [...ui.feed.children].find((li) => olderId(li.dataset.id, entry.id));
    ui.feed.insertBefore(item, after ?? null);
  }
  ui.feedEmpty.hidden = ui.feed.children.length > 0;
  ui.feedOlder.hidden = !feedNext;
}

/** True when stream id a ("ms-seq") is older than b. */
function olderId(a, b) {
  const [am, as] = a.split("-").map(Number);
  const [bm, bs] = b.split("-").map(Number);
  return am < bm || (am === bm && as < bs);
}

function feedText(e) {
  switch (e.kind) {
    case "join":
      return `${e.username} joined`;
    case "milestone":
      // On several shards the sum crossed it, not one player's click: no name.
      return e.username
        ? `The global count passed ${num(e.value)} (${e.username}'s click)`
        : `The global count passed ${num(e.value)}`;
    case "admin":
      return e.action === "delete"
        ? `${e.admin} deleted ${e.username} (had ${num(e.before)}) from ${e.address}`
        : `${e.admin} set ${e.username} from ${num(e.before)} to ${num(e.after)} from ${e.address}`;
    case "login_blocked":
      return `Failed admin logins blocked for a minute from ${e.address}`;
    case "restore":
      return `Counts restored from the last snapshot (${plural(e.users, "user")})`;
    case "lease":
      return `Worker ${e.worker} took over the snapshot lease (fence ${e.fence})`;
    case "snapshot_failed":
      return `Snapshot failed (${plural(e.failures, "time")} in a row): ${e.error}`;
    default:
      return e.kind;
  }
}

// -- start ---------------------------------------------------------------------------------
if (token) {
  signIn(token).catch((error) => {
    signOut(error instanceof ApiError && error.status !== 0 ? "Sign in again." : signinMessage(error));
  });
} else {
  ui.signin.hidden = false;
  ui.token.focus();
}
