// Bundles src/index.tsx into ../imagen_canvas/static/canvas.js (ESM) and canvas.css for the anywidget.
import * as esbuild from "esbuild";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
const watch = process.argv.includes("--watch");
const dev = watch || process.argv.includes("--dev");

const options = {
  entryPoints: { canvas: path.join(here, "src/index.tsx") },
  outdir: path.join(here, "../imagen_canvas/static"),
  bundle: true,
  format: "esm",
  target: "es2022",
  jsx: "automatic",
  minify: !dev,
  sourcemap: dev ? "inline" : false,
  legalComments: "none",
  define: { "process.env.NODE_ENV": dev ? '"development"' : '"production"' },
  logLevel: "info",
};

if (watch) {
  const ctx = await esbuild.context(options);
  await ctx.watch();
} else {
  await esbuild.build(options);
}
