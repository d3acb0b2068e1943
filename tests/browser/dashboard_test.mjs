// Browser test of the broker dashboard (issue 9), registered in CTest
// (tests/CMakeLists.txt):
//
//   node tests/browser/dashboard_test.mjs --klynaa build/klynaa [--screenshot docs/dashboard.png]
//
// Starts the reference Django app and `klynaa run` (admin token, one attempt per
// job, ephemeral ports) wired to each other, puts load on the ingress with the
// Python client (load.py), and drives Debian's /usr/bin/chromium with
// playwright-core (installed by scripts/setup.sh into tests/browser/node_modules;
// it never downloads a browser): the page asks for the token, shows live numbers
// that move, a node, and a dead escrow release that a click replays (checked
// through GET /dlq and Django's state). Every process and temp dir it made is
// removed at the end, also on failure.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '..', '..');
const PYTHON = '/usr/bin/python3';
const CHROMIUM = process.env.KLYNAA_CHROMIUM || '/usr/bin/chromium';

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}
const KLYNAA = path.resolve(arg('--klynaa', path.join(ROOT, 'build', 'klynaa')));
const SCREENSHOT = arg('--screenshot', process.env.KLYNAA_DASHBOARD_SCREENSHOT || '');

const started = Date.now();
const log = (...a) => console.log(`[${((Date.now() - started) / 1000).toFixed(1).padStart(5)} s]`, ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(what, fn, timeoutMs = 30000, everyMs = 100) {
  const end = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${last ? ': ' + last.message : ''}`);
    await sleep(everyMs);
  }
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// ---------------------------------------------------------------- processes
const children = [];
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'klynaa-browser-'));

// Children get SIGKILL when this process dies, however it dies (prctl
// PR_SET_PDEATHSIG survives the exec; the pid stays the same).
const PDEATHSIG = 'import ctypes, os, signal, sys; ctypes.CDLL(None).prctl(1, signal.SIGKILL); os.execv(sys.argv[1], sys.argv[1:])';

function start(name, cmd, args, env, { stdin = 'ignore' } = {}) {
  const logPath = path.join(tmp, name + '.log');
  const fd = fs.openSync(logPath, 'a');
  const child = spawn(PYTHON, ['-c', PDEATHSIG, cmd, ...args], { env: { ...process.env, ...env }, stdio: [stdin, fd, fd] });
  fs.closeSync(fd);
  const c = { name, child, logPath, exited: null };
  child.on('exit', (code, signal) => { c.exited = signal ? 128 + (os.constants.signals[signal] || 0) : code; });
  children.push(c);
  return c;
}
const readLog = (c) => { try { return fs.readFileSync(c.logPath, 'utf8'); } catch { return ''; } };
function assertNoSanitizerReport(c) {
  const text = readLog(c);
  for (const bad of ['AddressSanitizer', 'runtime error:', 'LeakSanitizer'])
    assert.ok(!text.includes(bad), `sanitizer report in the ${c.name} log:\n${text.slice(-4000)}`);
}

async function stop(c, timeoutMs = 15000) {
  if (c.exited !== null || c.child.exitCode !== null || c.child.signalCode !== null) return c.exited;
  c.child.kill('SIGTERM');
  try {
    await waitFor(`${c.name} to exit`, () => c.exited !== null, timeoutMs, 50);
  } catch {
    c.child.kill('SIGKILL');
    await waitFor(`${c.name} to die`, () => c.exited !== null, 5000, 50).catch(() => {});
  }
  return c.exited;
}

function killAllNow() {
  for (const c of children) if (c.exited === null) { try { c.child.kill('SIGKILL'); } catch {} }
}
process.on('exit', () => {
  killAllNow();
  try { fs.rmSync(tmp, { recursive: true, force: true }); } catch {}
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => { killAllNow(); process.exit(130); });

// --------------------------------------------------------------------- HTTP
async function http(method, url, { token, body } = {}) {
  const headers = {};
  if (token) headers.Authorization = 'Bearer ' + token;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch {}
  return { status: res.status, json, text, type: res.headers.get('content-type') || '', headers: res.headers };
}

// --------------------------------------------------------------------- main
async function main() {
  assert.ok(fs.existsSync(KLYNAA), `no klynaa binary at ${KLYNAA}`);
  assert.ok(fs.existsSync(CHROMIUM), `no browser at ${CHROMIUM}: run scripts/setup.sh`);
  let chromium;
  try {
    ({ chromium } = await import('playwright-core'));
  } catch (e) {
    throw new Error('playwright-core is not installed in tests/browser/node_modules: run scripts/setup.sh (' + e.message + ')');
  }

  const token = crypto.randomBytes(16).toString('hex');
  const djangoPort = await freePort();
  const django = `http://127.0.0.1:${djangoPort}`;
  const dataDir = path.join(tmp, 'data');

  log('starting klynaa run');
  const klynaa = start('klynaa', KLYNAA, ['run', '--data-dir', dataDir, '--ingress', 'tcp://127.0.0.1:*'], {
    DJANGO_API_URL: django,
    DJANGO_API_KEY: 'test-key',
    KLYNAA_ADMIN_BIND: '127.0.0.1:0',
    KLYNAA_ADMIN_TOKEN: token,
    // One attempt: a failure is dead at once. The docs' screenshot wants a few
    // retries on show too: two attempts, 10 s apart.
    KLYNAA_RETRY_MAX_ATTEMPTS: SCREENSHOT ? '2' : '1',
    KLYNAA_RETRY_BASE_DELAY_MS: SCREENSHOT ? '10000' : '100',
    KLYNAA_DJANGO_TIMEOUT_MS: '3000',
    KLYNAA_SHUTDOWN_GRACE_SECONDS: '5',
  });
  const endpoints = await waitFor('broker.json', () => {
    if (klynaa.exited !== null) throw new Error('klynaa exited ' + klynaa.exited + ':\n' + readLog(klynaa));
    const j = JSON.parse(fs.readFileSync(path.join(dataDir, 'broker.json'), 'utf8'));
    return j.pid === klynaa.child.pid && j.admin ? j : null;
  }, 60000);
  const admin = `http://${endpoints.admin}`;
  log('broker up: ingress', endpoints.ingress, 'admin', admin);

  log('starting the reference Django app on port', djangoPort);
  fs.mkdirSync(path.join(tmp, 'django'), { recursive: true });
  const dj = start('django', PYTHON, [path.join(ROOT, 'examples', 'django', 'serve.py'), `127.0.0.1:${djangoPort}`, '--seed', '--quiet'], {
    DJANGO_API_KEY: 'test-key',
    KLYNAA_INGRESS: endpoints.ingress,
    KLYNAA_INGRESS_TIMEOUT_S: '5',
    KLYNAA_DEMO_DB: path.join(tmp, 'django'),
  });
  await waitFor('Django READY', () => {
    if (dj.exited !== null) throw new Error('Django exited:\n' + readLog(dj));
    return /READY http:\/\/127\.0\.0\.1:\d+/.test(readLog(dj));
  }, 60000);

  // The admin endpoint: the page is open, the data is not.
  for (const p of ['/', '/dashboard']) {
    const r = await http('GET', admin + p);
    assert.equal(r.status, 200, `GET ${p} without the token`);
    assert.match(r.type, /^text\/html/);
    assert.match(r.text, /<title>Klynaa Jobs/);
    assert.match(r.headers.get('content-security-policy') || '', /connect-src 'self'/);
  }
  assert.equal((await http('GET', admin + '/stats')).status, 401, '/stats without the token');
  assert.equal((await http('GET', admin + '/dlq')).status, 401, '/dlq without the token');
  assert.equal((await http('POST', admin + '/dlq/replay?all=1')).status, 401, 'replay without the token');
  assert.equal((await http('GET', admin + '/stats', { token })).status, 200, '/stats with the token');

  const state0 = (await http('GET', django + '/api/demo/state/')).json;
  const seeded = state0.pickups.map((p) => p.id);
  assert.ok(seeded.length >= 1, 'Django seeded pickups');

  log('launching', CHROMIUM);
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  let load = null;
  try {
    const context = await browser.newContext({ viewport: { width: 1440, height: 1000 }, deviceScaleFactor: 1 });
    const page = await context.newPage();
    const pageErrors = [];
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    // (a 401 answer is logged by the browser itself: expected with a wrong token)
    page.on('console', (m) => {
      if (m.type() === 'error' && !/Failed to load resource.*\b401\b/.test(m.text())) pageErrors.push('console: ' + m.text());
    });
    // Nothing but the admin endpoint may be fetched.
    const foreign = [];
    page.on('request', (req) => { if (!req.url().startsWith(admin + '/')) foreign.push(req.url()); });
    let dialogs = 0;
    page.on('dialog', (d) => { dialogs += 1; d.accept(); });

    // ---- the token
    log('opening the page without a token');
    await page.goto(admin + '/', { waitUntil: 'load' });
    await page.locator('#token-input').waitFor({ state: 'visible', timeout: 15000 });
    assert.ok(await page.locator('#app').isHidden(), 'no data before the token');
    assert.ok(await page.locator('#forget').isHidden(), 'no token to forget yet');
    assert.match(await page.locator('#conn').innerText(), /token/i);
    await page.fill('#token-input', 'wrong-' + token);
    await page.click('#token-submit');
    await page.locator('#login-error').filter({ hasText: /refused/i }).waitFor({ timeout: 10000 });
    await page.fill('#token-input', token);
    await page.click('#token-submit');
    await page.locator('#app').waitFor({ state: 'visible', timeout: 15000 });
    await page.locator('#conn', { hasText: 'live' }).waitFor({ timeout: 15000 });
    assert.equal(await page.evaluate(() => sessionStorage.getItem('klynaa.admin.token')), token, 'token kept in sessionStorage');
    assert.ok(await page.locator('#forget').isVisible(), 'a token to forget');
    log('token accepted');

    // A reload keeps the token (sessionStorage): no second prompt.
    await page.reload({ waitUntil: 'load' });
    await page.locator('#conn', { hasText: 'live' }).waitFor({ timeout: 15000 });
    assert.ok(await page.locator('#login').isHidden(), 'no prompt after a reload');

    // ---- a node
    const nodeRow = page.locator('#nodes tbody tr[data-node]').first();
    await nodeRow.waitFor({ timeout: 20000 });
    const nodeText = await nodeRow.innerText();
    for (const kind of ['notifier', 'escrow', 'geo', 'scheduler']) assert.match(nodeText, new RegExp(kind), 'node shows its actor kinds');
    assert.match(nodeText, /ago/, 'node shows its heartbeat age');
    log('node:', (await nodeRow.getAttribute('data-node')));

    // ---- load, and numbers that move
    log('starting load');
    load = start('load', PYTHON, [path.join(HERE, 'load.py'), '--ingress', endpoints.ingress, '--rate', '25',
      '--seconds', '240', '--pickups', seeded.join(','), '--fail-every', '60'], {}, { stdin: 'pipe' });
    const doneCell = (fn) => page.locator(`#queues tbody tr[data-function="${fn}"] td[data-col="ok"]`);
    const readDone = async (fn) => Number((await doneCell(fn).innerText()).replace(/[^0-9]/g, ''));
    for (const fn of ['updateWorkerLocation', 'sendPickupNotification'])
      await waitFor(`${fn} done > 0 in the page`, async () => (await doneCell(fn).count()) === 1 && (await readDone(fn)) > 0, 30000, 200);
    // Two reads of the page a few seconds apart (longer when the machine is busy).
    const a = await readDone('updateWorkerLocation');
    const aNotify = await readDone('sendPickupNotification');
    await sleep(3000);
    let b = 0, bNotify = 0;
    await waitFor('the done counts to move in the page', async () => {
      b = await readDone('updateWorkerLocation');
      bNotify = await readDone('sendPickupNotification');
      return b > a && bNotify > aNotify;
    }, 30000, 250).catch((e) => assert.fail(`the done counts do not move under load: ` +
      `updateWorkerLocation ${a} -> ${b}, sendPickupNotification ${aNotify} -> ${bNotify} (${e.message})`));
    log(`done updateWorkerLocation ${a} -> ${b}, sendPickupNotification ${aNotify} -> ${bNotify}`);
    // The node shows the adaptive limit of its Django calls for notifications.
    const limitLine = page.locator('#nodes [data-limit="django/sendPickupNotification"]').first();
    await limitLine.waitFor({ timeout: 30000 });
    assert.match(await limitLine.innerText(), /limit django\/sendPickupNotification \d+ of \d+ in flight/, 'the node shows its limit');
    // The page agrees with /stats (the page lags by at most a poll or two).
    const s = (await http('GET', admin + '/stats', { token })).json;
    const fromStats = s.functions.updateWorkerLocation.outcomes.ok;
    assert.ok(fromStats >= b && fromStats - b < 400, `page ${b} vs /stats ${fromStats}`);
    const rateCard = await page.locator('#card-rate .value').innerText();
    assert.match(rateCard, /^\d+(\.\d+)?\/s$/, 'the rate card shows a rate: ' + rateCard);

    // Charts need history: a point every 5 s (30 s of it; 90 s for the docs' screenshot).
    await page.click('#window button[data-min="2"]');
    const points = SCREENSHOT ? 18 : 6;
    await waitFor(`${points} history points`, async () =>
      (await http('GET', admin + '/stats', { token })).json.history.length >= points, 150000, 500);
    // Failures from the load: unknown pickups fail with a 404 and go dead.
    await page.locator('#failures tbody tr[data-job]').first().waitFor({ timeout: 60000 });
    assert.match(await page.locator('#failures tbody').innerText(), /dead/);

    // ---- a dead escrow release
    const created = (await http('POST', django + '/api/demo/pickups/', { body: {
      customer_id: 101, lat: 6.5, lng: 3.4, price: 900, status: 'delivered', worker_id: 201, publish: false } })).json;
    const pickup = created.pickup.id;
    let r = await http('POST', django + '/api/demo/faults/', { body: { mode: 'down', path_prefix: '/api/serverless/escrow/' } });
    assert.equal(r.status, 200, r.text);
    r = await http('POST', django + `/api/demo/pickups/${pickup}/confirm/`, { body: {} });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.ingress && r.json.ingress.status, 'accepted', 'Django published pickup.confirmed: ' + r.text);
    const job = r.json.event.id + '#1';
    log('pickup', pickup, 'confirmed while escrow is down; job', job);
    const dlqRow = page.locator(`#dlq tbody tr[data-job="${job}"]`);
    await dlqRow.waitFor({ timeout: 60000 });
    assert.match(await dlqRow.innerText(), /processEscrowRelease/);
    assert.match(await dlqRow.innerText(), /503/);
    r = await http('POST', django + '/api/demo/faults/', { body: { mode: 'none' } });
    assert.equal(r.status, 200, r.text);
    let dlq = (await http('GET', admin + '/dlq?limit=1000', { token })).json;
    assert.ok(dlq.jobs.some((j) => j.job_id === job), 'GET /dlq lists the job');
    assert.equal((await http('GET', django + '/api/demo/state/')).json.escrow_releases.filter((e) => e.pickup_id === pickup).length, 0);

    // Show: the job's data and attempts.
    await dlqRow.locator('button[data-action="show"]').click();
    await page.locator('#modal').waitFor({ state: 'visible', timeout: 10000 });
    const modalText = await page.locator('#modal').innerText();
    assert.match(modalText, new RegExp(`"pickup_id": ${pickup}`));
    assert.match(modalText, /customer_confirmed/);
    assert.match(modalText, /HTTP 503/);
    await page.click('#modal [data-modal="close"]');
    await page.locator('#modal').waitFor({ state: 'hidden' });

    // ---- the screenshot, under load, with the dead release on top of the list
    if (SCREENSHOT) {  // and a few notifications waiting to retry after a 429
      r = await http('POST', django + '/api/demo/faults/', { body: { mode: '429', count: 3, retry_after: 30, path_prefix: '/api/users/' } });
      assert.equal(r.status, 200, r.text);
      await page.locator('#retrying tbody tr[data-job]').first().waitFor({ timeout: 20000 });
    }
    await sleep(2000);
    await page.evaluate(() => window.scrollTo(0, 0));
    const shotPath = SCREENSHOT ? path.resolve(SCREENSHOT) : path.join(tmp, 'dashboard.png');
    await page.screenshot({ path: shotPath, fullPage: true });
    assert.ok(fs.statSync(shotPath).size > 20000, 'screenshot written');
    log('screenshot', shotPath);

    // ---- replay from the page (found with the filter: the load adds dead jobs)
    await page.fill('#dlq-filter', job);
    await waitFor('the filter to leave one row', async () => (await page.locator('#dlq tbody tr[data-job]').count()) === 1, 10000);
    await dlqRow.locator('button[data-action="replay"]').click();
    await page.locator('#toasts .toast', { hasText: 'Replayed ' + job }).waitFor({ timeout: 15000 });
    await dlqRow.waitFor({ state: 'detached', timeout: 15000 });
    dlq = (await http('GET', admin + '/dlq?limit=1000', { token })).json;
    assert.ok(!dlq.jobs.some((j) => j.job_id === job), 'GET /dlq no longer lists the job');
    await waitFor('the replayed release in Django', async () => {
      const st = (await http('GET', django + '/api/demo/state/')).json;
      return st.escrow_releases.some((e) => e.pickup_id === pickup && e.reason === 'customer_confirmed') &&
        st.escrow_calls.filter((c) => c.pickup_id === pickup && c.status_code === 200).length === 1;
    }, 30000, 250);
    log('replayed: Django released the escrow of pickup', pickup);

    // ---- purge one of the load's dead jobs from the page
    await page.fill('#dlq-filter', '');
    const victim = page.locator('#dlq tbody tr[data-job^="load-"]').first();
    await victim.waitFor({ timeout: 20000 });
    const victimId = await victim.getAttribute('data-job');
    const dialogsBefore = dialogs;
    await victim.locator('button[data-action="purge"]').click();
    await page.locator('#toasts .toast', { hasText: 'Purged ' + victimId }).waitFor({ timeout: 15000 });
    assert.equal(dialogs, dialogsBefore + 1, 'purge asks for confirmation');
    dlq = (await http('GET', admin + '/dlq?limit=1000', { token })).json;
    assert.ok(!dlq.jobs.some((j) => j.job_id === victimId), 'purged job gone from GET /dlq');
    assert.equal((await http('GET', admin + '/dlq/job?id=' + encodeURIComponent(victimId), { token })).status, 404);
    log('purged', victimId);

    // ---- forgetting the token asks for it again
    await page.click('#forget');
    await page.locator('#token-input').waitFor({ state: 'visible', timeout: 5000 });
    assert.equal(await page.evaluate(() => sessionStorage.getItem('klynaa.admin.token')), null);

    assert.deepEqual(pageErrors, [], 'no script error in the page');
    assert.deepEqual(foreign, [], 'the page fetched nothing but the admin endpoint');
    await context.close();

    // ---- a broker without admin.token (loopback): no prompt at all
    const dataDir2 = path.join(tmp, 'data2');
    const open = start('klynaa-open', KLYNAA, ['run', '--data-dir', dataDir2, '--ingress', 'tcp://127.0.0.1:*'], {
      DJANGO_API_URL: django, DJANGO_API_KEY: 'test-key', KLYNAA_ADMIN_BIND: '127.0.0.1:0', KLYNAA_ADMIN_TOKEN: '',
      KLYNAA_SHUTDOWN_GRACE_SECONDS: '5' });
    const ep2 = await waitFor('the second broker.json', () => {
      if (open.exited !== null) throw new Error('klynaa exited ' + open.exited + ':\n' + readLog(open));
      const j = JSON.parse(fs.readFileSync(path.join(dataDir2, 'broker.json'), 'utf8'));
      return j.pid === open.child.pid && j.admin ? j : null;
    }, 60000);
    const context2 = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page2 = await context2.newPage();
    page2.on('pageerror', (e) => pageErrors.push(String(e)));
    await page2.goto(`http://${ep2.admin}/dashboard`, { waitUntil: 'load' });
    await page2.locator('#conn', { hasText: 'live' }).waitFor({ timeout: 15000 });
    assert.ok(await page2.locator('#login').isHidden(), 'no prompt without admin.token');
    assert.ok(await page2.locator('#forget').isHidden(), 'no token to forget');
    await page2.locator('#nodes tbody tr[data-node]').first().waitFor({ timeout: 20000 });
    assert.deepEqual(pageErrors, [], 'no script error in the page');
    await context2.close();
    assert.equal(await stop(open, 20000), 0, 'the second klynaa exits 0:\n' + readLog(open).slice(-3000));
    assertNoSanitizerReport(open);
    log('a broker without a token: no prompt');
  } finally {
    await browser.close().catch(() => {});
    if (load) {
      load.child.stdin.end();
      await stop(load, 10000);
    }
  }

  // ---- shut down cleanly; no sanitizer report
  log('stopping');
  const codeK = await stop(klynaa, 20000);
  await stop(dj, 10000);
  assert.equal(codeK, 0, 'klynaa exits 0 on SIGTERM:\n' + readLog(klynaa).slice(-3000));
  assertNoSanitizerReport(klynaa);
  log('load:', readLog(load).trim().split('\n').filter((l) => l.startsWith('published')).pop());
}

main().then(() => {
  log('dashboard browser test: 1 passed, 0 failed');
  process.exit(0);
}, (e) => {
  console.error(e && e.stack ? e.stack : e);
  for (const c of children) {
    const text = readLog(c);
    if (text) console.error(`---- ${c.name} log (last 3000 chars)\n` + text.slice(-3000));
  }
  log('dashboard browser test: 0 passed, 1 failed');
  process.exit(1);
});
