import { chmodSync, copyFileSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { rollup, type Plugin, type RollupOptions, type WarningHandlerWithDefault } from 'rollup';
import commonjs from '@rollup/plugin-commonjs';
import { nodeResolve } from '@rollup/plugin-node-resolve';
import terser from '@rollup/plugin-terser';
import typescript from '@rollup/plugin-typescript';
import { GPU_CORE_GLOBAL } from './src/engine/gpu-core-global.js';

const require = createRequire(import.meta.url);

/**
 * In Node, gradients come from `@tensorflow/tfjs` (see src/model/gradients.ts). In the browser the
 * worker takes them from tfjs-core directly, which keeps layers/converter/data out of the bundle.
 */
function browserGradients(): Plugin {
  return {
    name: 'localrec-browser-gradients',
    resolveId(source, importer) {
      if (source === './gradients.js' && importer?.includes('/src/model/')) {
        return this.resolve('@tensorflow/tfjs-core/dist/register_all_gradients', importer, { skipSelf: true });
      }
      return null;
    },
  };
}

/** The WASM backend loads its .wasm files from next to the worker bundle (setWasmPaths). */
function copyWasm(): Plugin {
  return {
    name: 'localrec-copy-wasm',
    writeBundle() {
      const dir = join(dirname(require.resolve('@tensorflow/tfjs-backend-wasm/package.json')), 'dist');
      mkdirSync('dist', { recursive: true });
      for (const f of ['tfjs-backend-wasm.wasm', 'tfjs-backend-wasm-simd.wasm', 'tfjs-backend-wasm-threaded-simd.wasm']) {
        copyFileSync(join(dir, f), join('dist', f));
      }
    },
  };
}

// tfjs's bundled emscripten code uses eval-free `this` at top level and circular imports; both harmless.
const tfjsWarnings: WarningHandlerWithDefault = (w, warn) => {
  if (w.code === 'THIS_IS_UNDEFINED' || w.code === 'CIRCULAR_DEPENDENCY' || w.code === 'EVAL') return;
  warn(w);
};

const GPU_BACKENDS = { webgl: '@tensorflow/tfjs-backend-webgl', webgpu: '@tensorflow/tfjs-backend-webgpu' } as const;

/**
 * The GPU backends as files of their own beside the worker (dist/worker-webgl.js,
 * dist/worker-webgpu.js), which the worker fetches only when it tries one (src/engine/worker.ts).
 * Each is a script that takes tfjs-core from the worker's global {@link GPU_CORE_GLOBAL} rather
 * than a chunk importing the worker's module, so that a worker loaded under another URL (a query
 * string) never runs twice. They are built first, and the worker's `src/engine/gpu-core.ts`
 * becomes the exact list of tfjs-core exports they import (with `version_core`, which each file
 * checks before it runs: one from another build of localrec refuses to load, and the worker goes
 * on without that backend).
 */
function gpuBackendFiles(): Plugin {
  let names: string[] = [];
  const version: string = require('@tensorflow/tfjs-core/package.json').version;
  return {
    name: 'localrec-gpu-backends',
    async buildStart() {
      const used = new Set<string>(['version_core']);
      for (const [name, pkg] of Object.entries(GPU_BACKENDS)) {
        // A module that imports tfjs-core as a namespace (`import * as tf`, Cast.js: tf.zeros) shows
        // up as '*' in the bundle's list; the names it reads from it are taken from its source.
        let namespaced = false;
        const namespaceReads: Plugin = {
          name: 'localrec-namespace-reads',
          transform(code) {
            for (const [, ns] of code.matchAll(/import \* as ([\w$]+) from '@tensorflow\/tfjs-core'/g)) {
              namespaced = true;
              for (const [, n] of code.matchAll(new RegExp(`\\b${ns}\\.([\\w$]+)`, 'g'))) used.add(n!);
            }
            return null;
          },
        };
        const bundle = await rollup({
          input: pkg,
          external: ['@tensorflow/tfjs-core'],
          plugins: [namespaceReads, nodeResolve({ browser: true, preferBuiltins: false }), commonjs(), terser()],
          onwarn: tfjsWarnings,
        });
        try {
          const { output } = await bundle.write({
            file: `dist/worker-${name}.js`,
            format: 'iife',
            globals: { '@tensorflow/tfjs-core': GPU_CORE_GLOBAL },
            banner: `if(globalThis.${GPU_CORE_GLOBAL}?.version_core!==${JSON.stringify(version)})throw new Error("localrec: worker-${name}.js needs the worker.js of the same build (tfjs-core ${version})");`,
          });
          const imported = output[0].importedBindings['@tensorflow/tfjs-core'] ?? [];
          if (imported.includes('*') && !namespaced) throw new Error(`${pkg} imports all of tfjs-core in a way the build cannot list`);
          for (const n of imported) if (n !== '*') used.add(n);
        } finally {
          await bundle.close();
        }
      }
      names = [...used].sort();
    },
    load(id) {
      if (!id.endsWith('/src/engine/gpu-core.ts')) return null;
      return `export { ${names.join(', ')} } from '@tensorflow/tfjs-core';`;
    },
  };
}

/**
 * Makes dist/cli.js executable: npm sets the bit when it installs the package, but `npx localrec`
 * in a checkout runs the file through a link made once, and a rebuild writes a new, 0644 file.
 */
function executableCli(): Plugin {
  return {
    name: 'localrec-executable-cli',
    writeBundle() {
      chmodSync('dist/cli.js', 0o755);
    },
  };
}

const ts = (compilerOptions: { sourceMap?: boolean; inlineSources?: boolean } = {}) => typescript({ tsconfig: './tsconfig.build.json', outputToFilesystem: false, compilerOptions });

// Node builds keep every dependency external; they resolve from node_modules at run time.
const external = (id: string) => !id.startsWith('.') && !id.startsWith('/') && !id.startsWith('\0');

const config: RollupOptions[] = [
  {
    input: 'src/index.ts',
    output: { file: 'dist/index.js', format: 'es', sourcemap: true },
    plugins: [ts(), nodeResolve({ browser: true }), terser()],
  },
  {
    input: 'src/engine/worker.ts',
    // No source map: it would be 12.7 MB, nearly all of it tfjs's own sources.
    output: { file: 'dist/worker.js', format: 'es', sourcemap: false, inlineDynamicImports: true },
    // terser keeps the licence comments it keeps by default, and the bundler hints on the worker's
    // imports of the GPU backends' files.
    plugins: [gpuBackendFiles(), browserGradients(), ts({ sourceMap: false, inlineSources: false }), nodeResolve({ browser: true, preferBuiltins: false }), commonjs(), terser({ format: { comments: /@license|@preserve|^!|webpackIgnore|@vite-ignore/ } }), copyWasm()],
    onwarn: tfjsWarnings,
  },
  {
    input: { node: 'src/node.ts', cli: 'src/cli.ts' },
    output: { dir: 'dist', format: 'es', sourcemap: true, entryFileNames: '[name].js', chunkFileNames: 'chunks/[name]-[hash].js' },
    external,
    plugins: [ts(), executableCli()],
  },
];
export default config;
