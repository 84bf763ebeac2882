// Headless Chromium (Debian's /usr/bin/chromium through playwright-core) and
// esbuild bundles of the SDK and of React test pages.
import path from 'node:path';
import { createRequire } from 'node:module';
import { playwright, root } from './harness.mjs';

const jsRequire = createRequire(path.join(root, 'clients/js/package.json'));

export async function launch() {
  return playwright().chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'],
  });
}

async function build(opts) {
  const esbuild = jsRequire('esbuild');
  const r = await esbuild.build({
    bundle: true,
    write: false,
    format: 'iife',
    target: 'es2020',
    logLevel: 'silent',
    define: { 'process.env.NODE_ENV': '"production"' },
    ...opts,
  });
  return r.outputFiles[0].text;
}

/** The built SDK (dist/) as a script that sets `window.SB`. */
export function sdkBundle() {
  return build({
    stdin: { contents: `export * from ${JSON.stringify(path.join(root, 'clients/js/dist/index.js'))};`, resolveDir: root },
    globalName: 'SB',
  });
}

/** A TSX page using @switchboard/react (its sources) with the built client and React from clients/react. */
export function reactBundle(entry) {
  const reactModules = path.join(root, 'clients/react/node_modules');
  return build({
    entryPoints: [entry],
    jsx: 'automatic',
    nodePaths: [reactModules],
    alias: { '@switchboard/react': path.join(root, 'clients/react/src/index.ts') },
  });
}

/** Puts a script into a page opened on the server's origin (so it is same-origin and a secure context). */
export async function openPage(context, origin, script) {
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error('pageerror:', e.message));
  await page.goto(`${origin}/healthz`);
  await page.evaluate(() => {
    document.documentElement.innerHTML = '<head></head><body><div id="root"></div></body>';
  });
  await page.addScriptTag({ content: script });
  return page;
}
