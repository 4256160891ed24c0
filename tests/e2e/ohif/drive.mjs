// Drives OHIF in Debian's Chromium, as a user would, for tests/e2e/test_ohif_e2e.py.
//
//   node drive.mjs <config.json>
//
// The config names the browser, the OHIF site, the store's root, the study and what to expect
// (see test_ohif_e2e.py). The script never judges: it records what the browser saw in
// <outDir>/report.json (pixel statistics read back from the page, every request to the store
// and its answer, console errors) and saves screenshots beside it; the test asserts. It exits
// non-zero only when the browser itself cannot be driven.
//
// playwright-core is the driver alone: it downloads no browser, and it is launched with
// executablePath (Debian's /usr/bin/chromium). Each launch gets a fresh temporary profile
// (Playwright's own --user-data-dir), removed on close.
import { readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const require = createRequire(join(config.nodeModules, 'noop.js'));
const { chromium } = require('playwright-core');

const CHROMIUM_ARGS = [
  '--no-sandbox', // CI runs as root, where Chromium's sandbox cannot start
  '--enable-unsafe-swiftshader', // WebGL (Cornerstone's renderer) on the CPU, no GPU needed
  '--use-angle=swiftshader',
  '--disable-background-networking', // no traffic but the page's own: the machine has no network
  '--disable-component-update',
  '--disable-sync',
  '--disable-quic',
  '--no-first-run',
];
const THUMBNAIL = '[data-cy="study-browser-thumbnail"]';
const VIEWPORT_CANVAS = '[data-cy="viewport-pane"] canvas.cornerstone-canvas';
const BRIGHT = 40; // a pixel is lit when a channel reaches this (of 255), else dark

const report = {
  browser: null,
  studyList: { patientShown: false, rowText: null },
  previewThumbnails: [],
  viewerThumbnails: [],
  viewport: null,
  storeResponses: [],
  failedRequests: [],
  consoleErrors: [],
  pageErrors: [],
  screenshots: {},
  stepErrors: [],
  timings: {},
};

const started = Date.now();
const limits = [config.minLit, config.minDark]; // what "shows a picture" means to the test
const toStore = (url) => url === config.storeRoot || url.startsWith(config.storeRoot + '/');

// Pixel statistics of an <img> or a 2D <canvas>, read back in the page.
// A blob: or data: thumbnail is same-origin, so reading it back is allowed.
function pixelStats([selector, bright]) {
  const stats = (element) => {
    let width;
    let height;
    let context;
    if (element instanceof HTMLImageElement) {
      if (!element.complete || element.naturalWidth === 0) {
        return { loaded: false };
      }
      width = element.naturalWidth;
      height = element.naturalHeight;
      const copy = document.createElement('canvas');
      copy.width = width;
      copy.height = height;
      context = copy.getContext('2d');
      context.drawImage(element, 0, 0);
    } else {
      width = element.width;
      height = element.height;
      context = element.getContext('2d');
      if (!context || width === 0 || height === 0) {
        return { loaded: false };
      }
    }
    const data = context.getImageData(0, 0, width, height).data;
    let lit = 0;
    let dark = 0;
    for (let i = 0; i < data.length; i += 4) {
      const level = Math.max(data[i], data[i + 1], data[i + 2]);
      if (level >= bright) {
        lit += 1;
      } else {
        dark += 1;
      }
    }
    const pixels = width * height;
    return { loaded: true, width, height, litFraction: lit / pixels, darkFraction: dark / pixels };
  };
  return Array.from(document.querySelectorAll(selector)).map((element) => {
    const thumbnail = element.closest('[data-cy="study-browser-thumbnail"]');
    return {
      series: thumbnail ? thumbnail.getAttribute('data-series') : null,
      id: thumbnail ? thumbnail.id : null,
      src: element instanceof HTMLImageElement ? element.src.slice(0, 16) : null,
      ...stats(element),
    };
  });
}

async function step(name, action) {
  const begun = Date.now();
  try {
    await action();
  } catch (error) {
    report.stepErrors.push({ step: name, error: String(error).slice(0, 2000) });
  } finally {
    report.timings[name] = Date.now() - begun;
  }
}

async function screenshot(page, name) {
  const path = join(config.outDir, `${name}.png`);
  try {
    await page.screenshot({ path });
    report.screenshots[name] = path;
  } catch (error) {
    report.stepErrors.push({ step: `screenshot ${name}`, error: String(error).slice(0, 500) });
  }
}

// Wait until `count` thumbnails each show a picture; record what they show either way.
async function thumbnails(page, key, count) {
  const selector = `${THUMBNAIL} img`;
  const enough = ([sel, bright, n, statsSource, minLit, minDark]) => {
    const stats = new Function(`return (${statsSource})`)()([sel, bright]);
    return (
      document.querySelectorAll('[data-cy="study-browser-thumbnail"]').length >= n &&
      stats.length >= n &&
      stats.every((s) => s.loaded && s.litFraction >= minLit && s.darkFraction >= minDark)
    );
  };
  try {
    await page.waitForFunction(enough, [selector, BRIGHT, count, pixelStats.toString(), ...limits], {
      timeout: config.stepTimeoutMs,
      polling: 500,
    });
  } finally {
    report[key] = {
      thumbnails: await page.locator(THUMBNAIL).count(),
      images: await page.evaluate(pixelStats, [selector, BRIGHT]),
    };
    const images = page.locator(selector);
    const n = await images.count();
    for (let i = 0; i < n; i += 1) {
      const path = join(config.outDir, `${key}-${i + 1}.png`);
      await images.nth(i).screenshot({ path, timeout: 5000 }).catch(() => null);
      report.screenshots[`${key}-${i + 1}`] = path;
    }
  }
}

const browser = await chromium.launch({
  executablePath: config.chromium,
  headless: true,
  args: CHROMIUM_ARGS,
  timeout: 60000,
});
report.browser = browser.version();
try {
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(config.stepTimeoutMs);
  page.on('response', (response) => {
    const request = response.request();
    if (!toStore(response.url())) {
      return;
    }
    const entry = {
      method: request.method(),
      url: response.url(),
      status: response.status(),
      contentType: response.headers()['content-type'] || null,
    };
    report.storeResponses.push(entry);
    if (entry.status >= 400) {
      report.failedRequests.push(entry);
    }
  });
  page.on('requestfailed', (request) => {
    const error = request.failure()?.errorText ?? 'failed';
    // A request OHIF cancels itself (it navigated, or stopped a prefetch) is not a failure.
    if (toStore(request.url()) && error !== 'net::ERR_ABORTED') {
      report.failedRequests.push({ method: request.method(), url: request.url(), status: 0, error });
    }
  });
  page.on('console', (message) => {
    if (message.type() === 'error') {
      report.consoleErrors.push({ text: message.text().slice(0, 1000), url: message.location().url });
    }
  });
  page.on('pageerror', (error) => report.pageErrors.push(String(error).slice(0, 1000)));

  const row = page.locator('tr', { hasText: config.patientText }).first();
  await step('study list', async () => {
    await page.goto(`${config.siteOrigin}/`);
    await row.waitFor();
    report.studyList = { patientShown: true, rowText: (await row.innerText()).replace(/\s+/g, ' ') };
  });
  await screenshot(page, 'study-list');

  await step('study list preview', async () => {
    await row.click();
    await thumbnails(page, 'previewThumbnails', config.seriesCount);
  });
  await screenshot(page, 'study-list-preview');

  await step('open study', async () => {
    await page.getByRole('button', { name: config.modeButton }).first().click();
    await page.waitForURL(/\/viewer/);
    await page.locator(VIEWPORT_CANVAS).first().waitFor();
  });
  await step('dismiss tour', async () => {
    // OHIF's onboarding tour covers the viewport on a first visit.
    const skip = page.getByText('Skip all');
    if (await skip.isVisible({ timeout: 5000 }).catch(() => false)) {
      await skip.click();
    }
  });
  await step('viewer thumbnails', async () => {
    await thumbnails(page, 'viewerThumbnails', config.seriesCount);
  });
  await step('viewport image', async () => {
    // Scroll from the first slice to the middle of the stack, as a reader would.
    await page.locator(VIEWPORT_CANVAS).first().hover();
    for (let i = 0; i < config.scrollSlices; i += 1) {
      await page.mouse.wheel(0, 120);
      await page.waitForTimeout(50);
    }
    const lit = ([selector, bright, statsSource, minLit, minDark]) => {
      const stats = new Function(`return (${statsSource})`)()([selector, bright]);
      return (
        stats.length > 0 &&
        stats[0].loaded &&
        stats[0].litFraction >= minLit &&
        stats[0].darkFraction >= minDark
      );
    };
    try {
      await page.waitForFunction(lit, [VIEWPORT_CANVAS, BRIGHT, pixelStats.toString(), ...limits], {
        polling: 500,
      });
    } finally {
      report.viewport = (await page.evaluate(pixelStats, [VIEWPORT_CANVAS, BRIGHT]))[0] ?? null;
      const path = join(config.outDir, 'viewport.png');
      await page.locator(VIEWPORT_CANVAS).first().screenshot({ path, timeout: 5000 }).catch(() => null);
      report.screenshots.viewport = path;
    }
  });
  await step('settle', async () => {
    // Late requests (prefetch of the other slices) fail or succeed before the report is written.
    await page.waitForLoadState('networkidle', { timeout: 15000 });
    await page.mouse.move(1, 1);
    await page.waitForTimeout(500);
  });
  await screenshot(page, 'viewer');
} finally {
  report.timings.total = Date.now() - started;
  writeFileSync(join(config.outDir, 'report.json'), JSON.stringify(report, null, 2));
  await browser.close();
}
