// The click queue of the play page: batches presses per tick, keeps the shown
// count optimistic, and never loses or double-counts a click without saying so.
//
// A press is "fresh" while the socket is up, or "queued" while it is down.
// Every tick at most one batch is in flight, so acks arrive in order and the
// server's `user` value in an ack is the count to show. Every batch carries an
// id. A batch whose ack never came (disconnect, timeout), or that an overloaded
// server turned away, is "uncertain": it is sent again, with the same n and the
// same id, so the server counts it at most once whatever happened to the first.

export const MAX_BATCH = 50; // the contract's largest n
const WINDOW_MS = 1000; // the server's rate-limit window

/** A batch id: 16 characters of the contract's alphabet, from the browser's CSPRNG. */
export function batchId() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return btoa(String.fromCharCode(...bytes)).replaceAll("+", "-").replaceAll("/", "_");
}

/** Wait `ms` plus up to half again, so refused clients do not all come back together. */
export const jittered = (ms, random = Math.random) => ms * (1 + random() / 2);

export class Clicker {
  /**
   * send(n, id) -> Promise<ack>; rejects when the batch's fate is unknown.
   * on: { change(), ack(ack), dropped(n, why), uncertain(), refused(error), busy() }
   */
  constructor(send, on = {}, now = () => performance.now(), newId = batchId) {
    this.send = send;
    this.on = on;
    this.now = now;
    this.acked = null; // the server's count for this player, once known
    this.rank = null;
    this.fresh = 0;
    this.queued = 0;
    this.inflight = 0;
    this.uncertain = 0; // clicks of the batch to send again, under heldId
    this.heldId = null;
    this.newId = newId;
    this.busyUntil = 0; // an overloaded server asked us to wait until then
    this.limit = 20; // learned from a rate_limited reply; paces the backlog only
    this.accepted = []; // [time, n] of batches accepted within the window
    this.pausedUntil = 0;
    this.acks = 0; // bumps with every ack, so a slower read can tell it is stale
  }

  get pending() {
    return this.fresh + this.queued;
  }

  /** Clicks pressed that the server has not acknowledged yet. */
  get unsent() {
    return this.fresh + this.queued + this.inflight + this.uncertain;
  }

  get idle() {
    return this.unsent === 0;
  }

  /** The server said it is overloaded and we are waiting to send again. */
  get busy() {
    return this.now() < this.busyUntil;
  }

  /** The count to show: acknowledged plus everything still on its way. */
  get shown() {
    return this.acked === null ? null : this.acked + this.unsent;
  }

  press(connected) {
    if (connected) this.fresh += 1;
    else this.queued += 1;
    this.on.change?.();
  }

  /** The socket went down: what was pressed since the last tick waits with the backlog. */
  disconnected() {
    this.queued += this.fresh;
    this.fresh = 0;
    this.on.change?.();
  }

  /** A fresh count from the server (join, reload, admin edit): taken as the new base. */
  setCount(count, rank = this.rank) {
    this.acked = count;
    this.rank = rank;
    this.on.change?.();
  }

  /** Forget everything unsent (the player is gone); returns how many clicks that was. */
  abandon() {
    const lost = this.unsent;
    this.fresh = this.queued = this.inflight = this.uncertain = 0;
    this.on.change?.();
    return lost;
  }

  /** The server's count, read while a batch is uncertain: its id decides, not this. */
  reconcile(count, rank) {
    if (this.uncertain && this.acked !== null) {
      // Shown is acked + unsent: keep the uncertain clicks out of the base until resent.
      count = Math.max(this.acked, count - this.uncertain);
    }
    this.setCount(count, rank);
  }

  #used(at) {
    while (this.accepted.length && this.accepted[0][0] <= at - WINDOW_MS) this.accepted.shift();
    return this.accepted.reduce((sum, [, n]) => sum + n, 0);
  }

  /** Send one batch if there is something to send and nothing in flight. Call every tick. */
  async flush(connected) {
    const at = this.now();
    if (!connected || this.inflight || at < this.pausedUntil) return;
    let fresh = 0;
    let backlog = 0;
    let id = this.heldId;
    if (this.uncertain) {
      backlog = this.uncertain; // the same batch again, under the same id
      this.uncertain = 0;
    } else {
      if (!this.pending) return;
      // Fresh presses go as they are: the server is the judge of the rate. Only more than
      // a whole second's worth (after a pause) cannot count, and is said so at once.
      fresh = Math.min(this.fresh, MAX_BATCH, this.limit);
      const over = this.fresh - fresh;
      if (over) {
        this.fresh = fresh;
        this.on.dropped?.(over, "rate");
      }
      // The backlog (clicks made offline) drains at the limit, so it is not refused.
      const room = Math.max(0, Math.min(MAX_BATCH - fresh, this.limit - this.#used(at) - fresh));
      backlog = Math.min(this.queued, room);
      if (!(fresh + backlog)) return;
      this.fresh -= fresh;
      this.queued -= backlog;
      id = this.newId();
    }
    const n = fresh + backlog;
    this.heldId = null;
    this.inflight = n;
    let ack;
    try {
      ack = await this.send(n, id);
    } catch {
      this.inflight = 0;
      this.#hold(n, id);
      this.on.change?.();
      this.on.uncertain?.();
      return;
    }
    this.inflight = 0;
    if (ack && typeof ack.user === "number") {
      this.accepted.push([this.now(), n]);
      this.acks += 1;
      this.acked = ack.user;
      if (typeof ack.rank === "number") this.rank = ack.rank;
      this.on.ack?.(ack);
    } else {
      this.#refused(ack || { error: "internal" }, fresh, backlog, id);
    }
    this.on.change?.();
  }

  #hold(n, id) {
    this.uncertain = n;
    this.heldId = id;
  }

  #refused(error, fresh, backlog, id) {
    const code = error.error;
    const wait = Number(error.retry_after_ms) || 1000;
    if (code === "rate_limited") {
      // "Slow down: at most 20 clicks a second." / "n=30 is more than the 20 clicks a second ..."
      const limit = /(\d+) clicks a second/.exec(error.detail || "");
      if (limit) this.limit = Number(limit[1]);
      this.pausedUntil = this.now() + wait;
      this.queued += backlog; // offline clicks keep their place
      if (fresh) this.on.dropped?.(fresh, "rate"); // over the limit: they do not count
    } else if (code === "restoring" || code === "shutting_down") {
      // Refused before counting. Send the same batch again later under the same id: it
      // may be one counted before a Redis loss, which the restore will remember.
      this.pausedUntil = this.now() + wait;
      this.#hold(fresh + backlog, id);
    } else if (code === "overloaded") {
      // Not counted: the server turned it away before Redis. Wait as asked (jittered, so
      // refused pages do not all come back at once), then send the same batch again.
      this.pausedUntil = this.busyUntil = this.now() + jittered(wait);
      this.#hold(fresh + backlog, id);
      this.on.busy?.();
    } else if (code === "unavailable" || code === "internal") {
      // Redis failed somewhere during the call, which may have counted the batch:
      // send it again later under the same id, which the server counts at most once.
      this.pausedUntil = this.now() + jittered(wait);
      this.#hold(fresh + backlog, id);
      this.on.uncertain?.();
    } else {
      this.queued += fresh + backlog; // kept until the page decides (e.g. the token died)
      this.on.refused?.(error);
    }
  }
}
