// A login page without a browser: opens the gateway's WebSocket, prints the
// QR ticket, optionally has wechat-sim's phone scan it, and waits for
// scan_success. Used by run.sh and check_bus_line.py.
//
//   node page.mjs WS_URL SIM_URL [--scan OPENID] [--stay]
//
// Prints, one per line:
//   ticket <the QR ticket, percent-decoded from qrcode_url.url>
//   sim <wechat-sim's /sim/scan answer as JSON>        (with --scan)
//   scan_success <the frame as JSON>
// and exits 0 after scan_success (and, with --scan, the sim's answer); with
// --stay the page stays open after scan_success until its stdin closes.
// Exits 1 on an error frame or a closed socket, 2 after PAGE_TIMEOUT_MS
// (default 20000).

import WebSocket from 'ws';

const [wsUrl, simUrl, ...flags] = process.argv.slice(2);
let openid = null;
let stay = false;
for (let i = 0; i < flags.length; i++) {
  if (flags[i] === '--scan' && flags[i + 1]) openid = flags[++i];
  else if (flags[i] === '--stay') stay = true;
  else openid = undefined;
}
if (!wsUrl || !simUrl || openid === undefined) {
  console.error('usage: node page.mjs WS_URL SIM_URL [--scan OPENID] [--stay]');
  process.exit(2);
}
const scan = openid !== null;
const timeoutMs = Number(process.env.PAGE_TIMEOUT_MS || 20000);
setTimeout(() => {
  console.error(`page: no scan_success within ${timeoutMs} ms`);
  process.exit(2);
}, timeoutMs).unref();

let gotSuccess = false;
let simDone = !scan;
const finish = () => {
  if (!gotSuccess || !simDone) return;
  if (!stay) process.exit(0);
  process.stdin.on('data', () => {});
  process.stdin.on('close', () => process.exit(0));
  process.stdin.on('end', () => process.exit(0));
};

const ws = new WebSocket(wsUrl);
ws.on('error', (e) => {
  console.error(`page: websocket error: ${e.message}`);
  process.exit(1);
});
ws.on('close', (code) => {
  if (!gotSuccess) {
    console.error(`page: websocket closed (${code}) before scan_success`);
    process.exit(1);
  }
});
ws.on('message', async (data) => {
  const frame = JSON.parse(data.toString());
  switch (frame.message_type) {
    case 'qrcode_url': {
      const m = /[?&]ticket=([^&#]*)/.exec(frame.url);
      if (!m) {
        console.error(`page: no ticket= in ${frame.url}`);
        process.exit(1);
      }
      const ticket = decodeURIComponent(m[1]);
      console.log(`ticket ${ticket}`);
      if (scan) {
        const res = await fetch(`${simUrl}/sim/scan`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ ticket, openid, subscribed: false }),
          signal: AbortSignal.timeout(timeoutMs),
        });
        const body = await res.text();
        console.log(`sim ${body.trim()}`);
        if (!res.ok) {
          console.error(`page: /sim/scan answered ${res.status}`);
          process.exit(1);
        }
        simDone = true;
        finish();
      }
      break;
    }
    case 'scan_success':
      console.log(`scan_success ${JSON.stringify(frame)}`);
      gotSuccess = true;
      if (!stay) ws.close();
      finish();
      break;
    case 'error':
      console.error(`page: error frame ${JSON.stringify(frame)}`);
      process.exit(1);
      break;
    default:
      break;
  }
});
