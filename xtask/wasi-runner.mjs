#!/usr/bin/env -S node --no-warnings
// Runs a wasm32-wasip1 test binary under Node's built-in WASI (cargo's runner for that target),
// so sluice-core's unit tests also run as 32-bit wasm without installing a wasm runtime.
import { readFile } from "node:fs/promises";
import { WASI } from "node:wasi";
import { argv, env, exit } from "node:process";

const [, , file, ...args] = argv;
const wasi = new WASI({ version: "preview1", args: [file, ...args], env, returnOnExit: true });
const module = await WebAssembly.compile(await readFile(file));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
exit(wasi.start(instance));
