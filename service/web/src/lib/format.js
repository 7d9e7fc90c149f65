// Number, time and country formatting shared by both pages.

const whole = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
const oneDecimal = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
const compact = new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 1 });

export const num = (value) => (Number.isFinite(value) ? whole.format(value) : "—");
export const dec = (value) => (Number.isFinite(value) ? oneDecimal.format(value) : "—");
export const short = (value) => (Number.isFinite(value) ? compact.format(value) : "—");
export const plural = (n, word, many = `${word}s`) => `${num(n)} ${n === 1 ? word : many}`;

/** "4 s", "3 min", "2 h", "5 d": how long ago something happened, for a card. */
export function age(seconds) {
  if (!Number.isFinite(seconds)) return "never";
  const s = Math.max(0, Math.round(seconds));
  if (s < 90) return `${s} s`;
  if (s < 90 * 60) return `${Math.round(s / 60)} min`;
  if (s < 36 * 3600) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}

let regionNames = null;
try {
  regionNames = new Intl.DisplayNames(undefined, { type: "region" });
} catch {
  regionNames = null;
}

/**
 * A country code ("DE") as {code, name} with a readable name; code is null when the
 * country is unknown (no badge then). The pages show the code as a small badge, not a
 * flag emoji: Windows and many Linux systems draw those as letters or boxes.
 */
export function country(value) {
  const text = String(value ?? "").trim();
  if (/^[A-Za-z]{2}$/.test(text) && !["ZZ", "XX"].includes(text.toUpperCase())) {
    const code = text.toUpperCase();
    let name = code;
    try {
      name = regionNames?.of(code) ?? code;
    } catch {
      name = code;
    }
    return { code, name };
  }
  const known = text && !["zz", "xx", "unknown"].includes(text.toLowerCase());
  return { code: null, name: known ? text : "Unknown" };
}

/** Create an element with a class and text; the pages build their DOM with this, never innerHTML. */
export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}
