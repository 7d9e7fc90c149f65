// A tiny live line chart in SVG (the play page's clicks-per-second strip).
const NS = "http://www.w3.org/2000/svg";

export class Sparkline {
  constructor(svg, size = 60) {
    this.svg = svg;
    this.size = size;
    this.values = new Array(size).fill(0); // a flat line until the room moves
    svg.setAttribute("viewBox", "0 0 100 30");
    svg.setAttribute("preserveAspectRatio", "none");
    this.area = document.createElementNS(NS, "path");
    this.area.setAttribute("class", "spark-area");
    this.line = document.createElementNS(NS, "path");
    this.line.setAttribute("class", "spark-line");
    svg.append(this.area, this.line);
    this.draw();
  }

  push(value) {
    this.values.push(Math.max(0, Number(value) || 0));
    if (this.values.length > this.size) this.values.shift();
    this.draw();
  }

  draw() {
    const { values, size } = this;
    const top = Math.max(1, ...values);
    const x = (i) => ((i + size - values.length) / (size - 1)) * 100;
    const y = (v) => 29 - (v / top) * 26;
    const points = values.map((v, i) => `${x(i).toFixed(2)},${y(v).toFixed(2)}`);
    if (points.length < 2) return;
    this.line.setAttribute("d", `M${points.join("L")}`);
    this.area.setAttribute("d", `M${x(0).toFixed(2)},30L${points.join("L")}L100,30Z`);
  }
}
