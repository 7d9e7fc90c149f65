// The dashboard's clicks chart: /api/stats for the window, then extended live.
import uPlot from "uplot";
import { api } from "./api.js";
import { num, short } from "./format.js";

const WINDOWS = {
  hour: { label: "last hour", per: "minute" },
  day: { label: "last 24 hours", per: "15 minutes" },
  week: { label: "last 7 days", per: "hour" },
};
const RESYNC_MS = 60000; // re-read the window now and then, ticks or not
// After ticks, re-read the window at most this often: exact numbers, cheap requests.
const REFRESH_AFTER_TICK_MS = { hour: 2000, day: 10000, week: 30000 };
const HEIGHT = 260;

const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

export class ClicksChart {
  constructor(container, { summary, error }) {
    this.container = container;
    this.summaryNode = summary;
    this.errorNode = error;
    this.window = "hour";
    this.xs = [];
    this.ys = [];
    this.bucket = 60;
    this.plot = null;
    this.global = null; // the latest global count seen in a tick
    this.counted = null; // the global count the chart's data already includes
    this.timer = null;
    this.loading = 0;
    this.lastLoad = 0;
    for (const button of document.querySelectorAll("[data-window]")) {
      button.addEventListener("click", () => {
        this.window = button.dataset.window;
        for (const other of document.querySelectorAll("[data-window]")) {
          other.setAttribute("aria-pressed", String(other === button));
        }
        this.load();
      });
    }
    new ResizeObserver(() => this.plot?.setSize(this.size())).observe(container);
    setInterval(() => this.roll() && this.draw(false), 1000); // time moves on, clicks or not
  }

  size() {
    return { width: Math.max(200, this.container.clientWidth), height: HEIGHT };
  }

  async load() {
    const windowName = this.window;
    const call = ++this.loading;
    clearTimeout(this.timer);
    this.timer = null;
    this.lastLoad = performance.now();
    const counted = this.global;
    try {
      const body = await api(`/api/stats?window=${windowName}`);
      if (call !== this.loading) return;
      this.bucket = body.bucket_seconds;
      this.xs = body.points.map(([ts]) => ts);
      this.ys = body.points.map(([, clicks]) => clicks);
      this.counted = counted ?? this.global;
      this.errorNode.textContent = "";
      this.draw(true);
    } catch (error) {
      if (call !== this.loading) return;
      this.errorNode.textContent = error.detail || "The chart data could not be loaded.";
    }
    this.timer = setTimeout(() => this.load(), RESYNC_MS);
  }

  stop() {
    clearTimeout(this.timer);
    this.timer = null;
    this.loading += 1;
  }

  /**
   * A tick: the rise of the global count goes into the newest bucket at once, and the
   * window is re-read soon after. The rise is a good guess, not the truth (an admin
   * edit moves the global count too), so the re-read has the last word.
   */
  tick(global) {
    this.global = global;
    if (!this.xs.length || this.counted === null) return;
    this.roll();
    if (global > this.counted) this.ys[this.ys.length - 1] += global - this.counted;
    this.counted = global;
    this.draw(false);
    const soon = REFRESH_AFTER_TICK_MS[this.window] - (performance.now() - this.lastLoad);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.load(), Math.max(0, soon));
  }

  /** Start new buckets as time passes; true when the chart moved. */
  roll() {
    if (!this.xs.length) return false;
    const now = Date.now() / 1000;
    let moved = false;
    while (now >= this.xs[this.xs.length - 1] + this.bucket) {
      this.xs.push(this.xs[this.xs.length - 1] + this.bucket);
      this.ys.push(0);
      this.xs.shift();
      this.ys.shift();
      moved = true;
    }
    return moved;
  }

  draw(fresh) {
    const data = [this.xs, this.ys.map((v) => Math.round(v))];
    const total = data[1].reduce((a, b) => a + b, 0);
    const peak = Math.max(0, ...data[1]);
    const { label, per } = WINDOWS[this.window];
    this.summary = `${num(total)} clicks in the ${label} · peak ${num(peak)} per ${per}`;
    this.showReadout();
    this.container.setAttribute(
      "aria-label",
      `Bar chart of clicks per ${per} over the ${label}: ${num(total)} in total, at most ${num(peak)} per ${per}.`,
    );
    if (this.plot && !fresh) {
      this.plot.setData(data);
      return;
    }
    this.plot?.destroy();
    this.plot = new uPlot(this.options(per), data, this.container);
  }

  /** The summary line, or what the bar under the pointer says. */
  showReadout() {
    const i = this.plot?.cursor.idx;
    if (i === null || i === undefined || !this.plot || this.xs[i] === undefined) {
      this.summaryNode.textContent = this.summary;
      return;
    }
    const when = new Date(this.xs[i] * 1000).toLocaleString(undefined, {
      weekday: this.window === "week" ? "short" : undefined,
      hour: "numeric",
      minute: "2-digit",
    });
    const { per } = WINDOWS[this.window];
    this.summaryNode.textContent = `${when}: ${num(Math.round(this.ys[i]))} clicks in that ${per.replace("15 minutes", "quarter hour")}`;
  }

  options(per) {
    const accent = css("--accent") || "#6d28d9";
    const muted = css("--muted") || "#5d5880";
    const line = css("--line") || "#e3dff3";
    const font = `12px ${css("--font") || "system-ui"}`;
    const axis = { stroke: muted, font, labelFont: `600 ${font}`, grid: { stroke: line, width: 1 }, ticks: { stroke: line, width: 1 } };
    return {
      ...this.size(),
      padding: [12, 24, 0, 4], // room for the last time label
      cursor: { drag: { x: false, y: false }, points: { show: false } },
      legend: { show: false }, // the summary line above reads out the bar under the pointer
      hooks: { setCursor: [() => this.showReadout()] },
      scales: {
        x: { time: true },
        y: { range: (u, min, max) => [0, Math.max(5, Math.ceil(max * 1.15))] },
      },
      series: [
        { label: "Time" },
        {
          label: `Clicks per ${per}`,
          stroke: accent,
          fill: `${accent}55`,
          width: 1,
          paths: uPlot.paths.bars({ size: [0.75, 28], gap: 1 }),
          points: { show: false },
          value: (u, v) => (v === null || v === undefined ? "—" : num(v)),
        },
      ],
      axes: [
        { ...axis, label: `Time (${WINDOWS[this.window].label})`, labelSize: 22 },
        {
          ...axis,
          label: `Clicks per ${per}`,
          labelSize: 24,
          size: 52,
          // Whole clicks only: no 0.5 ticks on a quiet chart.
          incrs: [1, 2, 5, 10, 20, 25, 50].flatMap((m) => [m, m * 100, m * 1e4, m * 1e6]).sort((a, b) => a - b),
          values: (u, values) => values.map((v) => short(v)),
        },
      ],
    };
  }
}
