"""Runs examples/handler-sends-bus-line/ against the real ws-gateway.

    python3 check_bus_line.py GATEWAY_WS_URL SIM_URL NOTIFY_PORT

Env: LOGIN_TOKEN_SECRET, EXPECT_ISSUER, EXPECT_AUDIENCE, WECHAT_TOKEN.
Each check opens a login page (page.mjs), finds its fd (the ticket's
scene_id, from wechat-sim's /sim/tickets/<ticket>) and logs it in the way
an account's own handler would: notify.py's notify_login, then handler.py's
wechatpy handler in plain and in safe mode. Prints one `ok - ...` or
`not ok - ...` line per check; exits 1 if any failed.
"""

import hashlib
import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
sys.path.insert(0, os.path.join(ROOT, "examples", "handler-sends-bus-line"))
sys.path.insert(0, os.path.join(ROOT, "examples", "backend", "python"))
import handler  # noqa: E402
from notify import LOGIN_FD_MIN, login_fd, notify_login  # noqa: E402
from verify_token import SeenJtis, verify  # noqa: E402
from wechatpy import parse_message  # noqa: E402
from wechatpy.crypto import WeChatCrypto  # noqa: E402

ws_url, sim_url, notify_port = sys.argv[1], sys.argv[2], int(sys.argv[3])
SECRET = os.environ["LOGIN_TOKEN_SECRET"]
ISSUER = os.environ["EXPECT_ISSUER"]
AUDIENCE = os.environ["EXPECT_AUDIENCE"]
WECHAT_TOKEN = os.environ["WECHAT_TOKEN"]
ADDR = ("127.0.0.1", notify_port)
SEEN = SeenJtis()
failed = 0


def check(name, fn):
    global failed
    try:
        detail = fn()
        print(f"ok - bus line: {name}" + (f" ({detail})" if detail else ""), flush=True)
    except Exception as e:  # noqa: BLE001 - report every failure as a check
        failed += 1
        print(f"not ok - bus line: {name}: {type(e).__name__}: {e}", flush=True)


class Page:
    """A login page (page.mjs) and its QR code's ticket and fd."""

    def __init__(self, stay=False):
        args = ["node", os.path.join(HERE, "page.mjs"), ws_url, sim_url] + (["--stay"] if stay else [])
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()  # page.mjs exits within 20 s whatever happens
        if not line.startswith("ticket "):
            self.proc.kill()
            raise AssertionError(f"page printed {line!r} instead of its ticket")
        self.ticket = line[len("ticket "):].rstrip("\n")
        url = sim_url + "/sim/tickets/" + urllib.parse.quote(self.ticket, safe="")
        with urllib.request.urlopen(url, timeout=5) as r:
            self.fd = json.load(r)["scene_id"]

    def success(self):
        """The scan_success frame the page got (waits for it; page.mjs
        gives up after 20 s)."""
        line = self.proc.stdout.readline()
        if not line.startswith("scan_success "):
            self.proc.wait(timeout=25)
            raise AssertionError(f"page exited {self.proc.returncode}, printed {line!r}")
        return json.loads(line[len("scan_success "):])

    def close(self):
        try:
            self.proc.stdin.close()  # a --stay page closes its socket and exits
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def config(**over):
    c = dict(handler.CONFIG, wechat_token=WECHAT_TOKEN, login_token_secret=SECRET,
             login_token_issuer=ISSUER, login_token_audience=AUDIENCE, notify_addr=ADDR,
             notify_secret=None)
    c.update(over)
    return c


def signed_query(**extra):
    ts, nonce = str(int(time.time())), secrets.token_hex(4)
    sig = hashlib.sha1("".join(sorted([WECHAT_TOKEN, ts, nonce])).encode()).hexdigest()
    return dict(signature=sig, timestamp=ts, nonce=nonce, **extra)


def event_xml(openid, event, key, ticket):
    return (f"<xml><ToUserName><![CDATA[gh_example]]></ToUserName>"
            f"<FromUserName><![CDATA[{openid}]]></FromUserName>"
            f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
            f"<Event><![CDATA[{event}]]></Event><EventKey><![CDATA[{key}]]></EventKey>"
            f"<Ticket><![CDATA[{ticket}]]></Ticket></xml>")


# --- notify.py ---------------------------------------------------------------

page = None


def notify_logs_the_page_in():
    global page
    page = Page(stay=True)
    assert page.fd >= LOGIN_FD_MIN and login_fd(str(page.fd)) == page.fd, page.fd
    assert login_fd("qrscene_%d" % page.fd) == page.fd and login_fd("123") is None
    token = handler.mint_login_token("oExampleBusLine0000000000001", "Alice", config())
    answer = notify_login(page.fd, "Alice", "oExampleBusLine0000000000001", page.ticket,
                          addr=ADDR, token=token)
    assert answer == {"ok": True}, answer
    frame = page.success()
    assert frame["user"] == "Alice" and frame["openid"] == "oExampleBusLine0000000000001", frame
    assert frame["token"] == token, frame
    claims = verify(frame["token"], SECRET, ISSUER, AUDIENCE, SEEN)
    return f"fd {page.fd}: {answer}, page got scan_success, token verified for {claims['sub']}"


def spent_ticket():
    answer = notify_login(page.fd, "Alice", "oExampleBusLine0000000000001", page.ticket, addr=ADDR)
    assert answer == {"ok": False, "error": "ticket_mismatch"}, answer
    return str(answer)


def no_page():
    answer = notify_login(LOGIN_FD_MIN + 7, "Alice", "oX", "no-such-ticket", addr=ADDR)
    assert answer == {"ok": False, "error": "no_such_client"}, answer
    return str(answer)


def unreachable():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    answer = notify_login(LOGIN_FD_MIN + 7, "Alice", "oX", "t", addr=("127.0.0.1", port))
    assert answer.get("ok") is False and answer.get("error") == "unreachable", answer
    return answer["error"]


check("notify_login answers {'ok': true} and the page gets scan_success", notify_logs_the_page_in)
check("the same ticket again, page still open, is ticket_mismatch", spent_ticket)
if page:
    page.close()
check("an fd without a page is no_such_client", no_page)
check("a gateway that is down is 'unreachable', not an exception", unreachable)

# --- handler.py (wechatpy) ------------------------------------------------------


def wechatpy_plain():
    p = Page()
    try:
        openid = "oExampleHandler00000000000P1"
        body = event_xml(openid, "SCAN", str(p.fd), p.ticket)
        q = signed_query()
        reply = parse_message(handler.handle(q, body, config()))
        assert "login successful" in reply.content, reply.content
        frame = p.success()
        assert frame["openid"] == openid and frame["user"] == "WeChat user 00P1", frame
        claims = verify(frame["token"], SECRET, ISSUER, AUDIENCE, SEEN)
        again = parse_message(handler.handle(q, body, config()))  # WeChat's retry
        assert again.content == reply.content, again.content
        return f"reply {reply.content!r}; retry got the same reply; token verified for {claims['sub']}"
    finally:
        p.close()


def wechatpy_safe():
    p = Page()
    try:
        openid = "oExampleHandler00000000000S1"
        key, app_id = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", "wxexample000000001"
        c = config(encoding_aes_key=key, app_id=app_id)
        crypto = WeChatCrypto(WECHAT_TOKEN, key, app_id)
        ts, nonce = str(int(time.time())), "n0nce"
        enc = crypto.encrypt_message(event_xml(openid, "subscribe", "qrscene_%d" % p.fd, p.ticket),
                                     nonce, ts)
        import xmltodict
        d = xmltodict.parse(enc)["xml"]
        q = dict(signed_query(), timestamp=ts, nonce=nonce, encrypt_type="aes",
                 msg_signature=d["MsgSignature"])
        q["signature"] = hashlib.sha1("".join(sorted([WECHAT_TOKEN, ts, nonce])).encode()).hexdigest()
        body = f"<xml><ToUserName><![CDATA[gh_example]]></ToUserName><Encrypt><![CDATA[{d['Encrypt']}]]></Encrypt></xml>"
        out = handler.handle(q, body, c)
        od = xmltodict.parse(out)["xml"]
        reply = parse_message(crypto.decrypt_message(out, od["MsgSignature"], od["TimeStamp"], od["Nonce"]))
        assert "login successful" in reply.content, reply.content
        frame = p.success()
        assert frame["openid"] == openid, frame
        verify(frame["token"], SECRET, ISSUER, AUDIENCE, SEEN)
        return f"encrypted reply {reply.content!r}"
    finally:
        p.close()


def own_scene():
    out = handler.handle(signed_query(), event_xml("oX", "SCAN", "123", "t"), config())
    assert out == "success", out


class Captured(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def gateway_refusal_wording():
    log = logging.getLogger("scan-login")
    captured = Captured()
    log.addHandler(captured)
    log.propagate = False
    try:
        out = handler.handle(signed_query(), event_xml("oExampleHandler00000000000R1", "SCAN",
                                                       str(LOGIN_FD_MIN + 9), "no-such-ticket"), config())
    finally:
        log.removeHandler(captured)
        log.propagate = True
    reply = parse_message(out)
    assert "refresh the login page" in reply.content, reply.content
    assert any("no_such_client" in line for line in captured.lines), captured.lines
    return f"{reply.content!r}; logged {captured.lines[0]!r}"


check("wechatpy handler, plain mode: SCAN event logs the page in", wechatpy_plain)
check("wechatpy handler, safe mode: subscribe event logs the page in", wechatpy_safe)
check("wechatpy handler: a scene below 2^20 is not a login", own_scene)
check("wechatpy handler: a refused bus line gives the scan-again reply", gateway_refusal_wording)

sys.exit(1 if failed else 0)
