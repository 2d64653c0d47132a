// Real-browser test of the login page and scan-login.js.
//
// Starts wechat-sim, ws-gateway and wechat-callback from $SCAN_LOGIN_BIN_DIR (default
// <repo>/target/debug), drives Debian's Chromium headless through
// playwright-core, and checks what a user would see:
//   (a) the page shows a QR image that actually loads;
//   (b) a notify-bus line for the page's fd turns it to "logged in";
//   (c) an expired code is shown as such and "Refresh" brings a new one;
//   (d) a gateway restart is survived: the page reconnects on its own;
//   (e) the demo page's "Simulate scan" button logs in through the whole
//       chain: wechat-sim → wechat-callback → gateway bus → page, with a
//       JWT signed by --login-token-secret;
//   (f) Chinese text for a Chinese browser;
//   (g) with wechat-callback --confirm-login, a scan shows the "scanned"
//       state (confirm on the phone) and the user's reply "1" logs in;
//   (h) the `redirect` option POSTs the token as a form field, never in a URL;
//   (i) Traditional Chinese for a zh-TW browser, and how tags pick a language;
//   (j) `strings` overrides merged over the table of the `lang` asked for;
//   (k) the demo page shows its fd, ticket and a ready-to-paste `nc` line,
//       kept current when the code changes; that line's JSON, sent to the
//       notify port (with node's net, no nc), logs the page in.
// A console error or an uncaught exception on a page fails the test (a few
// expected ones, such as refused WebSocket connections while the gateway is
// down, are allowed where they are expected).
// Screenshots and process logs go to <repo>/artifacts/browser/.
//
// Run: tests/browser/run.sh   (after `cargo build --workspace`)

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, '..', '..');
const BIN_DIR = process.env.SCAN_LOGIN_BIN_DIR || path.join(REPO, 'target', 'debug');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const ARTIFACTS = path.join(REPO, 'artifacts', 'browser');
const WAIT_MS = 15000;
const HOST = '127.0.0.1';

fs.mkdirSync(ARTIFACTS, { recursive: true });

// ---- processes --------------------------------------------------------------

const children = new Set();

/**
 * A TCP port on 127.0.0.1 that is free now, for a daemon started later:
 * drawn at random below the kernel's ephemeral range, where no outgoing
 * connection takes it as its source port in between (a port from bind(0)
 * comes from that very range), as the Rust test kit does.
 */
async function freePort() {
  let low = 32768;
  try {
    low = Number(fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]) || low;
  } catch { /* not Linux: the default range */ }
  for (let i = 0; i < 64 && low > 12000; i++) {
    const port = 10000 + Math.floor(Math.random() * (low - 10000));
    if (await canBind(port)) return port;
  }
  throw new Error(`no free port below ${low}`);
}

/** Whether `port` on 127.0.0.1 can be bound now (it is released at once). */
function canBind(port) {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', () => resolve(false));
    srv.listen(port, HOST, () => srv.close(() => resolve(true)));
  });
}

/** Starts a binary from BIN_DIR; its output goes to artifacts/browser/<label>.log. */
function start(label, bin, args) {
  const exe = path.join(BIN_DIR, bin);
  if (!fs.existsSync(exe)) {
    throw new Error(`${exe} does not exist: run \`cargo build --workspace\` first or set SCAN_LOGIN_BIN_DIR`);
  }
  const log = fs.createWriteStream(path.join(ARTIFACTS, `${label}.log`), { flags: 'a' });
  log.write(`--- ${new Date().toISOString()} ${exe} ${args.join(' ')}\n`);
  const child = spawn(exe, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info', NO_COLOR: '1' },
  });
  child.stdout.pipe(log, { end: false });
  child.stderr.pipe(log, { end: false });
  child.exited = new Promise((resolve) => child.once('exit', (code, sig) => { log.end(); resolve({ code, sig }); }));
  children.add(child);
  child.exited.then(() => children.delete(child));
  return child;
}

/** SIGTERM, then SIGKILL if it has not gone within `graceMs`. */
async function stop(child, graceMs = 5000) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const gone = await Promise.race([child.exited.then(() => true), sleep(graceMs).then(() => false)]);
  if (!gone) {
    child.kill('SIGKILL');
    await child.exited;
  }
}

process.on('exit', () => {
  for (const c of children) { try { c.kill('SIGKILL'); } catch { /* gone */ } }
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Waits for GET /healthz to answer 200 (100 × 100 ms). */
async function waitHealthy(base, child) {
  let last = '';
  for (let i = 0; i < 100; i++) {
    if (child && child.exitCode !== null) throw new Error(`${base}: process exited with ${child.exitCode}`);
    try {
      const res = await fetch(`${base}/healthz`, { signal: AbortSignal.timeout(1000) });
      if (res.status === 200) return;
      last = `HTTP ${res.status}`;
    } catch (e) {
      last = String(e.cause?.code || e.message);
    }
    await sleep(100);
  }
  throw new Error(`${base}/healthz never answered 200 (last: ${last})`);
}

/**
 * Sends `line` (plus a newline) to the notify port with a plain socket,
 * half-closes, and returns what came back, trimmed.
 */
function sendLine(port, line) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, HOST, () => { sock.end(`${line}\n`); });
    let got = '';
    sock.setEncoding('utf8');
    sock.setTimeout(5000, () => { sock.destroy(); reject(new Error(`notify timed out; got ${got}`)); });
    sock.on('data', (d) => { got += d; });
    sock.on('error', reject);
    sock.on('close', () => resolve(got.trim()));
  });
}

/** Sends one bus request (a JSON object) and returns the answer line. */
function notify(port, obj) {
  return sendLine(port, JSON.stringify(obj));
}

/** The ticket in a QR image URL ending in `?ticket=<urlencoded ticket>`. */
function ticketOf(url) {
  const m = /[?&]ticket=([^&#]*)/.exec(url);
  assert.ok(m, `no ticket in ${url}`);
  return decodeURIComponent(m[1]);
}

const b64url = (s) => Buffer.from(s).toString('base64url');

// ---- the browser ---------------------------------------------------------------

let browser;
const consoleLog = fs.createWriteStream(path.join(ARTIFACTS, 'console.log'), { flags: 'w' });
/** page → console errors and uncaught exceptions seen on it. */
const pageErrors = new WeakMap();

async function newPage(locale = 'en-US') {
  const context = await browser.newContext({ locale, viewport: { width: 480, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT_MS);
  const errors = [];
  pageErrors.set(page, errors);
  page.on('console', (m) => {
    consoleLog.write(`[${locale}] ${m.type()}: ${m.text()}\n`);
    if (m.type() === 'error') errors.push(`console error: ${m.text()}`);
  });
  page.on('pageerror', (e) => {
    consoleLog.write(`[${locale}] pageerror: ${e.stack || e}\n`);
    errors.push(`pageerror: ${e.stack || e}`);
  });
  return page;
}

/**
 * Fails if `page` logged a console error or threw an uncaught exception,
 * other than those matching one of the `allowed` patterns.
 */
function assertNoPageErrors(page, allowed = []) {
  const errors = (pageErrors.get(page) || []).filter((e) => !allowed.some((re) => re.test(e)));
  assert.deepEqual(errors, [], `errors on the page (see artifacts/browser/console.log):\n${errors.join('\n')}`);
}

/** What Chromium logs for a WebSocket that cannot connect (gateway down). */
const WS_REFUSED = /WebSocket connection to 'ws:\/\/127\.0\.0\.1:\d+\/ws' failed/;

const state = (page) => page.locator('#login').getAttribute('data-state');
const waitState = (page, s) => page.waitForSelector(`#login[data-state="${s}"]`, { timeout: WAIT_MS });
const qrSrc = (page) => page.locator('#login img.sl-qr').getAttribute('src');

/** Waits until the QR image has really loaded. */
const waitImageLoaded = (page) => page.waitForFunction(() => {
  const img = document.querySelector('#login img.sl-qr');
  return img && !img.hidden && img.complete && img.naturalWidth > 0;
}, null, { timeout: WAIT_MS });

/** Waits for state `qr` with an image other than `oldSrc`; returns the new src. */
async function waitNewCode(page, oldSrc) {
  await page.waitForFunction((old) => {
    const root = document.querySelector('#login');
    const img = root && root.querySelector('img.sl-qr');
    return root.dataset.state === 'qr' && img && img.getAttribute('src') && img.getAttribute('src') !== old;
  }, oldSrc, { timeout: WAIT_MS, polling: 20 });
  return qrSrc(page);
}

const shot = (page, name) => page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });

// ---- the scenarios ---------------------------------------------------------------

describe('login page in a real browser', { timeout: 240000 }, () => {
  const ports = {};
  let sim;
  let gateway;
  let shortGateway;

  const simBase = () => `http://${HOST}:${ports.sim}`;
  const gatewayArgs = (listen, notifyListen, expire) => [
    '--listen', `${HOST}:${listen}`,
    '--notify-listen', `${HOST}:${notifyListen}`,
    '--app-id', 'wxdemo',
    '--app-secret', 's',
    '--wechat-api-base', simBase(),
    '--qrcode-image-base', `${simBase()}/cgi-bin/showqrcode?ticket=`,
    '--qr-expire-seconds', String(expire),
    '--demo-sim-url', simBase(),
  ];

  /** POSTs JSON to the simulator (the phone); returns the parsed answer. */
  async function simPost(urlPath, body) {
    const res = await fetch(`${simBase()}${urlPath}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(WAIT_MS),
    });
    const text = await res.text();
    assert.equal(res.status, 200, `POST ${urlPath} ${JSON.stringify(body)}: HTTP ${res.status} ${text}`);
    return JSON.parse(text);
  }

  /** The fd (scene id) the page's code was minted for, from the simulator. */
  async function fdOfTicket(ticket) {
    const res = await fetch(`${simBase()}/sim/tickets/${encodeURIComponent(ticket)}`);
    assert.equal(res.status, 200, `GET /sim/tickets/<ticket> (needed to learn the fd): HTTP ${res.status}`);
    const info = await res.json();
    const fd = Number(info.scene_id);
    assert.ok(Number.isInteger(fd) && fd > 0, `scene_id in ${JSON.stringify(info)}`);
    return fd;
  }

  /** A fake JWT-shaped token (the page decodes it but does not verify it). */
  function fakeToken(sub, nickname) {
    const now = Math.floor(Date.now() / 1000);
    return [
      b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' })),
      b64url(JSON.stringify({ sub, nickname, iat: now, exp: now + 300, jti: `test-jti-${sub}` })),
      b64url('not-a-real-signature'),
    ].join('.');
  }

  /**
   * Starts wechat-callback on ports.cb (where the simulator delivers), with
   * its database in `dir`; the simulator, the gateway and the callback share
   * the token, app id and secret.
   */
  const startCallback = (label, dir, extra) => start(label, 'wechat-callback', [
    '--listen', `${HOST}:${ports.cb}`,
    '--token', 't',
    '--app-id', 'wxdemo',
    '--app-secret', 's',
    '--wechat-api-base', simBase(),
    '--notify-addr', `${HOST}:${ports.notify}`,
    '--db', path.join(dir, 'scan-login.db'),
    ...extra,
  ]);

  /**
   * Runs `body` with a wechat-callback started by `startCallback` (healthy
   * first) and always stops it and removes its database afterwards: the
   * next test starts its own callback on the same port.
   */
  async function withCallback(label, extra, body) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'scan-login-browser-'));
    let callback;
    try {
      callback = startCallback(label, dir, extra);
      await waitHealthy(`http://${HOST}:${ports.cb}`, callback);
      await body();
    } finally {
      await stop(callback);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }

  /**
   * The login token the page shows: checks it is an HS256 JWT signed with
   * `secret` and returns the claims the page decoded.
   */
  async function shownClaims(p, secret) {
    const token = await p.locator('#r-token').textContent();
    const [h, b, sig] = token.split('.');
    const expected = crypto.createHmac('sha256', secret).update(`${h}.${b}`).digest('base64url');
    assert.equal(sig, expected, 'the token is an HS256 JWT signed with --login-token-secret');
    return JSON.parse(await p.locator('#r-claims').textContent());
  }

  before(async () => {
    for (const k of ['sim', 'cb', 'gw', 'notify', 'gw2', 'notify2']) ports[k] = await freePort();
    sim = start('wechat-sim', 'wechat-sim', [
      '--listen', `${HOST}:${ports.sim}`,
      '--app-id', 'wxdemo',
      '--app-secret', 's',
      '--token', 't',
      '--callback-url', `http://${HOST}:${ports.cb}/wechat`,
    ]);
    await waitHealthy(simBase(), sim);
    gateway = start('ws-gateway', 'ws-gateway', gatewayArgs(ports.gw, ports.notify, 120));
    await waitHealthy(`http://${HOST}:${ports.gw}`, gateway);
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
        '--disable-quic', '--no-first-run', '--disable-component-update', '--disable-sync'],
    });
  });

  after(async () => {
    if (browser) await browser.close().catch(() => {});
    await Promise.all([...children].map((c) => stop(c, 3000)));
    consoleLog.end();
  });

  let page;

  it('(a) shows a QR code image that loads', async () => {
    page = await newPage();
    await page.goto(`http://${HOST}:${ports.gw}/`);
    await waitState(page, 'qr');
    await waitImageLoaded(page);
    const img = page.locator('#login img.sl-qr');
    assert.ok((await img.getAttribute('alt')).length > 10, 'the QR image has alt text');
    assert.match(await img.getAttribute('src'), new RegExp(`^${simBase()}/cgi-bin/showqrcode\\?ticket=.+`));
    assert.equal(await page.locator('#login [aria-live="polite"]').first().textContent(), 'Scan with WeChat to log in');
    assert.match(await page.locator('#login .sl-sub').textContent(), /^Expires in \d+:\d\d$/);
    // Demo mode: the gateway filled in the simulator's URL.
    assert.ok(await page.locator('#sim-button').isVisible(), 'the "Simulate scan" button is shown in demo mode');
    await shot(page, 'a-qr');
    assertNoPageErrors(page);
  });

  it('(a2) the library also loads as an ES module', async () => {
    const same = await page.evaluate(async () => {
      const mod = await import('/scan-login.mjs');
      return mod.default === window.ScanLogin && typeof mod.mount === 'function';
    });
    assert.ok(same);
    assertNoPageErrors(page);
  });

  it('(b) a notify line for the page\'s fd logs it in', async () => {
    const ticket = ticketOf(await qrSrc(page));
    const fd = await fdOfTicket(ticket);
    const token = fakeToken('o-alice', 'Alice');
    const answer = await notify(ports.notify, {
      type: 'scan', fd, nickname: 'Alice', openid: 'o-alice', token, ticket,
    });
    assert.deepEqual(JSON.parse(answer), { ok: true });

    await waitState(page, 'success');
    assert.match(await page.locator('#login').textContent(), /Alice/);
    await page.waitForSelector('#result:not([hidden])');
    assert.equal(await page.locator('#r-user').textContent(), 'Alice');
    assert.equal(await page.locator('#r-openid').textContent(), 'o-alice');
    assert.equal(await page.locator('#r-token').textContent(), token);
    const claims = JSON.parse((await page.locator('#r-claims').textContent()));
    assert.equal(claims.nickname, 'Alice');
    assert.equal(claims.sub, 'o-alice');
    await shot(page, 'b-success');
    assertNoPageErrors(page);
    await page.context().close();
  });

  it('(c) an expired code offers "Refresh", which brings a new code', async () => {
    shortGateway = start('ws-gateway-expire3', 'ws-gateway', gatewayArgs(ports.gw2, ports.notify2, 3));
    await waitHealthy(`http://${HOST}:${ports.gw2}`, shortGateway);
    const p = await newPage();
    await p.goto(`http://${HOST}:${ports.gw2}/`);
    await waitState(p, 'qr');
    await waitImageLoaded(p);
    const first = await qrSrc(p);
    await waitState(p, 'expired');
    const refresh = p.getByRole('button', { name: 'Refresh' });
    assert.ok(await refresh.isVisible(), 'a Refresh button is shown');
    await shot(p, 'c-expired');
    await refresh.click();
    // The gateway allows one refresh per 5 s; the page retries by itself
    // when told it is too soon.
    const second = await waitNewCode(p, first);
    assert.notEqual(second, first);
    await waitImageLoaded(p);
    await shot(p, 'c-refreshed');
    assertNoPageErrors(p);
    await p.context().close();
    await stop(shortGateway);
  });

  it('(d) the page reconnects by itself after a gateway restart', async () => {
    const p = await newPage();
    await p.goto(`http://${HOST}:${ports.gw}/`);
    await waitState(p, 'qr');
    const before = await qrSrc(p);

    await stop(gateway);
    await waitState(p, 'unreachable');
    assert.ok(await p.getByRole('button', { name: 'Retry now' }).isVisible());
    await shot(p, 'd-unreachable');

    gateway = start('ws-gateway', 'ws-gateway', gatewayArgs(ports.gw, ports.notify, 120));
    await waitHealthy(`http://${HOST}:${ports.gw}`, gateway);
    const afterSrc = await waitNewCode(p, before);
    assert.notEqual(afterSrc, before);
    await waitImageLoaded(p);
    await shot(p, 'd-reconnected');
    // Connections refused while the gateway was down are expected here.
    assertNoPageErrors(p, [WS_REFUSED]);
    await p.context().close();
  });

  it('(e) "Simulate scan" logs in through wechat-callback', async () => {
    const secret = 'browser-test-login-secret-0123456789ab';
    await withCallback('wechat-callback', ['--login-token-secret', secret], async () => {
      const p = await newPage();
      await p.goto(`http://${HOST}:${ports.gw}/`);
      await waitState(p, 'qr');
      await p.getByRole('button', { name: 'Simulate scan' }).click();
      await waitState(p, 'success');
      await p.waitForSelector('#result:not([hidden])');
      // The simulator's answer is what WeChat would show the user.
      await p.waitForFunction(() => /login successful/i.test(document.getElementById('sim-status').textContent));
      assert.ok(await p.locator('#sim-status').isVisible());

      const openid = await p.locator('#r-openid').textContent();
      assert.match(openid, /^demo-user-[0-9a-f]+$/);
      const claims = await shownClaims(p, secret);
      assert.equal(claims.sub, openid);
      assert.equal(claims.nickname, await p.locator('#r-user').textContent());
      assert.ok(claims.exp > claims.iat);
      await shot(p, 'e-simulated-success');
      assertNoPageErrors(p);
      await p.context().close();
    });
  });

  it('(f) speaks Chinese to a Chinese browser', async () => {
    const p = await newPage('zh-CN');
    await p.goto(`http://${HOST}:${ports.gw}/`);
    await waitState(p, 'qr');
    await waitImageLoaded(p);
    assert.equal(await p.locator('#login [aria-live="polite"]').first().textContent(), '请使用微信扫一扫登录');
    assert.equal(await p.locator('#login').getAttribute('lang'), 'zh-Hans');
    assert.equal(await state(p), 'qr');
    await shot(p, 'f-qr-zh');
    assertNoPageErrors(p);
    await p.context().close();
  });

  it('(g) with --confirm-login a scan shows "scanned" until the user replies 1', async () => {
    const secret = 'browser-test-confirm-secret-0123456789';
    const openid = 'o_confirm_test';
    await withCallback('wechat-callback-confirm', ['--confirm-login', '--login-token-secret', secret], async () => {
      const p = await newPage();
      await p.goto(`http://${HOST}:${ports.gw}/`);
      await waitState(p, 'qr');
      await waitImageLoaded(p);
      const ticket = ticketOf(await qrSrc(p));

      // The phone scans: the login now waits for the user's confirmation.
      const scan = await simPost('/sim/scan', { ticket, openid, subscribed: true, nickname: 'Confirm Tester' });
      assert.match(scan.reply, /reply\W{0,3}1/i, `the scan reply asks the user to reply 1: ${JSON.stringify(scan)}`);

      await waitState(p, 'scanned');
      const status = p.locator('#login [role="status"]');
      await p.waitForFunction(
        () => /Confirm the login on your phone/.test(document.querySelector('#login [role="status"]').textContent),
        null, { timeout: WAIT_MS });
      assert.match(await status.textContent(), /^Scanned( by .+)?\. Confirm the login on your phone \(reply 1 in WeChat\)\.$/);
      assert.equal(await status.getAttribute('aria-live'), 'polite', 'the scanned state is announced');
      // The code is covered, and nothing invites another scan or a refresh.
      assert.ok(await p.locator('#login .sl-veil').isVisible(), 'the code is covered');
      assert.equal(await p.locator('#login .sl-refresh').isVisible(), false, 'no Refresh button while confirming');
      assert.match(await p.locator('#login img.sl-qr').getAttribute('alt'), /already scanned/);
      assert.equal(await p.locator('#login .sl-sub').textContent(), '', 'no countdown while confirming');
      // This scan did not come from the demo button: no demo "Reply 1" button.
      assert.equal(await p.locator('#sim-confirm').isVisible(), false);
      await shot(p, 'g-scanned');

      // The user replies "1" in WeChat.
      const msg = await simPost('/sim/message', { openid, content: '1' });
      assert.equal(typeof msg.reply, 'string', `POST /sim/message answer: ${JSON.stringify(msg)}`);

      await waitState(p, 'success');
      await p.waitForSelector('#result:not([hidden])');
      assert.equal(await p.locator('#r-openid').textContent(), openid);
      assert.match(await p.locator('#login [role="status"]').textContent(), /^Logged in/);
      const claims = await shownClaims(p, secret);
      assert.equal(claims.sub, openid);
      await shot(p, 'g-confirmed');
      assertNoPageErrors(p);
      await p.context().close();
    });
  });

  it('(h) `redirect` POSTs the token as a form field, not in the URL', async () => {
    const p = await newPage();
    await p.goto(`http://${HOST}:${ports.gw}/`);
    await waitState(p, 'qr');
    let landed = null;
    await p.route((url) => url.pathname === '/after-login', (route) => {
      const req = route.request();
      landed = {
        url: req.url(),
        method: req.method(),
        contentType: req.headers()['content-type'] || '',
        body: req.postData() || '',
      };
      return route.fulfill({
        status: 200,
        contentType: 'text/html',
        body: '<!doctype html><link rel="icon" href="data:,"><title>in</title><p id="in">in</p>',
      });
    });
    // Replace the demo's widget by one with `redirect`.
    await p.evaluate(() => {
      window.scanLoginDemo.handle.destroy();
      window.redirectHandle = window.ScanLogin.mount(document.getElementById('login'), { redirect: '/after-login?from=test' });
    });
    await p.waitForFunction(() => window.redirectHandle && window.redirectHandle.state === 'qr', null, { timeout: WAIT_MS });
    const ticket = await p.evaluate(() => window.redirectHandle.lastCode.ticket);
    const fd = await fdOfTicket(ticket);
    const token = fakeToken('o-redirect', 'Redirect');
    const answer = await notify(ports.notify, { type: 'scan', fd, nickname: 'Redirect', openid: 'o-redirect', token, ticket });
    assert.deepEqual(JSON.parse(answer), { ok: true });

    await p.waitForSelector('#in', { timeout: WAIT_MS });
    assert.ok(landed, 'the browser went to the redirect URL');
    assert.equal(landed.method, 'POST');
    assert.match(landed.contentType, /^application\/x-www-form-urlencoded/);
    assert.equal(new URLSearchParams(landed.body).get('token'), token);
    assert.equal(landed.url, `http://${HOST}:${ports.gw}/after-login?from=test`, 'the token is not in the URL');
    assert.ok(!p.url().includes(token), 'the token is not in the address bar');
    assertNoPageErrors(p);
    await p.context().close();
  });

  /** Characters only Simplified Chinese writes so (Traditional has others). */
  const SIMPLIFIED_ONLY = /[码扫录请连获维确后过务问题败载应试开击对标]/g;

  it('(i) speaks Traditional Chinese to a zh-TW browser', async () => {
    const p = await newPage('zh-TW');
    await p.goto(`http://${HOST}:${ports.gw}/`);
    await waitState(p, 'qr');
    await waitImageLoaded(p);
    const root = p.locator('#login');
    assert.equal(await root.getAttribute('lang'), 'zh-Hant');
    assert.equal(await p.evaluate(() => document.documentElement.lang), 'zh-Hant');
    assert.equal(await p.locator('#login [role="status"]').textContent(), '請使用微信掃一掃登入');
    assert.match(await p.locator('#login .sl-sub').textContent(), /^\d+:\d\d 後過期$/);
    assert.equal(await p.locator('#login img.sl-qr').getAttribute('alt'), '微信登入 QR Code，請用微信掃描此 QR Code 登入。');
    assert.equal(await p.locator('#login .sl-hint').textContent(),
      '在手機上？請在另一個螢幕上開啟本頁，或在微信內長按辨識 QR Code。');
    // The demo page around the widget speaks the same language.
    assert.equal(await p.locator('#title').textContent(), '掃碼登入');
    assert.equal(await p.locator('#sim-button').textContent(), '模擬掃碼');
    await p.waitForSelector('#sim-manual:not([hidden])');
    assert.equal(await p.locator('#sim-manual-lead').textContent(), '或在終端機中手動登入：');
    // Nothing on the page (text, alt, hidden hint) is in Simplified script.
    const all = await p.evaluate(() => [
      document.title,
      document.body.innerText,
      document.querySelector('#login img.sl-qr').alt,
      document.querySelector('#login .sl-hint').textContent,
    ].join('\n'));
    assert.deepEqual(all.match(SIMPLIFIED_ONLY), null, `Simplified characters on a zh-TW page:\n${all}`);

    // How language tags map to the three tables (mount picks the same way).
    const picks = await p.evaluate(() => {
      const tags = ['zh-TW', 'zh-HK', 'zh-MO', 'zh-Hant', 'zh-Hant-CN', 'zh_TW', 'zh-Hans-HK',
        'zh-CN', 'zh-SG', 'zh-Hans', 'zh', 'en-US', 'en', 'fr-FR', 'zha'];
      return Object.fromEntries(tags.map((t) => [t, window.ScanLogin.pickLang(t)]).concat([['(browser)', window.ScanLogin.pickLang()]]));
    });
    assert.deepEqual(picks, {
      'zh-TW': 'zh-Hant', 'zh-HK': 'zh-Hant', 'zh-MO': 'zh-Hant', 'zh-Hant': 'zh-Hant',
      'zh-Hant-CN': 'zh-Hant', zh_TW: 'zh-Hant', 'zh-Hans-HK': 'zh-Hans',
      'zh-CN': 'zh-Hans', 'zh-SG': 'zh-Hans', 'zh-Hans': 'zh-Hans', zh: 'zh-Hans',
      'en-US': 'en', en: 'en', 'fr-FR': 'en', zha: 'en', '(browser)': 'zh-Hant',
    });
    await shot(p, 'i-qr-zh-hant');
    assertNoPageErrors(p);
    await p.context().close();
  });

  it('(j) `strings` override the texts of the language `lang` forces', async () => {
    const p = await newPage('zh-TW');
    await p.goto(`http://${HOST}:${ports.gw}/`);
    await waitState(p, 'qr');
    // window.remount(opts) replaces the widget on the page by one with `opts`.
    await p.evaluate(() => {
      window.remount = (opts) => {
        (window.h || window.scanLoginDemo.handle).destroy();
        window.h = window.ScanLogin.mount(document.getElementById('login'), opts);
      };
    });
    const view = async () => {
      await p.waitForFunction(() => window.h.state === 'qr', null, { timeout: WAIT_MS });
      return p.evaluate(() => ({
        lang: document.getElementById('login').lang,
        status: document.querySelector('#login [role="status"]').textContent,
        sub: document.querySelector('#login .sl-sub').textContent,
        alt: document.querySelector('#login img.sl-qr').alt,
      }));
    };

    // English forced on a zh-TW browser, with a title and a function override.
    await p.evaluate(() => window.remount({
      lang: 'en',
      strings: { scan: 'Sign in to Example with WeChat', expiresIn: (s) => `Good for ${s} more seconds` },
    }));
    let v = await view();
    assert.equal(v.lang, 'en');
    assert.equal(v.status, 'Sign in to Example with WeChat');
    assert.match(v.sub, /^Good for \d+ more seconds$/);
    // Keys not overridden keep the English built-ins.
    assert.equal(v.alt, 'WeChat login QR code. Scan it with the WeChat app to log in.');
    await shot(p, 'j-strings-en');

    // Simplified forced; an override merged over the Simplified table.
    await p.evaluate(() => window.remount({ lang: 'zh-Hans', strings: { scan: '用微信扫码登录 Example' } }));
    v = await view();
    assert.equal(v.lang, 'zh-Hans');
    assert.equal(v.status, '用微信扫码登录 Example');
    assert.match(v.sub, /^\d+:\d\d 后过期$/);
    assert.equal(v.alt, '微信登录二维码，请用微信扫描此二维码登录。');

    // Traditional forced, no overrides: the built-in Traditional table.
    await p.evaluate(() => window.remount({ lang: 'zh-Hant' }));
    v = await view();
    assert.equal(v.lang, 'zh-Hant');
    assert.equal(v.status, '請使用微信掃一掃登入');
    assert.match(v.sub, /^\d+:\d\d 後過期$/);
    await p.evaluate(() => window.h.destroy());
    assertNoPageErrors(p);
    await p.context().close();
  });

  it('(k) the demo page\'s nc line for its fd logs it in (sent with net, not nc)', async () => {
    const p = await newPage();
    await p.goto(`http://${HOST}:${ports.gw}/`);
    await waitState(p, 'qr');
    await waitImageLoaded(p);

    /**
     * Waits for the "by hand" block to show `ticket`; checks the fd, the
     * ticket and the nc line against the simulator; returns the line's JSON.
     */
    async function manualJson(ticket) {
      await p.waitForFunction((t) => !document.getElementById('sim-manual').hidden
        && document.getElementById('sim-ticket').textContent === t, ticket, { timeout: WAIT_MS });
      assert.ok(await p.locator('#sim-nc').isVisible(), 'the nc line is shown');
      const fd = await fdOfTicket(ticket);
      assert.equal(await p.locator('#sim-fd').textContent(), String(fd));
      const line = await p.locator('#sim-nc').textContent();
      const m = /^echo '((?:[^']|'\\'')*)' \| nc -N 127\.0\.0\.1 9999$/.exec(line);
      assert.ok(m, `an "echo '<json>' | nc -N 127.0.0.1 9999" line: ${line}`);
      const json = m[1].replace(/'\\''/g, "'");
      assert.equal(json, JSON.stringify({ type: 'scan', fd, nickname: 'Alice', ticket }));
      return json;
    }

    const first = await qrSrc(p);
    const firstJson = await manualJson(ticketOf(first));
    await shot(p, 'k-nc-line');

    // A new code: the line follows it.
    await p.evaluate(() => window.scanLoginDemo.handle.refresh());
    const second = await waitNewCode(p, first);
    const ticket = ticketOf(second);
    const json = await manualJson(ticket);
    assert.notEqual(json, firstJson);

    const answer = await sendLine(ports.notify, json);
    assert.deepEqual(JSON.parse(answer), { ok: true });
    await waitState(p, 'success');
    await p.waitForSelector('#result:not([hidden])');
    assert.equal(await p.locator('#r-user').textContent(), 'Alice');
    assert.equal(await p.locator('#login [role="status"]').textContent(), 'Logged in as Alice');
    assert.equal(await p.locator('#sim-manual').isVisible(), false, 'no nc line once logged in');
    await shot(p, 'k-success');
    assertNoPageErrors(p);
    await p.context().close();
  });
});
