// The play page: join, click, and watch the room live.
import "./styles/play.css";
import { ApiError, api, userPath } from "./lib/api.js";
import { Clicker } from "./lib/clicker.js";
import { country, dec, el, num, plural } from "./lib/format.js";
import { Live, showStatus } from "./lib/live.js";
import { Sparkline } from "./lib/sparkline.js";
import { confetti, milestoneText, toast } from "./lib/toast.js";

const TICK_MS = 100; // one batch per broadcast tick at most
const REFRESH_MS = 4000; // how often to re-read our rank when we are outside the top 10
const PLAYER_KEY = "clickky.player"; // {username, token}: localStorage, so new tabs play on
const QUEUE_KEY = "clickky.queue"; // {token, n}: clicks not sent yet survive a reload

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"),
  global: $("global"),
  online: $("online"),
  cps: $("cps"),
  cpsWord: $("cps-word"),
  pulse: $("pulse"),
  join: $("join"),
  joinName: $("join-name"),
  joinButton: $("join-button"),
  joinError: $("join-error"),
  clicker: $("clicker"),
  button: $("click"),
  meCount: $("me-count"),
  meRank: $("me-rank"),
  meName: $("me-name"),
  notice: $("notice"),
  board: $("board"),
  boardEmpty: $("board-empty"),
  boardMe: $("board-me"),
  countries: $("countries"),
  countryList: $("country-list"),
  usersLine: $("users-line"),
  announce: $("announce"),
  toasts: $("toasts"),
};

const reducedMotion = window.matchMedia("(prefers-reduced-motion: reduce)");
const same = (a, b) =>
  Boolean(a && b) && a.normalize("NFKC").toLowerCase() === b.normalize("NFKC").toLowerCase();

let player = readJson(localStorage, PLAYER_KEY);
let room = null; // the last `state` body
let serverGlobal = null;
let ackFloor = { value: 0, until: 0 }; // an ack's global outranks a slightly older tick
let adminUntil = 0; // after an admin edit, ticks read before it must not undo it
let roomChanged = false;
let lastRefresh = 0;

const live = new Live({
  state: onState,
  status: render,
  connected: onConnected,
  disconnected: () => clicker.disconnected(),
  event: onEvent,
  invalidToken: () =>
    playerGone("That player no longer exists (an admin may have removed it). Pick a name to play again."),
});

const clicker = new Clicker((n, id) => live.click(n, id), {
  change: render,
  busy: render,
  ack: (ack) => {
    ackFloor = { value: ack.global, until: performance.now() + 1000 };
    serverGlobal = Math.max(serverGlobal ?? 0, ack.global);
  },
  dropped: (n) =>
    notice(
      `Easy there! ${plural(n, "click")} did not count: the limit is ${clicker.limit} a second.`,
      "warn",
    ),
  uncertain: () => reconcile(),
  refused: (error) => {
    if (error.error === "invalid_token") {
      playerGone("That player no longer exists. Pick a name to play again.");
    } else if (error.error === "not_a_player" && player) {
      live.start(player.token); // the socket lost its identity: connect again as the player
    } else {
      notice(error.detail || "The server refused those clicks; they are kept and retried.", "warn");
    }
  },
});

const spark = new Sparkline($("cps-chart"));

// -- the room -----------------------------------------------------------------
function onState(body) {
  room = body;
  const now = performance.now();
  serverGlobal = now < ackFloor.until ? Math.max(body.global, ackFloor.value) : body.global;
  // Another tab of the same player may have clicked: a higher count in the top 10 is
  // news, unless a batch of ours is on its way or an admin just set the count.
  const entry = player && body.top?.find((e) => same(e.username, player.username));
  const settled = !clicker.inflight && !clicker.uncertain && now > adminUntil;
  if (entry && settled && clicker.acked !== null && entry.count > clicker.acked) {
    clicker.acked = entry.count;
  }
  roomChanged = true;
  render();
}

function onConnected() {
  loadCountries(); // after a restart, at once rather than at the next poll
  if (!player) return;
  if (clicker.uncertain) reconcile();
  else refreshMe(true);
}

function onEvent(name, data) {
  if (name === "you" && player) {
    if (data?.deleted) {
      playerGone("An admin removed your player. Pick a name to play again.");
    } else if (typeof data?.count === "number") {
      clicker.acks += 1; // a read already under way is now stale
      adminUntil = performance.now() + 1000;
      clicker.setCount(data.count);
      notice(`An admin set your count to ${num(data.count)}.`, "info");
      refreshMe(true);
    }
  } else if (name === "milestone") {
    const text = milestoneText(data, player?.username);
    if (!text) return;
    const mine = data.scope === "personal" || same(data.username, player?.username);
    toast(ui.toasts, text, { kind: "party", icon: data.scope === "personal" ? "🏅" : "🎉" });
    if (mine) confetti(ui.button.hidden ? ui.global : ui.button);
  }
}

// -- clicking -------------------------------------------------------------------
function press() {
  if (!player) return;
  clicker.press(live.connected);
  ui.button.classList.remove("hit");
  void ui.button.offsetWidth; // restart the press animation
  ui.button.classList.add("hit");
  floatPlusOne();
}

function floatPlusOne() {
  if (reducedMotion.matches) return;
  const wrap = ui.button.parentElement;
  if (wrap.querySelectorAll(".plus").length > 8) return;
  const plus = el("span", "plus", "+1");
  plus.setAttribute("aria-hidden", "true");
  plus.style.setProperty("--x", `${Math.round(Math.random() * 60 - 30)}px`);
  wrap.append(plus);
  setTimeout(() => plus.remove(), 800);
}

// A click event that no key made: the mouse, a tap, or assistive technology.
ui.button.addEventListener("click", press);
ui.button.addEventListener("pointerdown", () => ui.button.classList.add("down"));
for (const type of ["pointerup", "pointerleave", "pointercancel"]) {
  ui.button.addEventListener(type, () => ui.button.classList.remove("down"));
}

// Space and Enter click once per key press, never on key repeat. The button's own
// key handling is cancelled so a key press is not counted twice.
document.addEventListener("keydown", (event) => {
  if (event.key !== " " && event.key !== "Enter") return;
  if (!player || ui.clicker.hidden) return;
  const target = event.target;
  const free = target === ui.button || target === document.body || target.id === "play";
  if (!free || event.ctrlKey || event.metaKey || event.altKey) return;
  event.preventDefault();
  if (event.repeat) return;
  ui.button.classList.add("down");
  press();
});
document.addEventListener("keyup", (event) => {
  if (event.key !== " " && event.key !== "Enter") return;
  ui.button.classList.remove("down");
  if (event.target === ui.button) event.preventDefault();
});

setInterval(() => clicker.flush(live.connected), TICK_MS);
setInterval(() => {
  spark.push(room?.cps ?? 0);
  if (player && roomChanged && performance.now() - lastRefresh > REFRESH_MS) {
    refreshMe(false);
  }
}, 1000);

/** Read our count and rank from the server; applied only if no click raced the read. */
async function refreshMe(force) {
  if (!player || (!force && meInTop())) return;
  const who = player;
  const acks = clicker.acks;
  lastRefresh = performance.now();
  roomChanged = false;
  try {
    const me = await api(userPath(who.username));
    // Unsent clicks are not in the server's count, so only a batch in flight makes it stale.
    const settled = !clicker.inflight && !clicker.uncertain && acks === clicker.acks;
    if (who === player && settled) clicker.setCount(me.count, me.rank);
  } catch {
    // 404 while Redis restores, or offline: the next tick or ack brings the truth.
  }
}

/** A batch's ack never came: read the count once the connection is back, then decide. */
async function reconcile() {
  if (!player || !live.connected || !clicker.uncertain) return;
  const who = player;
  try {
    const me = await api(userPath(who.username));
    if (who === player) clicker.reconcile(me.count, me.rank);
  } catch {
    setTimeout(reconcile, 1000);
  }
}

// -- joining and leaving ----------------------------------------------------------
ui.join.addEventListener("submit", async (event) => {
  event.preventDefault();
  const name = ui.joinName.value.trim();
  if (!name) return joinError("Type a name first.");
  ui.joinButton.disabled = true;
  joinError("");
  try {
    const body = await api("/api/join", { method: "POST", body: { username: name } });
    becomePlayer({ username: body.username, token: body.token }, 0);
    localStorage.setItem(PLAYER_KEY, JSON.stringify(player));
    ui.button.focus({ preventScroll: true }); // keyboard players go straight on with Space
    announce(`Welcome, ${body.username}. Press the button or Space to click.`);
  } catch (error) {
    joinError(joinMessage(error, name));
  } finally {
    ui.joinButton.disabled = false;
  }
});

function joinMessage(error, name) {
  if (!(error instanceof ApiError)) return "Something went wrong. Try again.";
  switch (error.code) {
    case "name_taken":
      return `“${name}” is taken. Try another name.`;
    case "invalid_username":
      return error.detail || "That name is not allowed.";
    case "rate_limited":
      return "Too many new players from your network just now. Try again in a minute.";
    case "network":
      return "Clickky can't be reached right now. Check your connection and try again.";
    default:
      return error.detail || "Something went wrong. Try again.";
  }
}

function joinError(text) {
  ui.joinError.textContent = text;
  ui.joinName.setAttribute("aria-invalid", text ? "true" : "false");
  if (text) ui.joinName.focus();
}

function becomePlayer(next, count) {
  player = next;
  clicker.abandon();
  clicker.setCount(count, null);
  ui.meName.textContent = player.username;
  ui.join.hidden = true;
  ui.clicker.hidden = false;
  ui.notice.textContent = "";
  live.start(player.token);
}

function playerGone(message) {
  const lost = clicker.abandon();
  player = null;
  localStorage.removeItem(PLAYER_KEY);
  localStorage.removeItem(QUEUE_KEY);
  ui.clicker.hidden = true;
  ui.join.hidden = false;
  const unsent = lost ? ` ${plural(lost, "click was", "clicks were")} not sent.` : "";
  ui.joinError.textContent = message + unsent;
  live.start(null);
  render();
}

// Another tab joined, or found the token dead: follow it.
window.addEventListener("storage", (event) => {
  if (event.key !== PLAYER_KEY) return;
  const next = readJson(localStorage, PLAYER_KEY);
  if (!next && player) playerGone("This player was signed out in another tab.");
  else if (next && next.token !== player?.token) {
    becomePlayer(next, null);
    refreshMe(true);
  }
});

// -- drawing ------------------------------------------------------------------
function render() {
  const shown = clicker.shown;
  setText(ui.meCount, shown === null ? "—" : num(shown));
  const rank = myRank();
  setText(ui.meRank, rank ? `#${num(rank)}` : "—");
  const global = serverGlobal === null ? null : serverGlobal + clicker.pending + clicker.inflight;
  setText(ui.global, global === null ? "—" : num(global));
  if (room) {
    setText(ui.online, num(room.online));
    setText(ui.cps, dec(room.cps));
    setText(ui.cpsWord, dec(room.cps) === dec(1) ? "click/s" : "clicks/s");
    setText(ui.usersLine, `${plural(room.users, "player")} so far`);
  }
  // While the link is down, online and clicks/s are the last known values: say so.
  const stale = !live.connected;
  ui.pulse.classList.toggle("stale", stale);
  ui.pulse.setAttribute("aria-label", stale ? "Last known, reconnecting" : "Right now");
  renderBoard(shown);
  renderStatus();
  saveQueue();
  announceSoon();
}

function renderStatus() {
  let extra = "";
  if (player && clicker.busy) {
    extra = "busy, your clicks are saved"; // an overloaded server: they are sent again soon
  } else if (player && clicker.pending) {
    extra = live.connected
      ? `sending ${plural(clicker.pending, "queued click")}`
      : `${plural(clicker.pending, "click")} queued`;
  }
  showStatus(ui.status, live.status, extra);
  ui.button.classList.toggle("offline", !live.connected);
}

function meInTop() {
  return Boolean(player && room?.top?.some((entry) => same(entry.username, player.username)));
}

/** Our rank: from the live top 10 when we are in it (or would be), else the last read. */
function myRank() {
  const shown = clicker.shown;
  if (!player || shown === null) return null;
  const top = room?.top ?? [];
  const lowest = top.length ? top[top.length - 1].count : 0;
  if (room && (meInTop() || top.length < 10 || shown > lowest)) {
    return 1 + top.filter((e) => !same(e.username, player.username) && e.count > shown).length;
  }
  return clicker.rank;
}

function renderBoard(shown) {
  const top = (room?.top ?? []).map((entry) => ({ ...entry }));
  const mine = player ? top.find((entry) => same(entry.username, player.username)) : null;
  // Our own row shows the same optimistic count as "Your clicks".
  if (mine && shown !== null) mine.count = shown;
  top.sort((a, b) => b.count - a.count);
  const rows = [];
  let rank = 0;
  top.forEach((entry, i) => {
    if (i === 0 || entry.count < top[i - 1].count) rank = i + 1;
    const row = el("li", `row${entry === mine ? " is-me" : ""}${rank <= 3 ? ` podium-${rank}` : ""}`);
    row.append(el("span", "rank", rank), el("span", "name", entry.username));
    if (entry === mine) row.append(el("span", "you-badge", "you"));
    row.append(el("span", "count", num(entry.count)));
    rows.push(row);
  });
  ui.board.replaceChildren(...rows);
  ui.boardEmpty.hidden = rows.length > 0 || !room;
  const rankNow = myRank();
  const outside = player && !mine && rankNow && rankNow > 10 && shown !== null;
  ui.boardMe.hidden = !outside;
  if (outside) {
    ui.boardMe.replaceChildren(
      el("span", "rank", `#${num(rankNow)}`),
      el("span", "name", player.username),
      el("span", "you-badge", "you"),
      el("span", "count", num(shown)),
    );
  }
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

let noticeTimer = null;
function notice(text, kind = "info") {
  ui.notice.textContent = text;
  ui.notice.dataset.kind = kind;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => {
    ui.notice.textContent = "";
  }, 6000);
}

// Screen readers hear the count once the player pauses, not on every click.
let announceTimer = null;
let lastAnnounced = "";
function announceSoon() {
  clearTimeout(announceTimer);
  announceTimer = setTimeout(() => {
    if (!player || clicker.shown === null) return;
    const rank = myRank();
    const text = `You have ${plural(clicker.shown, "click")}${rank ? `, rank ${rank}` : ""}.`;
    if (text !== lastAnnounced) announce(text);
  }, 1500);
}

function announce(text) {
  lastAnnounced = text;
  ui.announce.textContent = text;
}

// -- clicks not sent survive a reload -------------------------------------------
function saveQueue() {
  if (!player) return;
  if (clicker.pending || clicker.uncertain) {
    // A held batch keeps its id, so sending it again after the reload counts it at most once.
    const held = clicker.uncertain ? { id: clicker.heldId, n: clicker.uncertain } : undefined;
    localStorage.setItem(QUEUE_KEY, JSON.stringify({ token: player.token, n: clicker.pending, held }));
  } else if (localStorage.getItem(QUEUE_KEY)) {
    localStorage.removeItem(QUEUE_KEY);
  }
}

function readJson(storage, key) {
  try {
    return JSON.parse(storage.getItem(key) || "null");
  } catch {
    return null;
  }
}

// -- countries (shown once the server offers them) --------------------------------
let countriesTimer = null;
async function loadCountries() {
  clearTimeout(countriesTimer);
  try {
    const body = await api("/api/countries?limit=10");
    const rows = (body?.entries ?? []).map((entry, i) => {
      const { code, name } = country(entry.country);
      const row = el("li", "row");
      // An unknown country gets an empty slot, not a badge, so the names stay aligned.
      const badge = el("span", code ? "cc" : "cc-none", code);
      badge.setAttribute("aria-hidden", "true");
      row.append(el("span", "rank", i + 1), badge, el("span", "name", name));
      row.lastChild.title = name;
      row.append(el("span", "count", num(entry.clicks)));
      return row;
    });
    ui.countryList.replaceChildren(...rows);
    ui.countries.hidden = rows.length === 0;
    countriesTimer = setTimeout(loadCountries, 15000);
  } catch (error) {
    // 404: this server has no country board. Anything else (a restart, say): keep the
    // last board on screen and try again soon; a reconnect also reloads it at once.
    if (error instanceof ApiError && error.status === 404) ui.countries.hidden = true;
    else countriesTimer = setTimeout(loadCountries, 5000);
  }
}

// -- start --------------------------------------------------------------------------
if (player?.token && player?.username) {
  becomePlayer(player, null);
  const saved = readJson(localStorage, QUEUE_KEY);
  if (saved?.token === player.token && (saved.n > 0 || saved.held?.n > 0)) {
    clicker.queued = Math.floor(saved.n) || 0;
    if (saved.held?.n > 0 && typeof saved.held.id === "string") {
      clicker.uncertain = Math.floor(saved.held.n);
      clicker.heldId = saved.held.id;
    }
    const total = clicker.queued + clicker.uncertain;
    notice(`${plural(total, "click")} from last time will be sent now.`, "info");
  }
  refreshMe(true);
} else {
  player = null;
  ui.join.hidden = false;
  live.start(null);
}
render();
loadCountries();
