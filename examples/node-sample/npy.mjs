// .npy files in and out, and a seeded standard normal, for the fgm Node.js examples.
import fs from "node:fs";

export function fail(msg) {
  console.error(`fgm-node: error: ${msg}`);
  process.exit(1);
}

// ------------------------------------------------------------------ .npy in and out
export function readNpy(file) {
  const buf = fs.readFileSync(file);
  if (buf.readUInt8(0) !== 0x93 || buf.toString("latin1", 1, 6) !== "NUMPY") fail(`${file} is not a .npy file`);
  const major = buf.readUInt8(6);
  const hlen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const start = major === 1 ? 10 : 12;
  const header = buf.toString("latin1", start, start + hlen);
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*True/.test(header);
  const shape = (/'shape':\s*\(([^)]*)\)/.exec(header)?.[1] ?? "")
    .split(",").map((s) => s.trim()).filter(Boolean).map(Number);
  if (fortran) fail(`${file} is in Fortran order; save it with numpy.ascontiguousarray`);
  const body = buf.subarray(start + hlen);
  const count = shape.reduce((p, s) => p * s, 1);
  let data;
  if (descr === "<f4") data = new Float32Array(body.buffer.slice(body.byteOffset, body.byteOffset + 4 * count));
  else if (descr === "<f8") data = Float32Array.from(new Float64Array(body.buffer.slice(body.byteOffset, body.byteOffset + 8 * count)));
  else fail(`${file} has dtype ${descr}; use float32 or float64`);
  return { data, shape };
}

export function writeNpy(file, data, shape) {
  const dict = `{'descr': '<f4', 'fortran_order': False, 'shape': (${shape.join(", ")}${shape.length === 1 ? "," : ""}), }`;
  const total = 10 + dict.length + 1;
  const pad = (64 - (total % 64)) % 64;
  const header = dict + " ".repeat(pad) + "\n";
  const pre = Buffer.alloc(10);
  pre.writeUInt8(0x93, 0);
  pre.write("NUMPY", 1, "latin1");
  pre.writeUInt8(1, 6);
  pre.writeUInt8(0, 7);
  pre.writeUInt16LE(header.length, 8);
  fs.writeFileSync(file, Buffer.concat([pre, Buffer.from(header, "latin1"), Buffer.from(data.buffer, data.byteOffset, data.byteLength)]));
}

// ------------------------------------------------------------------ seeded uniforms and standard normals
function mulberry32(seed) {
  let s = (seed >>> 0) + 0x9e3779b9;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function uniforms(count, seed) {
  const uniform = mulberry32(seed);
  return Float64Array.from({ length: count }, uniform);
}

export function normals(count, seed) {
  const uniform = mulberry32(seed);
  const out = new Float32Array(count);
  for (let i = 0; i < count; i += 2) { // Box-Muller
    const u = 1 - uniform();
    const r = Math.sqrt(-2 * Math.log(u));
    const th = 2 * Math.PI * uniform();
    out[i] = r * Math.cos(th);
    if (i + 1 < count) out[i + 1] = r * Math.sin(th);
  }
  return out;
}

