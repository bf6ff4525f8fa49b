// The "npm" hatch-jupyter-builder runs for the Python package build: its `install` becomes `npm ci`, so a
// wheel is built from exactly the committed lock file; everything else goes to npm as it is.
import { spawnSync } from "node:child_process";

const args = process.argv.slice(2);
const npmArgs = args[0] === "install" ? ["ci", "--no-audit", "--no-fund"] : args;
const result = spawnSync("npm", npmArgs, { stdio: "inherit", shell: process.platform === "win32" });
process.exit(result.status ?? 1);
