// Headless Chromium in the Airflow 3 UI: log in, open the failed consistency_report task, click its
// "Consistency report" link, find the drifted value in the report; then open a load task's log and
// find the line with the row count. Prints one JSON line at the end. Driven by
// tests/test_airflow_live_report.py; settings come from the environment (see `need` below).
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';

const need = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`environment variable ${name} is required`);
  return value;
};
const URL = need('AIRFLOW_URL');
const SHOTS = process.env.SCREENSHOTS || '/tmp/driftless-screenshots';
mkdirSync(SHOTS, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
});
const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
const page = await context.newPage();
page.setDefaultTimeout(60_000);
const shot = (p, name) => p.screenshot({ path: `${SHOTS}/${name}.png` });
const log = (msg) => console.log(`[ui] ${msg}`);

try {
  await page.goto(`${URL}/`);
  await page.fill('input[name=username]', need('AIRFLOW_USER'));
  await page.fill('input[name=password]', need('AIRFLOW_PASSWORD'));
  await page.click('button[type=submit]');
  await page.waitForURL((u) => !u.pathname.startsWith('/auth'));
  log('logged in');

  // The report task of the run that found drift: its Details tab shows the extra link to the report.
  await page.goto(`${URL}/dags/consistency_report/runs/${encodeURIComponent(need('REPORT_RUN_ID'))}/tasks/diff_and_report/details`);
  const link = page.getByRole('link', { name: 'Consistency report', exact: true })
    .or(page.getByRole('button', { name: 'Consistency report', exact: true })).first();
  await link.waitFor();
  await shot(page, '1-report-task');
  const popupPromise = context.waitForEvent('page', { timeout: 15_000 }).catch(() => null);
  await link.click();
  let report = await popupPromise;
  if (!report) report = page; // the link opened in the same tab
  await report.waitForURL(/\/driftless\/reports\//);
  await report.waitForLoadState('domcontentloaded');
  const reportUrl = report.url();
  const expected = need('EXPECT_IN_REPORT');
  const changedRow = report.getByRole('row').filter({ hasText: expected }).first();
  await changedRow.waitFor();
  const rowText = await changedRow.innerText();
  await shot(report, '2-report');
  log(`report row: ${rowText.replace(/\s+/g, ' ')}`);

  // A load task's log shows its summary line with the row count.
  await page.bringToFront();
  await page.goto(`${URL}/dags/${need('LOAD_DAG_ID')}/runs/${encodeURIComponent(need('LOAD_RUN_ID'))}/tasks/load`);
  const line = page.getByText(need('EXPECT_IN_LOG')).first();
  await line.waitFor();
  const logText = await line.innerText();
  await shot(page, '3-load-log');
  log(`log line: ${logText}`);
  console.log(JSON.stringify({
    report_has_drifted_value: rowText.includes(expected) && /changed/.test(rowText),
    report_url: reportUrl,
    log_has_row_count: logText.includes(need('EXPECT_IN_LOG')),
    screenshots: SHOTS,
  }));
} catch (err) {
  await shot(page, 'error').catch(() => {});
  console.error(`[ui] ${err.stack || err}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
