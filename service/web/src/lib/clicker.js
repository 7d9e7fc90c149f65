// The click queue of the play page: batches presses per tick, keeps the shown
// count optimistic, and never loses or double-counts a click without saying so.
//
// A press is "fresh" while the socket is up, or "queued" while it is down.
// Every tick at most one batch is in flight, so acks arrive in order and the
// server's `user` value in an ack is the count to show. A batch whose ack never
// came (disconnect, timeout) is "uncertain" until reconcile() compares the
// server's count with the last acknowledged one: re-sending it blindly could
// count it twice.

export const MAX_BATCH = 50; // the contract's largest n
const WINDOW_MS = 1000; // the server's rate-limit window

export class Clicker {
  /**
   * send(n) -> Promise<ack>; rejects when the batch's fate is unknown.
   * on: { change(), ack(ack), dropped(n, why), uncertain(), refused(error) }
   */
  constructor(send, on = {}, now = () => performance.now()) {
    this.send = send;
    this.on = on;
    this.now = now;
    this.acked = null; // the server's count for this player, once known
    this.rank = null;
    this.fresh = 0;
    this.queued = 0;
    this.inflight = 0;
    this.uncertain = 0;
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

  /** Decide an uncertain batch from the server's count, read after it settled. */
  reconcile(count, rank) {
    if (this.uncertain) {
      const counted = this.acked !== null && count >= this.acked + this.uncertain;
      if (!counted && this.acked !== null) this.queued += this.uncertain;
      this.uncertain = 0;
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
    if (!connected || this.inflight || this.uncertain || at < this.pausedUntil) return;
    if (!this.pending) return;
    // Fresh presses go as they are: the server is the judge of the rate. Only more than
    // a whole second's worth (after a pause) cannot count, and is said so at once.
    const fresh = Math.min(this.fresh, MAX_BATCH, this.limit);
    const over = this.fresh - fresh;
    if (over) {
      this.fresh = fresh;
      this.on.dropped?.(over, "rate");
    }
    // The backlog (clicks made offline) drains at the limit, so it is not refused.
    const room = Math.max(0, Math.min(MAX_BATCH - fresh, this.limit - this.#used(at) - fresh));
    const backlog = Math.min(this.queued, room);
    const n = fresh + backlog;
    if (!n) return;
    this.fresh -= fresh;
    this.queued -= backlog;
    this.inflight = n;
    let ack;
    try {
      ack = await this.send(n);
    } catch {
      this.inflight = 0;
      this.uncertain = n;
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
      this.#refused(ack || { error: "internal" }, fresh, backlog);
    }
    this.on.change?.();
  }

  #refused(error, fresh, backlog) {
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
      this.pausedUntil = this.now() + wait; // refused before counting: send again later
      this.queued += fresh + backlog;
    } else if (code === "unavailable" || code === "internal") {
      // Redis failed somewhere during the call, which may have counted the batch:
      // ask for the count before sending it again.
      this.pausedUntil = this.now() + wait;
      this.uncertain = fresh + backlog;
      this.on.uncertain?.();
    } else {
      this.queued += fresh + backlog; // kept until the page decides (e.g. the token died)
      this.on.refused?.(error);
    }
  }
}
