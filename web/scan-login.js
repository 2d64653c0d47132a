/*!
 * scan-login.js — log into a website by scanning a WeChat QR code.
 *
 * Dependency-free browser client for `ws-gateway`. No build step.
 *
 * Loading
 * -------
 *   Classic script:  <script src="/scan-login.js"></script>   → window.ScanLogin
 *   ES module:       import ScanLogin, { mount } from '/scan-login.mjs';
 *                    (scan-login.mjs loads this file and re-exports it)
 *
 * API
 * ---
 *   const handle = ScanLogin.mount(element, {
 *     url,        // WebSocket URL; default ws(s)://<location.host>/ws
 *     onSuccess,  // fn({user, openid, token}) after a successful scan
 *     onScanned,  // fn({user}) when the code was scanned but the login still
 *                 // has to be confirmed on the phone (gateway frame `scanned`)
 *     onError,    // fn({error, message}) for error frames and lost connections
 *     onState,    // fn(state, detail) on every state change (and each new code)
 *     redirect,   // if set, after success the token is POSTed to this URL as
 *                 // a form submission (application/x-www-form-urlencoded,
 *                 // one field `token`) and the browser follows it; the token
 *                 // is never put into a URL. Without a token (the gateway has
 *                 // no --login-token-secret) the browser just goes there.
 *     lang,       // 'en' | 'zh-Hans' (Simplified) | 'zh-Hant' (Traditional);
 *                 // default from navigator.language. Any language tag works:
 *                 // zh-TW, zh-HK, zh-MO and zh-Hant(-*) pick Traditional,
 *                 // every other zh(-*) Simplified, anything else English.
 *     strings,    // overrides for the texts, merged over the built-in table
 *                 // of the chosen language (see "Strings" below)
 *   });
 *   handle.refresh();   // ask for a new code (reconnects if the socket is down)
 *   handle.destroy();   // close the socket, stop timers, empty the element
 *   handle.state        // current state (read-only)
 *   handle.lastCode     // detail of the last QR code shown, or null
 *   ScanLogin.pickLang(tag)   // 'en' | 'zh-Hans' | 'zh-Hant' for a language
 *                             // tag (default navigator.language), as mount
 *                             // picks it: to match a page's own texts
 *
 * Strings
 * -------
 *   ScanLogin.mount(el, {
 *     lang: 'en',   // optional; without it the overrides apply to whatever
 *                   // language the browser picks
 *     strings: {
 *       scan: 'Scan with WeChat to sign in to Example',
 *       scanned: function (name) { return 'Hi ' + (name || 'there') + ', confirm on your phone.'; }
 *     }
 *   });
 * Keys not given keep the chosen language's built-in text; unknown keys are
 * ignored with a console warning. Plain strings:
 *   scan (the prompt under the code: the widget's title while a code is
 *   shown), connecting, loadingCode, alt and altScanned (the image's alt
 *   text), expired, awaitingConfirm, refresh, retryNow, redirecting,
 *   unreachable, rateLimited, wechatUnavailable, shuttingDown, genericError,
 *   imgFailed, phoneHint.
 * Functions returning a string (a plain string is shown as is):
 *   expiresIn(seconds), scanned(name), success(name), retryIn(seconds);
 *   `name` may be ''. A function that throws falls back to the built-in text.
 * `strings` is one table for the chosen language; for several languages pick
 * the table yourself, e.g. with ScanLogin.pickLang().
 *
 * States (also written to element's `data-state` attribute):
 *   connecting   opening the WebSocket / waiting for a code
 *   qr           a code is shown;  detail = {url, qr_content, expire_seconds, ticket}
 *   scanned      the code was scanned; the user still has to confirm on the
 *                phone (reply 1 in WeChat); detail = {user}. The code is
 *                covered; `scan_success`, `qrcode_expired` or an error frame
 *                moves on from here.
 *   success      logged in;        detail = {user, openid, token}
 *   expired      the code timed out; a "Refresh" button asks for a new one
 *   unreachable  the gateway cannot be reached; retried with backoff;
 *                detail = {attempt, retryIn}   (retryIn in ms)
 *   error        the gateway reported a problem (e.g. rate_limited,
 *                wechat_unavailable); retried later; detail = {error, message}
 *
 * Wire protocol (JSON text frames, see docs/PROTOCOL.md "Browser ↔ gateway"):
 *   server → browser: qrcode_url, scanned, scan_success, qrcode_expired,
 *                     error, pong
 *   browser → server: {"cmd":"ping"}, {"cmd":"refresh"}
 *
 * Behaviour:
 *   - reconnects with exponential backoff + jitter (0.5 s doubling to 15 s)
 *     and gets a fresh code after a drop;
 *   - sends {"cmd":"ping"} every 20 s; a ping unanswered by the next one
 *     means a dead path and the socket is recycled;
 *   - closes on `pagehide`, and after 5 minutes in a hidden tab; reconnects
 *     when the page is shown again;
 *   - `rate_limited` is shown as a gentle note and the request retried later.
 */
(function (global) {
  'use strict';

  var VERSION = '1.1.0';

  var PING_INTERVAL_MS = 20000;
  // A ping still unanswered this long after it was sent means a dead path.
  var PONG_TIMEOUT_MS = 15000;
  // A connection that has not produced a code this long after asking for
  // one is recycled (error frames with their own retry cancel this).
  var CODE_WATCHDOG_MS = 20000;
  var BACKOFF_MIN_MS = 500;
  var BACKOFF_MAX_MS = 15000;
  var HIDDEN_CLOSE_MS = 5 * 60 * 1000;
  // The gateway allows one refresh per 5 s per connection, counted from the
  // last code it minted.
  var REFRESH_SPACING_MS = 5000;
  var RATE_RETRY_MAX_MS = 60000;
  // The gateway ends a pending confirmation with scan_success or
  // qrcode_expired. Should neither come, a `scanned` state older than the
  // code's remaining lifetime plus this much is shown as expired.
  var CONFIRM_GRACE_MS = 5 * 60 * 1000;

  var TEXT = {
    en: {
      connecting: 'Connecting…',
      loadingCode: 'Getting a QR code…',
      scan: 'Scan with WeChat to log in',
      alt: 'WeChat login QR code. Scan it with the WeChat app to log in.',
      altScanned: 'WeChat login QR code, already scanned. Confirm the login on your phone.',
      expiresIn: function (s) { return 'Expires in ' + fmtTime(s); },
      expired: 'This QR code has expired.',
      scanned: function (u) {
        return (u ? 'Scanned by ' + u + '.' : 'Scanned.') + ' Confirm the login on your phone (reply 1 in WeChat).';
      },
      awaitingConfirm: 'Waiting for confirmation on your phone…',
      refresh: 'Refresh',
      retryNow: 'Retry now',
      success: function (u) { return u ? 'Logged in as ' + u : 'Logged in'; },
      redirecting: 'Redirecting…',
      unreachable: 'Cannot reach the login server.',
      retryIn: function (s) { return 'Trying again in ' + s + ' s…'; },
      rateLimited: 'Too many requests — a new code is on its way shortly.',
      wechatUnavailable: 'WeChat is not answering right now. Trying again…',
      shuttingDown: 'The login server is restarting…',
      genericError: 'Something went wrong. Trying again…',
      imgFailed: 'The QR image did not load.',
      phoneHint: 'On a phone? Open this page on another screen, or long-press the code inside WeChat.'
    },
    'zh-Hans': {
      connecting: '正在连接…',
      loadingCode: '正在获取二维码…',
      scan: '请使用微信扫一扫登录',
      alt: '微信登录二维码，请用微信扫描此二维码登录。',
      altScanned: '微信登录二维码，已扫码，请在手机上确认登录。',
      expiresIn: function (s) { return fmtTime(s) + ' 后过期'; },
      expired: '二维码已过期。',
      scanned: function (u) { return (u ? u + ' 已扫码' : '已扫码') + '，请在手机上确认登录（在微信中回复 1）'; },
      awaitingConfirm: '等待在手机上确认…',
      refresh: '刷新二维码',
      retryNow: '立即重试',
      success: function (u) { return u ? u + '，登录成功' : '登录成功'; },
      redirecting: '正在跳转…',
      unreachable: '无法连接登录服务器。',
      retryIn: function (s) { return s + ' 秒后重试…'; },
      rateLimited: '请求过于频繁，稍后将自动获取新的二维码。',
      wechatUnavailable: '微信服务暂时无响应，正在重试…',
      shuttingDown: '登录服务器正在重启…',
      genericError: '出现问题，正在重试…',
      imgFailed: '二维码图片加载失败。',
      phoneHint: '在手机上？请在另一块屏幕上打开本页，或在微信内长按识别二维码。'
    },
    'zh-Hant': {
      connecting: '正在連線…',
      loadingCode: '正在取得 QR Code…',
      scan: '請使用微信掃一掃登入',
      alt: '微信登入 QR Code，請用微信掃描此 QR Code 登入。',
      altScanned: '微信登入 QR Code，已掃描，請在手機上確認登入。',
      expiresIn: function (s) { return fmtTime(s) + ' 後過期'; },
      expired: 'QR Code 已過期。',
      scanned: function (u) { return (u ? u + ' 已掃描' : '已掃描') + '，請在手機上確認登入（在微信中回覆 1）'; },
      awaitingConfirm: '等待在手機上確認…',
      refresh: '重新整理 QR Code',
      retryNow: '立即重試',
      success: function (u) { return u ? u + '，登入成功' : '登入成功'; },
      redirecting: '正在跳轉…',
      unreachable: '無法連線至登入伺服器。',
      retryIn: function (s) { return s + ' 秒後重試…'; },
      rateLimited: '請求過於頻繁，稍後將自動取得新的 QR Code。',
      wechatUnavailable: '微信服務暫時沒有回應，正在重試…',
      shuttingDown: '登入伺服器正在重新啟動…',
      genericError: '發生問題，正在重試…',
      imgFailed: 'QR Code 圖片載入失敗。',
      phoneHint: '在手機上？請在另一個螢幕上開啟本頁，或在微信內長按辨識 QR Code。'
    }
  };

  // Colours meet WCAG AA on white: #06874a (a darker WeChat green) is 4.6:1
  // against white, both ways, and #056b3b (hover) 6.6:1 under white text.
  var CSS = [
    '.scan-login{box-sizing:border-box;width:100%;max-width:320px;margin:0 auto;padding:16px;',
    'font:16px/1.45 system-ui,-apple-system,"PingFang SC","Microsoft YaHei",sans-serif;',
    'color:inherit;text-align:center;}',
    '.scan-login:lang(zh-Hant){font-family:system-ui,-apple-system,"PingFang TC","Microsoft JhengHei",sans-serif;}',
    '.scan-login *{box-sizing:border-box;}',
    '.scan-login .sl-box{position:relative;width:100%;aspect-ratio:1/1;margin:0 auto 12px;',
    'border:1px solid #d0d7de;border-radius:12px;background:#fff;overflow:hidden;',
    'display:flex;align-items:center;justify-content:center;}',
    '.scan-login .sl-qr{display:block;width:100%;height:100%;object-fit:contain;padding:8px;}',
    '.scan-login .sl-mark{font-size:72px;line-height:1;color:#06874a;}',
    '.scan-login .sl-spinner{width:48px;height:48px;border:4px solid #d0d7de;border-top-color:#06874a;',
    'border-radius:50%;animation:sl-spin 1s linear infinite;}',
    '@keyframes sl-spin{to{transform:rotate(360deg);}}',
    '@media (prefers-reduced-motion:reduce){.scan-login .sl-spinner{animation:none;}}',
    '.scan-login .sl-veil{position:absolute;inset:0;display:flex;flex-direction:column;gap:12px;',
    'align-items:center;justify-content:center;background:rgba(255,255,255,.92);color:#1f2328;padding:16px;}',
    '.scan-login .sl-status{margin:0 0 4px;font-weight:600;min-height:1.45em;}',
    '.scan-login .sl-sub{margin:0 0 8px;font-size:14px;opacity:.75;min-height:1.45em;}',
    '.scan-login .sl-note{margin:8px 0 0;font-size:14px;color:#7d4e00;background:#fff8c5;',
    'border-radius:8px;padding:6px 10px;}',
    '.scan-login .sl-note:empty{display:none;}',
    '.scan-login .sl-hint{display:none;margin:8px 0 0;font-size:13px;opacity:.75;}',
    '.scan-login .sl-btn{font:inherit;font-weight:600;min-height:44px;min-width:120px;padding:8px 20px;',
    'border:0;border-radius:8px;background:#06874a;color:#fff;cursor:pointer;}',
    '.scan-login .sl-btn:hover{background:#056b3b;}',
    '.scan-login .sl-btn:focus-visible{outline:3px solid #0969da;outline-offset:2px;}',

    '.scan-login[data-state="expired"] .sl-qr{filter:blur(2px) grayscale(1);opacity:.5;}',
    '.scan-login[data-state="scanned"] .sl-qr{filter:blur(3px) grayscale(1);opacity:.3;}',
    '.scan-login [hidden]{display:none !important;}',
    '@media (max-width:480px){.scan-login{max-width:100%;padding:12px;}',
    '.scan-login .sl-hint{display:block;}}',
    '.scan-login:not([data-state="qr"]) .sl-hint{display:none;}'
  ].join('');

  function fmtTime(s) {
    s = Math.max(0, Math.round(s));
    var m = Math.floor(s / 60);
    var r = s % 60;
    return m + ':' + (r < 10 ? '0' : '') + r;
  }

  /**
   * 'en', 'zh-Hans' or 'zh-Hant' for a BCP 47 tag (default: the browser's):
   * a Hant/Hans script subtag decides, else the regions TW, HK and MO mean
   * Traditional; any other Chinese is Simplified, anything else English.
   */
  function pickLang(tag) {
    var parts = String(tag || (global.navigator && global.navigator.language) || 'en')
      .toLowerCase().replace(/_/g, '-').split('-');
    if (parts[0] !== 'zh') return 'en';
    for (var i = 1; i < parts.length; i++) {
      if (parts[i] === 'hans') return 'zh-Hans';
      if (parts[i] === 'hant' || parts[i] === 'tw' || parts[i] === 'hk' || parts[i] === 'mo') return 'zh-Hant';
    }
    return 'zh-Hans';
  }

  /** The built-in table of `lang` with `overrides` (mount's `strings`) over it. */
  function buildStrings(lang, overrides) {
    var base = TEXT[lang];
    var T = {};
    var k;
    for (k in base) if (Object.prototype.hasOwnProperty.call(base, k)) T[k] = base[k];
    if (!overrides || typeof overrides !== 'object') return T;
    for (k in overrides) {
      if (!Object.prototype.hasOwnProperty.call(overrides, k)) continue;
      var v = overrides[k];
      var builtIn = base[k];
      if (!Object.prototype.hasOwnProperty.call(base, k)) {
        warn('ScanLogin.mount: unknown string "' + k + '" ignored');
      } else if (typeof builtIn === 'function') {
        if (typeof v === 'function') T[k] = guarded(k, v, builtIn);
        else if (typeof v === 'string') T[k] = constant(v);
        else warn('ScanLogin.mount: string "' + k + '" must be a function or a string');
      } else if (typeof v === 'string') {
        T[k] = v;
      } else {
        warn('ScanLogin.mount: string "' + k + '" must be a string');
      }
    }
    return T;
  }
  function constant(s) { return function () { return s; }; }
  function guarded(key, fn, fallback) {
    var reported = false;   // some are called every second: say it once
    return function (x) {
      try { return String(fn(x)); } catch (e) {
        if (!reported && global.console) global.console.error('scan-login: strings.' + key + ' failed:', e);
        reported = true;
        return fallback(x);
      }
    };
  }
  function warn(msg) { if (global.console) global.console.warn(msg); }

  function defaultUrl() {
    var loc = global.location;
    return (loc.protocol === 'https:' ? 'wss://' : 'ws://') + loc.host + '/ws';
  }

  /** The ticket from an image URL ending in `?ticket=<urlencoded ticket>`. */
  function ticketOf(url) {
    var m = /[?&]ticket=([^&#]*)/.exec(String(url || ''));
    if (!m) return '';
    try { return decodeURIComponent(m[1]); } catch (e) { return m[1]; }
  }

  function injectCss(doc) {
    if (doc.getElementById('scan-login-style')) return;
    var style = doc.createElement('style');
    style.id = 'scan-login-style';
    style.textContent = CSS;
    (doc.head || doc.documentElement).appendChild(style);
  }

  function el(doc, tag, cls, attrs) {
    var e = doc.createElement(tag);
    if (cls) e.className = cls;
    if (attrs) for (var k in attrs) if (Object.prototype.hasOwnProperty.call(attrs, k)) e.setAttribute(k, attrs[k]);
    return e;
  }

  function safeCall(fn, a, b) {
    if (typeof fn !== 'function') return;
    try { fn(a, b); } catch (e) { if (global.console) global.console.error('scan-login callback failed:', e); }
  }

  /**
   * Mounts a login widget into `root`. See the header comment for options.
   */
  function mount(root, options) {
    if (!root || !root.ownerDocument) throw new TypeError('ScanLogin.mount: an element is required');
    var opts = options || {};
    var doc = root.ownerDocument;
    var lang = pickLang(opts.lang);
    var T = buildStrings(lang, opts.strings);
    var wsUrl = opts.url || defaultUrl();

    injectCss(doc);

    // ---- DOM ---------------------------------------------------------------
    var prevClass = root.className;
    var prevLang = root.getAttribute('lang');
    root.classList.add('scan-login');
    root.setAttribute('lang', lang);
    while (root.firstChild) root.removeChild(root.firstChild);

    var box = el(doc, 'div', 'sl-box');
    var img = el(doc, 'img', 'sl-qr', { alt: T.alt, width: '280', height: '280', decoding: 'async' });
    img.hidden = true;
    var spinner = el(doc, 'div', 'sl-spinner', { 'aria-hidden': 'true' });
    var mark = el(doc, 'div', 'sl-mark', { 'aria-hidden': 'true' });
    mark.textContent = '\u2714';
    mark.hidden = true;
    var veil = el(doc, 'div', 'sl-veil');
    veil.hidden = true;
    var veilText = el(doc, 'p', 'sl-veil-text');
    veilText.style.margin = '0';
    var button = el(doc, 'button', 'sl-btn sl-refresh', { type: 'button' });
    veil.appendChild(veilText);
    veil.appendChild(button);
    box.appendChild(spinner);
    box.appendChild(img);
    box.appendChild(mark);
    box.appendChild(veil);

    // State changes are announced; the ticking countdown is not.
    var status = el(doc, 'p', 'sl-status', { role: 'status', 'aria-live': 'polite', 'aria-atomic': 'true' });
    var sub = el(doc, 'p', 'sl-sub', { 'aria-live': 'off' });
    var note = el(doc, 'p', 'sl-note', { 'aria-live': 'polite' });
    var hint = el(doc, 'p', 'sl-hint');
    hint.textContent = T.phoneHint;

    root.appendChild(box);
    root.appendChild(status);
    root.appendChild(sub);
    root.appendChild(note);
    root.appendChild(hint);

    // ---- state -------------------------------------------------------------
    var state = null;
    var ws = null;
    var destroyed = false;
    var attempt = 0;            // consecutive failed connection attempts
    var timers = {};            // name → timeout id
    var pingTimer = null;
    var countdownTimer = null;
    var expiresAt = 0;
    var lastCode = null;
    var lastCodeAt = 0;
    var lastRx = 0;
    var lastPingAt = 0;
    var rateStrikes = 0;
    var hiddenClosed = false;   // closed because the tab was hidden too long
    var pageHidden = false;     // closed on pagehide
    var buttonAction = null;
    var lastScanned = null;     // detail of the last `scanned` frame

    function setTimer(name, fn, ms) {
      clearTimer(name);
      timers[name] = global.setTimeout(function () { delete timers[name]; fn(); }, ms);
    }
    function clearTimer(name) {
      if (timers[name] !== undefined) { global.clearTimeout(timers[name]); delete timers[name]; }
    }
    function clearAllTimers() {
      for (var k in timers) if (Object.prototype.hasOwnProperty.call(timers, k)) global.clearTimeout(timers[k]);
      timers = {};
      stopPing();
      stopCountdown();
    }

    function setState(next, detail) {
      state = next;
      root.setAttribute('data-state', next);
      safeCall(opts.onState, next, detail || {});
    }

    function setNote(text) { note.textContent = text || ''; }

    function showButton(label, action) {
      button.textContent = label;
      buttonAction = action;
      veil.hidden = false;
    }

    function render(view) {
      // view: {spinner, qr, alt, mark, veilText, button:[label, action], status, sub}
      spinner.hidden = !view.spinner;
      img.hidden = !view.qr;
      var alt = view.alt || T.alt;
      if (img.getAttribute('alt') !== alt) img.setAttribute('alt', alt);
      mark.hidden = !view.mark;
      veil.hidden = !view.veilText;
      buttonAction = null;
      button.hidden = !view.button;
      veilText.textContent = view.veilText || '';
      veilText.hidden = !view.veilText;
      if (view.button) showButton(view.button[0], view.button[1]);
      if (status.textContent !== view.status) status.textContent = view.status || '';
      sub.textContent = view.sub || '';
    }

    button.addEventListener('click', function () {
      if (typeof buttonAction === 'function') buttonAction();
    });

    img.addEventListener('error', function () {
      if (state === 'qr' && img.getAttribute('src')) setNote(T.imgFailed);
    });
    img.addEventListener('load', function () {
      if (note.textContent === T.imgFailed) setNote('');
    });

    // ---- countdown ---------------------------------------------------------
    function stopCountdown() {
      if (countdownTimer !== null) { global.clearInterval(countdownTimer); countdownTimer = null; }
    }
    function tick() {
      var left = Math.ceil((expiresAt - Date.now()) / 1000);
      if (left <= 0) {
        stopCountdown();
        showExpired();
        return;
      }
      sub.textContent = T.expiresIn(left);
    }

    // ---- keepalive -----------------------------------------------------------
    function stopPing() {
      if (pingTimer !== null) { global.clearInterval(pingTimer); pingTimer = null; }
      lastPingAt = 0;
    }

    function armWatchdog() {
      setTimer('watchdog', function () {
        if (!ws || state === 'success' || state === 'qr' || state === 'scanned') return;
        dropSocket();
        scheduleReconnect();
      }, CODE_WATCHDOG_MS);
    }
    function startPing() {
      stopPing();
      pingTimer = global.setInterval(function () {
        if (!ws || ws.readyState !== 1) return;
        var now = Date.now();
        // Compared with the previous ping rather than with a fixed silence
        // limit, so timer throttling in background tabs cannot fake a death.
        if (lastPingAt && lastRx < lastPingAt && now - lastPingAt > PONG_TIMEOUT_MS) {
          dropSocket();
          showConnecting(false);
          scheduleReconnect();
          return;
        }
        lastPingAt = now;
        send({ cmd: 'ping' });
      }, PING_INTERVAL_MS);
    }

    // ---- views ---------------------------------------------------------------
    function showConnecting(loadingCode) {
      stopCountdown();
      render({ spinner: true, status: loadingCode ? T.loadingCode : T.connecting });
      setState('connecting', {});
    }

    function showCode(frame) {
      clearTimer('watchdog');
      clearTimer('confirmWait');
      rateStrikes = 0;
      clearTimer('rateRetry');
      setNote('');
      lastCodeAt = Date.now();
      lastCode = {
        url: frame.url,
        qr_content: frame.qr_content,
        expire_seconds: frame.expire_seconds,
        ticket: ticketOf(frame.url)
      };
      img.src = frame.url;
      var secs = Number(frame.expire_seconds) > 0 ? Number(frame.expire_seconds) : 120;
      expiresAt = lastCodeAt + secs * 1000;
      render({ qr: true, status: T.scan, sub: T.expiresIn(secs) });
      stopCountdown();
      countdownTimer = global.setInterval(tick, 1000);
      setState('qr', lastCode);
    }

    function showExpired() {
      if (state === 'success' || state === 'expired') return;
      stopCountdown();
      clearTimer('rateRetry');
      render({ qr: !!lastCode, spinner: !lastCode, veilText: T.expired, button: [T.refresh, requestRefresh], status: T.expired });
      setState('expired', {});
    }

    function showScanned(frame) {
      if (state === 'success') return;
      var detail = { user: typeof frame.user === 'string' ? frame.user : '' };
      // The same frame again (e.g. a repeated delivery) changes nothing.
      if (state === 'scanned' && lastScanned && lastScanned.user === detail.user) return;
      lastScanned = detail;
      clearTimer('watchdog');
      // A pending retry would replace the code the user is confirming.
      clearTimer('rateRetry');
      stopCountdown();
      setNote('');
      render({
        qr: !!lastCode,
        spinner: !lastCode,
        alt: T.altScanned,
        veilText: T.awaitingConfirm,
        status: T.scanned(detail.user)
      });
      setTimer('confirmWait', function () {
        if (state === 'scanned') showExpired();
      }, Math.max(0, expiresAt - Date.now()) + CONFIRM_GRACE_MS);
      setState('scanned', detail);
      safeCall(opts.onScanned, detail);
    }

    /**
     * Sends the token to `action` as a POST form submission (field `token`),
     * so that it never appears in a URL (history, server logs, Referer).
     */
    function postToken(action, token) {
      var form = el(doc, 'form', null, { method: 'post', action: action, 'accept-charset': 'utf-8' });
      form.style.display = 'none';
      var input = el(doc, 'input', null, { type: 'hidden', name: 'token' });
      input.value = token;
      form.appendChild(input);
      (doc.body || doc.documentElement).appendChild(form);
      // The prototype's submit() is immune to a field named "submit".
      var submit = global.HTMLFormElement && global.HTMLFormElement.prototype.submit;
      if (submit) submit.call(form); else form.submit();
    }

    function showSuccess(frame) {
      clearAllTimers();
      setNote('');
      var detail = { user: frame.user || '', openid: frame.openid || '', token: frame.token };
      render({ mark: true, status: T.success(detail.user), sub: opts.redirect ? T.redirecting : '' });
      setState('success', detail);
      // The login is done: nothing more will come on this socket.
      dropSocket();
      safeCall(opts.onSuccess, detail);
      if (opts.redirect) {
        var target = String(opts.redirect);
        if (detail.token) postToken(target, String(detail.token));
        else global.location.assign(target);
      }
    }

    function showUnreachable(retryIn) {
      stopCountdown();
      var secs = Math.max(1, Math.round(retryIn / 1000));
      render({
        spinner: false,
        qr: false,
        veilText: T.unreachable,
        button: [T.retryNow, retryNow],
        status: T.unreachable,
        sub: T.retryIn(secs)
      });
      var until = Date.now() + retryIn;
      // Keep the "trying again in N s" line current.
      (function countDown() {
        setTimer('unreachableTick', function () {
          if (state !== 'unreachable') return;
          var left = Math.max(1, Math.round((until - Date.now()) / 1000));
          sub.textContent = T.retryIn(left);
          countDown();
        }, 1000);
      })();
      var detail = { attempt: attempt, retryIn: retryIn };
      if (state !== 'unreachable') safeCall(opts.onError, { error: 'unreachable', message: T.unreachable });
      setState('unreachable', detail);
    }

    function showError(code, message, gentle) {
      stopCountdown();
      render({ spinner: true, status: gentle || T.genericError });
      setState('error', { error: code, message: message || '' });
    }

    // ---- socket ----------------------------------------------------------------
    function send(obj) {
      if (ws && ws.readyState === 1) {
        try { ws.send(JSON.stringify(obj)); return true; } catch (e) { /* closed under us */ }
      }
      return false;
    }

    function dropSocket() {
      stopPing();
      if (!ws) return;
      var s = ws;
      ws = null;
      s.onopen = s.onmessage = s.onerror = s.onclose = null;
      try { s.close(1000); } catch (e) { /* already closing */ }
    }

    function connect() {
      if (destroyed) return;
      clearTimer('reconnect');
      clearTimer('unreachableTick');
      dropSocket();
      if (state === 'unreachable') sub.textContent = T.connecting;
      else showConnecting(false);
      var opened = false;
      var s;
      try {
        s = new global.WebSocket(wsUrl);
      } catch (e) {
        safeCall(opts.onError, { error: 'bad_url', message: String(e && e.message || e) });
        scheduleReconnect();
        return;
      }
      ws = s;
      s.onopen = function () {
        opened = true;
        lastRx = Date.now();
        startPing();
        showConnecting(true);
        armWatchdog();
      };
      s.onmessage = function (ev) {
        lastRx = Date.now();
        if (typeof ev.data !== 'string') return;
        var frame;
        try { frame = JSON.parse(ev.data); } catch (e) { return; }
        if (frame && typeof frame === 'object') onFrame(frame);
      };
      s.onclose = function () {
        if (ws !== s) return;
        ws = null;
        stopPing();
        clearTimer('watchdog');
        if (destroyed || state === 'success') return;
        // The code on screen belonged to that connection: it is dead now.
        if (opened && state !== 'unreachable') showConnecting(false);
        scheduleReconnect();
      };
      s.onerror = function () { /* onclose follows and handles it */ };
    }

    function backoff(n) {
      var base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * Math.pow(2, n));
      // Full jitter on the upper half: spreads a reconnect storm after a
      // gateway restart without ever waiting less than half the base.
      return Math.round(base / 2 + Math.random() * base / 2);
    }

    function scheduleReconnect() {
      if (destroyed || hiddenClosed || pageHidden) return;
      var delay = backoff(attempt);
      attempt += 1;
      if (attempt > 1) showUnreachable(delay);
      setTimer('reconnect', connect, delay);
    }

    function retryNow() {
      attempt = 0;
      connect();
    }

    function requestRefresh() {
      if (destroyed) return;
      clearTimer('rateRetry');
      if (ws && ws.readyState === 1) {
        showConnecting(true);
        send({ cmd: 'refresh' });
        armWatchdog();
      } else {
        // No live socket: a new connection brings a new code.
        attempt = 0;
        connect();
      }
    }

    function onRateLimited(message) {
      if (state === 'scanned') {
        // The user is confirming the code on screen: leave it alone.
        setNote(T.rateLimited);
        return;
      }
      rateStrikes += 1;
      // A refresh is allowed 5 s after the last minted code; the per-IP
      // budget needs longer. Back off gently either way.
      var wait = Math.max(1000, lastCodeAt + REFRESH_SPACING_MS + 300 - Date.now());
      if (rateStrikes > 1) wait = Math.max(wait, Math.min(RATE_RETRY_MAX_MS, 2500 * Math.pow(2, rateStrikes - 1)));
      wait += Math.round(Math.random() * 500);
      if (state === 'qr' && Date.now() < expiresAt) {
        // The code on screen still works; just say so and try again later.
        setNote(T.rateLimited);
      } else {
        showError('rate_limited', message, T.rateLimited);
      }
      setTimer('rateRetry', function () {
        if (state === 'qr' && Date.now() < expiresAt) { setNote(''); return; }
        requestRefresh();
      }, wait);
    }

    function onFrame(frame) {
      switch (frame.message_type) {
        case 'qrcode_url':
          attempt = 0;
          if (state === 'success') return;
          showCode(frame);
          break;
        case 'scanned':
          showScanned(frame);
          break;
        case 'scan_success':
          showSuccess(frame);
          break;
        case 'qrcode_expired':
          showExpired();
          break;
        case 'pong':
          break;
        case 'error':
          onErrorFrame(frame);
          break;
        default:
          break;
      }
    }

    function onErrorFrame(frame) {
      var code = String(frame.error || '');
      var message = String(frame.message || '');
      safeCall(opts.onError, { error: code, message: message });
      if (state === 'success') return;
      if (code === 'rate_limited' || code === 'wechat_unavailable') clearTimer('watchdog');
      if (code === 'rate_limited') {
        onRateLimited(message);
      } else if (code === 'wechat_unavailable') {
        // The gateway retries on its own; ask again if nothing comes.
        showError(code, message, T.wechatUnavailable);
        setTimer('rateRetry', requestRefresh, 10000 + Math.round(Math.random() * 2000));
      } else if (code === 'shutting_down') {
        showError(code, message, T.shuttingDown);
      }
      // bad_command / bad_frame: our own mistake; reported via onError only.
    }

    // ---- page lifecycle ----------------------------------------------------------
    function onVisibility() {
      if (destroyed) return;
      if (doc.visibilityState === 'hidden') {
        setTimer('hidden', function () {
          if (state === 'success') return;
          hiddenClosed = true;
          clearTimer('reconnect');
          clearTimer('rateRetry');
          dropSocket();
          stopCountdown();
          render({ spinner: true, status: T.connecting });
          setState('connecting', {});
        }, HIDDEN_CLOSE_MS);
      } else {
        clearTimer('hidden');
        if (hiddenClosed) {
          hiddenClosed = false;
          attempt = 0;
          connect();
        }
      }
    }
    function onPageHide() {
      pageHidden = true;
      clearTimer('reconnect');
      clearTimer('rateRetry');
      dropSocket();
    }
    function onPageShow(ev) {
      if (!pageHidden || destroyed) return;
      pageHidden = false;
      if (ev && ev.persisted && state !== 'success') {
        attempt = 0;
        connect();
      }
    }
    doc.addEventListener('visibilitychange', onVisibility);
    global.addEventListener('pagehide', onPageHide);
    global.addEventListener('pageshow', onPageShow);

    // ---- handle ---------------------------------------------------------------------
    var handle = {
      refresh: function () {
        if (destroyed || state === 'success') return;
        requestRefresh();
      },
      destroy: function () {
        if (destroyed) return;
        destroyed = true;
        clearAllTimers();
        dropSocket();
        doc.removeEventListener('visibilitychange', onVisibility);
        global.removeEventListener('pagehide', onPageHide);
        global.removeEventListener('pageshow', onPageShow);
        while (root.firstChild) root.removeChild(root.firstChild);
        root.removeAttribute('data-state');
        root.className = prevClass;
        if (prevLang === null) root.removeAttribute('lang'); else root.setAttribute('lang', prevLang);
      }
    };
    Object.defineProperty(handle, 'state', { get: function () { return state; } });
    Object.defineProperty(handle, 'lastCode', { get: function () { return lastCode; } });

    connect();
    return handle;
  }

  global.ScanLogin = {
    version: VERSION,
    mount: mount,
    pickLang: pickLang,
    ticketOf: ticketOf
  };
})(typeof globalThis !== 'undefined' ? globalThis : window);
