// Sample from an fgm ONNX export with onnxruntime-node: no Python, no torch.
//
//   node sample.mjs EXPORT_DIR [-n N] [--seed S] [--z z.npy] [--eps eps.npy] [--mean] [-o out.npy]
//
// Input/output names and shapes come from EXPORT_DIR/manifest.json (role "generator").
// Noise is an input of the graph: z (N, latent_dim) and, for a Gaussian generator,
// eps (N, ...data_shape). Given as .npy files (float32 or float64, C order) they are used
// as they are; otherwise they are drawn here from a seeded standard normal (not the same
// stream as numpy's), z from the manifest's latent prior: N(0, I) ("normal") or a mixture
// ("mixture": z = means[k] + stds[k] * e with k uniform on the components). Any other prior
// needs --z. The samples are in the data's own units (the scaling is in the graph);
// -o writes them as .npy, else a JSON summary goes to stdout.
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import * as ort from "onnxruntime-node";
import { fail, normals, readNpy, uniforms, writeNpy } from "./npy.mjs";

function parseArgs(argv) {
  const a = { dir: null, n: 16, seed: 0, z: null, eps: null, mean: false, out: null };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const next = () => (i + 1 < argv.length ? argv[++i] : fail(`${k} needs a value`));
    if (k === "-n") a.n = Number.parseInt(next(), 10);
    else if (k === "--seed") a.seed = Number.parseInt(next(), 10);
    else if (k === "--z") a.z = next();
    else if (k === "--eps") a.eps = next();
    else if (k === "--mean") a.mean = true;
    else if (k === "-o" || k === "--out") a.out = next();
    else if (k === "-h" || k === "--help") {
      console.log("usage: node sample.mjs EXPORT_DIR [-n N] [--seed S] [--z z.npy] [--eps eps.npy] [--mean] [-o out.npy]");
      process.exit(0);
    } else if (a.dir === null) a.dir = k;
    else fail(`unexpected argument ${k}`);
  }
  if (a.dir === null) fail("give the export directory (the one with manifest.json)");
  if (!(a.n >= 1)) fail("-n must be a positive integer");
  return a;
}

// ------------------------------------------------------------------ main
const args = parseArgs(process.argv.slice(2));
const manifestPath = path.join(args.dir, "manifest.json");
if (!fs.existsSync(manifestPath)) fail(`${args.dir} has no manifest.json; give a directory written by \`fgm export --onnx\``);
const manifest = JSON.parse(fs.readFileSync(manifestPath, "utf8"));
if (manifest.exporter !== "onnx" || manifest.format_version !== 2) fail(`${manifestPath} is not an fgm ONNX export (format 2)`);
const graph = manifest.graphs.find((g) => g.role === "generator");
if (!graph) fail("the manifest lists no generator graph");
// the graph is a plain file at the top of the export, with the sha256 the manifest records
const graphPath = path.join(args.dir, path.basename(String(graph.file)));
if (graph.file !== path.basename(String(graph.file)) || fs.lstatSync(graphPath).isSymbolicLink()) fail(`${graph.file}: not a plain file inside ${args.dir}`);
const graphBytes = fs.readFileSync(graphPath);
if (crypto.createHash("sha256").update(graphBytes).digest("hex") !== (manifest.files || {})[graph.file]) fail(`${graphPath} does not match the sha256 in the manifest`);

let n = args.n;
const given = {};
for (const name of ["z", "eps"]) {
  if (args[name] === null) continue;
  given[name] = readNpy(args[name]);
  n = given[name].shape[0];
}

// z ~ the manifest's prior (an export without "prior" is N(0, I))
const prior = manifest.prior || { kind: "normal" };
if (!args.z && prior.kind !== "normal" && prior.kind !== "mixture") fail(`this export's latent prior "${prior.kind}" cannot be drawn here; pass --z z.npy drawn from it`);
function drawZ(count, d) {
  const z = normals(count, args.seed);
  if (prior.kind !== "mixture") return z;
  const u = uniforms(count / d, args.seed + 2);
  for (let i = 0; i < count / d; i++) {
    const k = Math.min(Math.floor(u[i] * prior.means.length), prior.means.length - 1);
    for (let j = 0; j < d; j++) z[i * d + j] = prior.means[k][j] + prior.stds[k][j] * z[i * d + j];
  }
  return z;
}

const feeds = {};
for (const input of graph.inputs) {
  const dims = input.shape.map((d) => (typeof d === "string" ? n : d));
  const count = dims.reduce((p, s) => p * s, 1);
  let data;
  if (given[input.name]) {
    const g = given[input.name];
    if (g.shape.join(",") !== dims.join(",")) fail(`--${input.name} has shape [${g.shape}], expected [${dims}]`);
    data = g.data;
  } else if (input.name === "eps" && args.mean) {
    data = new Float32Array(count);
  } else if (input.name === "z") {
    data = drawZ(count, dims[1]);
  } else {
    data = normals(count, args.seed + 1);
  }
  feeds[input.name] = new ort.Tensor("float32", data, dims);
}

const session = await ort.InferenceSession.create(graphBytes);
const result = await session.run(feeds);
const x = result[graph.outputs[0].name];
if (args.out) {
  writeNpy(args.out, x.data, x.dims);
  console.log(`wrote ${n} samples of shape [${x.dims.slice(1)}] to ${args.out}`);
} else {
  const rows = Array.from({ length: Math.min(n, 4) }, (_, i) => Array.from(x.data.slice(i * (x.data.length / n), (i + 1) * (x.data.length / n))).slice(0, 8));
  console.log(JSON.stringify({ shape: x.dims, latent_dim: manifest.latent_dim, prior: prior.kind, divergence: manifest.divergence, first_rows: rows }));
}
