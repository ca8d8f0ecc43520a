import { chmodSync, copyFileSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import type { Plugin, RollupOptions } from 'rollup';
import commonjs from '@rollup/plugin-commonjs';
import { nodeResolve } from '@rollup/plugin-node-resolve';
import terser from '@rollup/plugin-terser';
import typescript from '@rollup/plugin-typescript';

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
    plugins: [browserGradients(), ts({ sourceMap: false, inlineSources: false }), nodeResolve({ browser: true, preferBuiltins: false }), commonjs(), terser(), copyWasm()],
    onwarn(w, warn) {
      // tfjs's bundled emscripten code uses eval-free `this` at top level and circular imports; both harmless.
      if (w.code === 'THIS_IS_UNDEFINED' || w.code === 'CIRCULAR_DEPENDENCY' || w.code === 'EVAL') return;
      warn(w);
    },
  },
  {
    input: { node: 'src/node.ts', cli: 'src/cli.ts' },
    output: { dir: 'dist', format: 'es', sourcemap: true, entryFileNames: '[name].js', chunkFileNames: 'chunks/[name]-[hash].js' },
    external,
    plugins: [ts(), executableCli()],
  },
];
export default config;
