// Run any graph of an fgm ONNX export (generator, encoder, density, likelihood) from Node.js.
//
//   node run.mjs EXPORT_DIR ROLE --NAME file.npy [--NAME file.npy ...] [-o OUT_PREFIX]
//
// Every input the manifest lists for ROLE must be given as a float32/float64 C-order .npy
// (e.g. `likelihood --x x.npy --eps eps.npy`, eps of shape (K, N, latent_dim) drawn from a
// standard normal). Rows are sent in calls of at most the manifest's
// graphs[].rows_per_call.recommended rows (rows x K for graphs that take K draws), as the
// Python runtime does; for the likelihood, K is split too and the parts are combined with
// a log-mean-exp, for the free-critic log_density with a weighted mean. Each output is
// written to OUT_PREFIX.NAME.npy (default: ROLE.NAME.npy); a JSON summary goes to stdout.
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import * as ort from "onnxruntime-node";
import { fail, readNpy, writeNpy } from "./npy.mjs";

const argv = process.argv.slice(2);
if (argv.length < 2 || argv[0] === "-h" || argv[0] === "--help") {
  console.log("usage: node run.mjs EXPORT_DIR ROLE --NAME file.npy ... [-o OUT_PREFIX]");
  process.exit(argv.length < 2 ? 1 : 0);
}
const [dir, role] = argv;
const files = {};
let prefix = role;
for (let i = 2; i < argv.length; i += 2) {
  if (i + 1 >= argv.length) fail(`${argv[i]} needs a value`);
  if (argv[i] === "-o") prefix = argv[i + 1];
  else if (argv[i].startsWith("--")) files[argv[i].slice(2)] = argv[i + 1];
  else fail(`unexpected argument ${argv[i]}`);
}
const manifestPath = path.join(dir, "manifest.json");
if (!fs.existsSync(manifestPath)) fail(`${dir} has no manifest.json`);
const manifest = JSON.parse(fs.readFileSync(manifestPath, "utf8"));
if (manifest.exporter !== "onnx" || manifest.format_version !== 2) fail(`${manifestPath} is not an fgm ONNX export (format 2)`);
const graph = manifest.graphs.find((g) => g.role === role);
if (!graph) fail(`no ${role} graph; this export has ${manifest.graphs.map((g) => g.role).join(", ")}`);

// ------------------------------------------------------------------ inputs, checked against the manifest
const inputs = {};
for (const spec of graph.inputs) {
  if (!files[spec.name]) fail(`${role} needs --${spec.name} (${spec.doc || spec.shape.join(" x ")})`);
  const a = readNpy(files[spec.name]);
  if (a.shape.length !== spec.shape.length) fail(`--${spec.name} has rank ${a.shape.length}, expected ${spec.shape.length}`);
  spec.shape.forEach((d, j) => {
    if (typeof d === "number" && a.shape[j] !== d) fail(`--${spec.name} has size ${a.shape[j]} on axis ${j}, expected ${d}`);
  });
  inputs[spec.name] = { ...a, dims: spec.shape };
}
const axis = (spec, name) => spec.shape.indexOf(name); // where "batch" / "k" sit in an input
const n = inputs.x ? inputs.x.shape[0] : inputs.z.shape[0];
const k = inputs.eps && axis(graph.inputs.find((s) => s.name === "eps"), "k") === 0 ? inputs.eps.shape[0] : 1;
const takesK = graph.inputs.some((s) => s.shape.includes("k"));
const budget = (graph.rows_per_call && graph.rows_per_call.recommended) || 1024;
const kc = takesK ? Math.min(k, budget) : 1;
const step = Math.max(1, Math.floor(budget / kc));

// a slice of rows [r0, r1) (and of draws [k0, k1) on the "k" axis) of one input
function slice(spec, r0, r1, k0, k1) {
  const a = inputs[spec.name];
  const kAxis = axis(spec, "k");
  const bAxis = axis(spec, "batch");
  const shape = a.shape.slice();
  const inner = shape.slice(bAxis + 1).reduce((p, s) => p * s, 1);
  const rowsFull = shape[bAxis];
  const outer = kAxis === 0 ? k1 - k0 : 1;
  const out = new Float32Array(outer * (r1 - r0) * inner);
  for (let o = 0; o < outer; o++) {
    const src = ((kAxis === 0 ? k0 + o : 0) * rowsFull + r0) * inner;
    out.set(a.data.subarray(src, src + (r1 - r0) * inner), o * (r1 - r0) * inner);
  }
  if (kAxis === 0) shape[0] = k1 - k0;
  shape[bAxis] = r1 - r0;
  return new ort.Tensor("float32", out, shape);
}

// ------------------------------------------------------------------ calls of bounded size
// the graph is a plain file at the top of the export, with the sha256 the manifest records
if (path.basename(graph.file) !== graph.file || graph.file.startsWith(".")) fail(`manifest names the graph ${graph.file}, not a file of the export`);
const graphPath = path.join(dir, graph.file);
if (fs.lstatSync(graphPath).isSymbolicLink()) fail(`${graphPath} is a symbolic link`);
const graphBytes = fs.readFileSync(graphPath);
if (crypto.createHash("sha256").update(graphBytes).digest("hex") !== (manifest.files || {})[graph.file]) fail(`${graphPath} does not match the sha256 in the manifest`);
const session = await ort.InferenceSession.create(graphBytes);
const parts = Object.fromEntries(graph.outputs.map((o) => [o.name, []]));
const outShapes = {};
for (let r0 = 0; r0 < n; r0 += step) {
  const r1 = Math.min(n, r0 + step);
  const chunks = [];
  for (let k0 = 0; k0 < k; k0 += kc) {
    const k1 = Math.min(k, k0 + kc);
    const feeds = Object.fromEntries(graph.inputs.map((s) => [s.name, slice(s, r0, r1, k0, k1)]));
    chunks.push({ size: k1 - k0, out: await session.run(feeds) });
    if (!takesK) break;
  }
  for (const o of graph.outputs) {
    outShapes[o.name] = chunks[0].out[o.name].dims.slice(1);
    const rows = r1 - r0;
    const width = chunks[0].out[o.name].data.length / rows;
    const merged = new Float32Array(rows * width);
    for (let i = 0; i < merged.length; i++) {
      if (chunks.length === 1) merged[i] = chunks[0].out[o.name].data[i];
      else if (o.name === "log_likelihood") { // log-mean-exp of the chunks' log-means
        const v = chunks.map((c) => c.out[o.name].data[i] + Math.log(c.size));
        const top = Math.max(...v);
        merged[i] = top + Math.log(v.reduce((p, s) => p + Math.exp(s - top), 0)) - Math.log(k);
      } else { // a mean over the K draws (log_density), or a value that does not depend on K (critic)
        merged[i] = chunks.reduce((p, c) => p + c.size * c.out[o.name].data[i], 0) / k;
      }
    }
    parts[o.name].push(merged);
  }
}
const summary = { role, rows: n, k, calls_rows: step, calls_k: kc, outputs: {} };
for (const o of graph.outputs) {
  const total = parts[o.name].reduce((p, a) => p + a.length, 0);
  const data = new Float32Array(total);
  let at = 0;
  for (const a of parts[o.name]) { data.set(a, at); at += a.length; }
  const file = `${prefix}.${o.name}.npy`;
  writeNpy(file, data, [n, ...outShapes[o.name]]);
  summary.outputs[o.name] = { file, shape: [n, ...outShapes[o.name]], first: Array.from(data.slice(0, 4)) };
}
console.log(JSON.stringify(summary));
