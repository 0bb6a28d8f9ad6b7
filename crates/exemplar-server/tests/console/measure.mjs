// What the console costs a user, in headless Chromium on this machine: the bytes a first
// visit downloads, and the time to the first result: the page's load, plus the time from
// the photo chosen to its answer painted (the page's own performance marks; the user's
// time to pick a photo is not counted). Beside it, the same photo's search through the
// API alone (the baseline, measured in the same run, the browser closed).
//   node measure.mjs URL PHOTO...     (CHROMIUM: the browser, default /usr/bin/chromium)
// Each photo is one cold visit (a new browser context: nothing cached). Last line: JSON.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { chromium } from 'playwright-core';

const [base, ...photos] = process.argv.slice(2);
if (!base || !photos.length) throw new Error('usage: node measure.mjs URL PHOTO...');
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

async function apiSearch(file) {
  const form = new FormData();
  form.append('image', new Blob([await readFile(file)]), path.basename(file));
  const started = performance.now();
  const response = await fetch(`${base}/search`, { method: 'POST', body: form });
  await response.json();
  return performance.now() - started;
}

const runs = [];
for (const photo of photos) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const page = await context.newPage();
  await page.goto(`${base}/`, { waitUntil: 'load' });
  // The page's own clock: its load, then from the photo chosen to the answer painted.
  const page_ms = await page.evaluate(() => performance.getEntriesByType('navigation')[0].loadEventEnd);
  const bytes = await page.evaluate(() => [
    ...performance.getEntriesByType('navigation'), ...performance.getEntriesByType('resource'),
  ].reduce((sum, e) => sum + e.decodedBodySize, 0));
  await page.getByLabel('Take or choose a photo').setInputFiles(photo);
  await page.locator('#verdict').waitFor({ timeout: 60_000 });
  const search_ms = await page.waitForFunction(() => {
    const m = performance.getEntriesByName('exemplar-search-to-result');
    return m.length && m[0].duration;
  }).then((h) => h.jsonValue());
  const verdict = (await page.locator('#verdict').textContent()).trim();
  await context.close();
  const api = await apiSearch(photo);
  runs.push({ photo: path.basename(photo), bytes, load_ms: page_ms,
    first_result_ms: page_ms + search_ms, console_search_ms: search_ms, api_search_ms: api, verdict });
  console.log(JSON.stringify(runs.at(-1)));
}
await browser.close();

const stats = (key) => {
  const v = runs.map((r) => r[key]).sort((a, b) => a - b);
  return { median: v[Math.floor(v.length / 2)], min: v[0], max: v.at(-1) };
};
const summary = {
  runs: runs.length,
  page_bytes: runs[0].bytes,
  load_ms: stats('load_ms'),
  first_result_ms: stats('first_result_ms'),
  console_search_ms: stats('console_search_ms'),
  api_search_ms: stats('api_search_ms'),
  matches: runs.filter((r) => r.verdict.startsWith('Match')).length,
};
summary.console_over_api = summary.console_search_ms.median / summary.api_search_ms.median;
console.log(JSON.stringify(summary));
