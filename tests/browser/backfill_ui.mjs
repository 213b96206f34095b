// Headless Chromium drives the Airflow 3 UI: log in, open a pipeline DAG, create a backfill from the
// trigger dialog, and watch its runs succeed in the DAG's Runs tab. Prints one JSON line at the end.
// Driven by tests/test_airflow_live.py; settings come from the environment (see `need` below).
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';

const need = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`environment variable ${name} is required`);
  return value;
};
const URL = need('AIRFLOW_URL');
const DAG_ID = need('DAG_ID');
const [FROM, TO] = [need('FROM_DATE'), need('TO_DATE')]; // YYYY-MM-DD, UTC midnight
const SHOTS = process.env.SCREENSHOTS || '/tmp/driftless-screenshots';
const deadline = Date.now() + 1000 * Number(process.env.TIMEOUT_S || 420);
mkdirSync(SHOTS, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
});
const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
page.setDefaultTimeout(60_000);
const shot = (name) => page.screenshot({ path: `${SHOTS}/${name}.png` });
const log = (msg) => console.log(`[ui] ${msg}`);

async function pickDate(index, day) {
  await page.getByTestId('datetime-input').nth(index).click();
  const date = page.getByPlaceholder('YYYY/MM/DD').last();
  await date.fill(day.replaceAll('-', '/'));
  await page.getByPlaceholder('HH:mm').last().fill('00:00');
  await page.getByRole('heading', { name: /Backfill/ }).click(); // close the picker
}

try {
  await page.goto(`${URL}/`);
  await page.fill('input[name=username]', need('AIRFLOW_USER'));
  await page.fill('input[name=password]', need('AIRFLOW_PASSWORD'));
  await page.click('button[type=submit]');
  await page.waitForURL((u) => !u.pathname.startsWith('/auth'));
  log('logged in');

  await page.goto(`${URL}/dags/${DAG_ID}`);
  await page.getByRole('button', { name: 'Trigger Dag' }).click();
  const dialog = page.getByRole('dialog').first();
  await dialog.getByText('Backfill', { exact: true }).click();
  await pickDate(0, FROM);
  await pickDate(1, TO);
  await dialog.locator('input[name=max_active_runs]').fill('2');
  await shot('1-backfill-form');
  await dialog.getByRole('button', { name: 'Run Backfill' }).click();
  await dialog.waitFor({ state: 'hidden' });
  log(`backfill ${FROM} -> ${TO} created`);

  // Watch the Runs tab until every backfill run shows success (a failure ends the test at once).
  let runs = 0;
  let succeeded = 0;
  while (true) {
    await page.goto(`${URL}/dags/${DAG_ID}/runs`);
    await page.getByRole('table').first().waitFor();
    await page.waitForTimeout(1500);
    const rows = await page.getByRole('row').filter({ hasText: 'backfill' }).allInnerTexts();
    runs = rows.length;
    succeeded = rows.filter((r) => /success/i.test(r)).length;
    const failed = rows.filter((r) => /failed/i.test(r)).length;
    log(`${runs} backfill run(s), ${succeeded} succeeded, ${failed} failed`);
    if (failed) throw new Error(`a backfill run failed: ${rows.join(' | ')}`);
    if (runs > 0 && succeeded === runs) break;
    if (Date.now() > deadline) throw new Error(`backfill runs not finished in time: ${rows.join(' | ')}`);
    await page.waitForTimeout(5000);
  }
  await shot('2-runs-succeeded');
  console.log(JSON.stringify({ backfill_runs: runs, succeeded_in_ui: succeeded, screenshots: SHOTS }));
} catch (err) {
  await shot('error').catch(() => {});
  console.error(`[ui] ${err.stack || err}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
