// Headless Chromium (Debian's /usr/bin/chromium) through playwright-core.
import { chromium } from 'playwright-core';

export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

// Bundles a TSX entry (React included) into one script for page.setContent.
export async function bundle(entry) {
  const esbuild = await import('esbuild');
  const r = await esbuild.build({
    entryPoints: [entry], bundle: true, write: false, format: 'iife', target: 'es2020',
    jsx: 'automatic', define: { 'process.env.NODE_ENV': '"production"' }, logLevel: 'silent',
  });
  return r.outputFiles[0].text;
}

export async function reactPage(browser, script, cfg) {
  const page = await browser.newPage();
  await page.setContent(`<!doctype html><html><body><div id="root"></div><script>window.__SB__=${JSON.stringify(cfg)}</script><script>${script.replace(/<\/script/g, '<\\/script')}</script></body></html>`);
  return page;
}
