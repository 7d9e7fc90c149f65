// The Socket.IO connection both pages share: state ticks, events, and a
// visible status (connecting, live, reconnecting, offline).
import { io } from "socket.io-client";

const RETRY_MIN_MS = 500;
const RETRY_MAX_MS = 4000;

export class Live {
  /**
   * handlers: state(body), status(name), event(name, data), invalidToken(), forbidden(),
   * connected()
   * All optional.
   */
  constructor(handlers = {}) {
    this.handlers = handlers;
    this.token = null;
    this.socket = null;
    this.status = "connecting";
    this.everConnected = false;
    this.lastTick = -1;
    this.retryTimer = null;
    this.retries = 0;
    window.addEventListener("offline", () => this.#setStatus("offline"));
    window.addEventListener("online", () => {
      if (this.socket && !this.socket.connected) {
        this.#setStatus("reconnecting");
        this.socket.connect();
      }
    });
  }

  get connected() {
    return Boolean(this.socket?.connected);
  }

  /** (Re)connect, as a player with this token or as a spectator with none; `auth` overrides. */
  start(token = null, auth = null) {
    this.token = token;
    this.lastTick = -1;
    clearTimeout(this.retryTimer);
    if (this.socket) {
      this.socket.removeAllListeners();
      this.socket.disconnect();
    }
    this.#setStatus("connecting"); // a new identity: "reconnecting" is for a dropped link
    // Websocket only: the server refuses long-polling (no sticky sessions needed).
    const socket = io({
      transports: ["websocket"],
      auth: auth ?? (token ? { token } : undefined),
      reconnectionDelay: RETRY_MIN_MS,
      reconnectionDelayMax: RETRY_MAX_MS,
      timeout: 5000,
    });
    this.socket = socket;
    socket.on("connect", () => {
      this.everConnected = true;
      this.lastTick = -1;
      this.retries = 0;
      this.#setStatus("live");
      this.handlers.connected?.();
    });
    socket.on("disconnect", (reason) => {
      if (reason === "io client disconnect") return;
      this.#setStatus(navigator.onLine === false ? "offline" : "reconnecting");
      this.handlers.disconnected?.(reason);
    });
    socket.on("connect_error", (err) => this.#refused(err));
    socket.on("state", (body) => {
      // Ticks only grow (they come from Redis's clock); an older one is a late duplicate.
      if (typeof body?.tick === "number") {
        if (body.tick < this.lastTick) return;
        this.lastTick = body.tick;
      }
      this.handlers.state?.(body);
    });
    socket.onAny((name, data) => {
      if (name !== "state") this.handlers.event?.(name, data);
    });
  }

  #refused(err) {
    if (err?.message === "invalid_token") {
      this.handlers.invalidToken?.(err.data);
      return;
    }
    if (err?.message === "forbidden" && this.handlers.forbidden) {
      this.handlers.forbidden(err.data);
      return;
    }
    if (!this.socket) return;
    this.#setStatus(
      navigator.onLine === false ? "offline" : this.everConnected ? "reconnecting" : "connecting",
    );
    // A refusal by the server (shutting down, Redis away) leaves the socket inactive:
    // socket.io only retries broken transports by itself, so retry those here.
    if (!this.socket.active) {
      this.retries += 1;
      const delay = Math.min(RETRY_MAX_MS, RETRY_MIN_MS * 2 ** this.retries);
      clearTimeout(this.retryTimer);
      this.retryTimer = setTimeout(() => this.socket?.connect(), delay * (0.75 + Math.random() / 2));
    }
  }

  /** Emit click {n, id}; resolves to the ack, rejects when the fate of the batch is unknown. */
  click(n, id, timeoutMs = 5000) {
    if (!this.connected) return Promise.reject(new Error("not connected"));
    return this.socket.timeout(timeoutMs).emitWithAck("click", id ? { n, id } : { n });
  }

  #setStatus(name) {
    if (name === this.status) return;
    this.status = name;
    this.handlers.status?.(name);
  }
}

/** Render a status into the shared pill: <div class="status" data-state=...><span class="dot"> text. */
export function showStatus(pill, name, extra = "") {
  const words = {
    connecting: "Connecting…",
    live: "Live",
    reconnecting: "Reconnecting…",
    offline: "Offline",
  };
  pill.dataset.state = name;
  pill.querySelector(".status-text").textContent = words[name] + (extra ? ` · ${extra}` : "");
}
