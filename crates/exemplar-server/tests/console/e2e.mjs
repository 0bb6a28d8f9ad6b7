// The console as a clerk uses it, in headless Chromium against a real `exemplar serve`.
// Started by the Rust test `console.rs`, which runs the server and writes the photos:
//   EXEMPLAR_URL   the server (port 0, temp data dir, --keep-unknown)
//   FIXTURES       cover-1.png and cover-2.png (two photos of one item), query.png (a
//                  phone-like shot of it), other.png (an item not in the catalogue)
//   SCENARIO       desktop | phone (360 px wide) | protected (writes need API_KEY)
//   CHROMIUM       the browser (Debian's chromium)
//   ITEM_CORNERS   where the item's corners are in query.png (JSON)
//   SCREENSHOTS    optional: a folder for the search result and the inbox
import assert from 'node:assert/strict';
import path from 'node:path';
import { chromium } from 'playwright-core';

const base = process.env.EXEMPLAR_URL;
const fixtures = process.env.FIXTURES;
const scenario = process.env.SCENARIO || 'desktop';
const shots = process.env.SCREENSHOTS;
const photo = (name) => path.join(fixtures, name);
const phone = scenario === 'phone';
const label = `Chelsea ${scenario}`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  // The machine has no network beyond loopback: keep Chromium from trying.
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const context = await browser.newContext({
  viewport: phone ? { width: 360, height: 740 } : { width: 1280, height: 860 },
  deviceScaleFactor: 1,
});
const page = await context.newPage();
const problems = [];
page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
page.on('console', (m) => { if (m.type() === 'error' && !/status of 40[14]/.test(m.text())) problems.push(`console: ${m.text()}`); });
page.on('dialog', (d) => d.accept()); // the delete confirmations
const step = (name) => console.log(`step: ${name}`);

async function searchFor(file) {
  await page.goto(`${base}/#/search`);
  await page.getByLabel('Take or choose a photo').setInputFiles(photo(file));
  const verdict = page.locator('#verdict');
  await verdict.waitFor({ timeout: 60_000 });
  return (await verdict.textContent()).trim();
}

async function noSideways() {
  const width = await page.evaluate(() => document.scrollingElement.scrollWidth);
  assert.ok(width <= 360, `the page is ${width} px wide at a 360 px viewport`);
}

try {
  step('the console is served with its assets');
  await page.goto(`${base}/`);
  await page.getByRole('navigation', { name: 'Console' }).waitFor();

  step('add a class with two photos');
  await page.goto(`${base}/#/new`);
  await page.getByLabel('Label').fill(label);
  await page.getByLabel('Metadata key 1').fill('format');
  await page.getByLabel('Metadata value 1').fill('LP');
  await page.getByLabel('Photos').setInputFiles([photo('cover-1.png'), photo('cover-2.png')]);
  await page.getByRole('button', { name: 'Create the class' }).click();
  if (scenario === 'protected') {
    step('the console asks for the key once, then the write goes through');
    const dialog = page.getByRole('dialog', { name: 'API key' });
    await dialog.waitFor();
    await page.getByLabel('Key', { exact: true }).fill(process.env.API_KEY);
    await page.getByRole('button', { name: 'Use this key' }).click();
  }
  await page.getByRole('heading', { name: 'Photos (2)' }).waitFor({ timeout: 60_000 });
  assert.match(page.url(), /#\/class\/\d+$/);
  assert.equal(await page.locator('#exemplars img[src^="blob:"]').count(), 2, 'both thumbnails shown');
  if (scenario === 'protected') {
    const kept = await page.evaluate(() => sessionStorage.getItem('exemplar-api-key'));
    assert.equal(kept, process.env.API_KEY, 'the key is kept by this tab alone');
    const stored = await page.evaluate(() => localStorage.length);
    assert.equal(stored, 0, 'nothing in local storage');
  }

  step('search a phone photo of it: match, with its outline drawn');
  assert.equal(await searchFor('query.png'), `Match: ${label}`);
  const outline = page.locator('#outline');
  const points = (await outline.getAttribute('points')).trim().split(/\s+/)
    .map((p) => p.split(',').map(Number));
  assert.equal(points.length, 4, 'a quadrilateral');
  // Where the item is in the photo: the outline follows it (within the blur of the
  // match), whichever of its two exemplars verified.
  const expected = JSON.parse(process.env.ITEM_CORNERS);
  const area = (q) => Math.abs(q.reduce((sum, [x, y], i) => {
    const [nx, ny] = q[(i + 1) % q.length];
    return sum + x * ny - nx * y;
  }, 0)) / 2;
  const [xs, ys] = [expected.map((p) => p[0]), expected.map((p) => p[1])];
  const near = points.filter(([x, y]) => x > Math.min(...xs) - 40 && x < Math.max(...xs) + 40
    && y > Math.min(...ys) - 40 && y < Math.max(...ys) + 40);
  assert.equal(near.length, 4, `the outline ${JSON.stringify(points)} lies on the item ${JSON.stringify(expected)}`);
  assert.ok(area(points) > 0.4 * area(expected), `the outline ${JSON.stringify(points)} covers the item`);
  await outline.scrollIntoViewIfNeeded();
  const drawn = await outline.boundingBox();
  const shown = await page.locator('#search-image').boundingBox();
  assert.ok(drawn && drawn.width > shown.width / 4 && drawn.height > shown.height / 4,
    `the outline is drawn over the photo (${JSON.stringify(drawn)} on ${JSON.stringify(shown)})`);
  // What is on screen at the outline's centre is the outline, over the photo.
  const stroke = await page.evaluate(({ x, y }) => {
    const el = document.elementFromPoint(x, y);
    return el && el.id;
  }, { x: drawn.x + drawn.width / 2, y: drawn.y + drawn.height / 2 });
  assert.equal(stroke, 'outline', 'the outline is on top of the photo');
  await page.locator('.hits img[src^="blob:"]').first().waitFor();
  await page.getByText('Round trip').waitFor();
  if (phone) await noSideways();
  if (shots) await page.screenshot({ path: path.join(shots, `search-match-${scenario}.png`), fullPage: true });

  step('draw the part to search by hand: that part is searched');
  const size = await page.locator('#search-image').evaluate((img) => [img.naturalWidth, img.naturalHeight]);
  await page.getByRole('button', { name: 'Draw the part to search' }).click();
  const photoBox = await page.locator('#search-image').boundingBox();
  const at = (fx, fy) => [photoBox.x + fx * photoBox.width, photoBox.y + fy * photoBox.height];
  await page.mouse.move(...at(0.1, 0.05));
  await page.mouse.down();
  await page.mouse.move(...at(0.5, 0.5), { steps: 4 });
  await page.mouse.move(...at(0.92, 0.92), { steps: 4 });
  await page.mouse.up();
  await page.locator('.crop').waitFor();
  const searched = await page.locator('#searched-part').textContent({ timeout: 60_000 });
  const crop = searched.match(/\d+/g).map(Number);
  assert.equal(crop.length, 4, searched);
  assert.ok(crop[0] < 0.15 * size[0] && crop[2] > 0.75 * size[0] && crop[3] > 0.8 * size[1],
    `the drawn part ${crop} of the ${size} photo`);
  await page.locator('#outline').waitFor();
  assert.equal((await page.locator('#verdict').textContent()).trim(), `Match: ${label}`);

  step('search a photo of something not in the catalogue: unknown, kept in the inbox');
  assert.equal(await searchFor('other.png'), 'Unknown: not recognised');

  step('promote it from the inbox to a new class');
  await page.goto(`${base}/#/unknowns`);
  const card = page.locator('[data-unknown]').first();
  await card.waitFor();
  await card.locator('img[src^="blob:"]').waitFor();
  if (phone) await noSideways();
  if (shots) await page.screenshot({ path: path.join(shots, `inbox-${scenario}.png`), fullPage: true });
  await card.getByLabel('New class label').fill(`Coffee ${scenario}`);
  await card.getByRole('button', { name: 'New class' }).click();
  await page.getByText(`New class Coffee ${scenario}`).waitFor();

  step('search it again: now a match');
  assert.equal(await searchFor('other.png'), `Match: Coffee ${scenario}`);

  step('find the class in the catalogue by label and metadata, then delete it');
  await page.goto(`${base}/#/catalogue`);
  await page.getByLabel('Label contains').fill('chelsea');
  await page.getByLabel('Metadata key=value').fill('format=LP');
  await page.getByRole('button', { name: 'Find' }).click();
  await page.locator('#classes .tile').first().waitFor();
  assert.equal(await page.locator('#classes .tile').count(), 1);
  await page.locator('#classes .tile img[src^="blob:"]').waitFor();
  await page.getByRole('link', { name: label }).click();
  await page.getByRole('button', { name: 'Delete this class' }).click();
  await page.getByRole('heading', { name: 'Catalogue' }).waitFor();
  assert.match(page.url(), /#\/catalogue$/);

  step('the deleted class is no longer found');
  assert.equal(await searchFor('query.png'), 'Unknown: not recognised');

  step('an error from the API is shown as the API words it');
  await page.goto(`${base}/#/class/999999`);
  await page.getByRole('alert').filter({ hasText: 'class 999999 not found' }).waitFor();

  assert.deepEqual(problems, [], 'no script errors');
  console.log(`console e2e (${scenario}): passed`);
} catch (e) {
  // What the clerk would have seen.
  console.log(`at ${page.url()}; shown error: ${await page.locator('#error').textContent().catch(() => '?')}`);
  console.log(`problems: ${problems.join(' | ')}`);
  if (process.env.FAILURE_SHOT) await page.screenshot({ path: process.env.FAILURE_SHOT, fullPage: true });
  throw e;
} finally {
  await browser.close();
}
