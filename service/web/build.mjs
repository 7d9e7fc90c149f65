// Builds the two pages into ../static/: index.html, dashboard.html and hashed
// bundles under /static/assets/. Run by `make web` (npm run build).
import { build } from "esbuild";
import { copyFile, mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { basename, dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const src = join(here, "src");
const out = join(here, "..", "static");
const assets = join(out, "assets");

// Pages and the entry point each one loads; the HTML names them as {{name.js}} / {{name.css}}.
const pages = { "index.html": "play", "dashboard.html": "dashboard" };

await rm(assets, { recursive: true, force: true });
await mkdir(assets, { recursive: true });

const result = await build({
  entryPoints: Object.fromEntries(
    Object.values(pages).map((name) => [name, join(src, `${name}.js`)]),
  ),
  absWorkingDir: here, // metafile paths are then relative to this folder
  outdir: assets,
  // Content hashes in the names: a new build can never be mixed with a cached old one.
  entryNames: "[name]-[hash]",
  bundle: true,
  format: "esm",
  splitting: true, // socket.io-client is shared by both pages: one cached chunk
  chunkNames: "chunk-[hash]",
  minify: true,
  sourcemap: "linked",
  target: ["chrome100", "edge100", "firefox100", "safari15.4"], // 2022-era browsers: no lowering needed
  legalComments: "linked",
  metafile: true,
  logLevel: "warning",
  define: { "process.env.NODE_ENV": '"production"' },
});

const url = (file) => `/static/${relative(out, join(here, file))}`;
const urls = {};
const preloads = {};
for (const [file, meta] of Object.entries(result.metafile.outputs)) {
  if (!meta.entryPoint) continue;
  const name = basename(meta.entryPoint, ".js");
  urls[`${name}.js`] = url(file);
  if (meta.cssBundle) urls[`${name}.css`] = url(meta.cssBundle);
  // The shared chunk starts loading with the page instead of after the entry is parsed.
  preloads[name] = meta.imports
    .filter((dep) => dep.kind === "import-statement")
    .map((dep) => `  <link rel="modulepreload" href="${url(dep.path)}">\n`)
    .join("");
}

for (const [page, entry] of Object.entries(pages)) {
  const template = await readFile(join(src, page), "utf8");
  const html = template.replace(/\{\{([\w.]+)\}\}/g, (_, key) => {
    if (!urls[key]) throw new Error(`${page} names {{${key}}}, which the build did not produce`);
    return urls[key];
  }).replace("</head>", `${preloads[entry]}</head>`);
  if (!html.includes(urls[`${entry}.js`])) throw new Error(`${page} does not load ${entry}.js`);
  await writeFile(join(out, page), html);
}
await copyFile(join(src, "favicon.svg"), join(out, "favicon.svg"));

const sizes = Object.entries(result.metafile.outputs)
  .filter(([file]) => !file.endsWith(".map") && !file.endsWith(".txt"))
  .map(([file, meta]) => `${basename(file)} ${(meta.bytes / 1024).toFixed(1)} kB`);
console.log(`built ${Object.keys(pages).join(", ")}: ${sizes.join(", ")}`);
