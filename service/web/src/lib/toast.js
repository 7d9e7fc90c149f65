// Small, unobtrusive notices (milestones, admin changes) and a confetti burst.
import { el, num } from "./format.js";

const reducedMotion = window.matchMedia?.("(prefers-reduced-motion: reduce)");

/** Show a toast in the (aria-live) container for a few seconds. */
export function toast(container, text, { kind = "info", icon = "", ms = 4500 } = {}) {
  const item = el("div", `toast toast-${kind}`);
  if (icon) item.append(el("span", "toast-icon", icon));
  item.append(el("span", "toast-text", text));
  container.append(item);
  // Keep at most three on screen; the oldest goes first.
  while (container.children.length > 3) container.firstElementChild.remove();
  setTimeout(() => {
    item.classList.add("toast-out");
    setTimeout(() => item.remove(), reducedMotion?.matches ? 0 : 300);
  }, ms);
  return item;
}

/** A short confetti burst from an element; nothing at all under prefers-reduced-motion. */
export function confetti(origin, pieces = 28) {
  if (reducedMotion?.matches || !origin) return;
  const box = origin.getBoundingClientRect();
  const layer = el("div", "confetti");
  layer.setAttribute("aria-hidden", "true");
  for (let i = 0; i < pieces; i += 1) {
    const bit = el("i", `bit bit-${i % 5}`);
    const angle = (Math.PI * 2 * i) / pieces + Math.random() * 0.4;
    const distance = 80 + Math.random() * 120;
    // Set through the CSSOM: the page's CSP forbids style attributes, not this.
    bit.style.left = `${box.left + box.width / 2}px`;
    bit.style.top = `${box.top + box.height / 2}px`;
    bit.style.setProperty("--dx", `${Math.cos(angle) * distance}px`);
    bit.style.setProperty("--dy", `${Math.sin(angle) * distance - 60}px`);
    bit.style.setProperty("--spin", `${Math.round(Math.random() * 720 - 360)}deg`);
    layer.append(bit);
  }
  document.body.append(layer);
  setTimeout(() => layer.remove(), 1400);
}

/** Words for a `milestone` event, or null for one we do not understand. */
export function milestoneText(data, me) {
  const value = Number(data?.value);
  if (!Number.isFinite(value)) return null;
  if (data.scope === "personal") return `You reached ${num(value)} clicks!`;
  if (data.scope === "global") {
    const who = data.username ? (data.username === me ? "you" : data.username) : null;
    return `${num(value)} clicks worldwide!${who ? ` The one that did it: ${who}.` : ""}`;
  }
  return null;
}
