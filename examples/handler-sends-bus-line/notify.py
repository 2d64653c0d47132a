"""Tell ws-gateway that a login page's QR code was scanned: one bus line.

For an account that keeps its own message handler as the server URL (instead
of wechat-callback): when the handler receives a `subscribe` or `SCAN` event
whose scene is a login fd (2^20 or more), it calls `notify_login`, which
sends one NDJSON line to the gateway's notify port (--notify-listen) and
returns the gateway's answer:

    answer = notify_login(fd, "Alice", openid, ticket, token=login_token)
    reply = LOGIN_OK if answer.get("ok") else SCAN_AGAIN

`{"ok": True}` means the page got `scan_success`; anything else
(`{"ok": False, "error": "<code>"}`) means it did not, and the user should
refresh the login page and scan again. See docs/WECHAT-SETUP.md for what
each code means, and handler.py beside this file for a wechatpy handler
that uses it.

Standard library only; Python 3.8+.
"""

import json
import socket

# Login fds are node * 2^27 + r with 2^20 <= r < 2^27 (docs/PROTOCOL.md); a
# smaller scene is one of the account's own QR codes, never a login.
LOGIN_FD_MIN = 1 << 20
LOGIN_FD_MAX = (1 << 32) - 1
# The longest a bus line may be (the gateway answers line_too_long past it).
MAX_LINE = 64 * 1024

LOGIN_OK = "{name}, login successful!"
SCAN_AGAIN = "{name}, the login did not complete: please refresh the login page and scan the new QR code."


def login_fd(event_key):
    """The login fd in an event's EventKey, or None when it is not a login.

    `subscribe` events carry "qrscene_<scene>", `SCAN` events "<scene>";
    wechatpy's parse_message already strips the "qrscene_" (its
    `scene_id`). String scenes and scenes below 2^20 are the account's own.
    """
    key = str(event_key or "")
    if key.startswith("qrscene_"):
        key = key[len("qrscene_"):]
    if not key.isdigit() or not key.isascii():
        return None
    fd = int(key)
    return fd if LOGIN_FD_MIN <= fd <= LOGIN_FD_MAX else None


def notify_login(fd, nickname, openid, ticket, secret=None, addr=("127.0.0.1", 9999),
                 token=None, connect_timeout=1.0, answer_timeout=3.0):
    """Send `{"type":"scan",...}` for `fd` to ws-gateway; return its answer.

    - `fd`: the login fd (the event's scene, see `login_fd`).
    - `nickname`: the name the page shows (WeChat stopped sending real
      nicknames in 2021; e.g. "WeChat user " + openid[-4:]).
    - `openid`: the user's openid, passed to the page as `scan_success.openid`.
    - `ticket`: the event's `Ticket`. The gateway checks it against the
      page's current code and spends it, so one code logs in once.
    - `secret`: the gateway's --notify-secret, when it has one.
    - `token`: the login token the page hands to your backend (a JWT you
      sign; see handler.py). Without it the page gets an openid your
      backend cannot verify.

    Returns the answer as a dict: `{"ok": True}`, or `{"ok": False,
    "error": "<code>"}` (the gateway's codes, plus "unreachable" when the
    gateway cannot be reached or does not answer in time). Never raises for
    network trouble; the timeouts keep the whole call well inside WeChat's
    5-second limit.
    """
    line = {"type": "scan", "fd": int(fd), "nickname": str(nickname),
            "openid": str(openid), "ticket": str(ticket)}
    if token is not None:
        line["token"] = token
    if secret is not None:
        line["secret"] = secret
    data = (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
    if len(data) > MAX_LINE:
        return {"ok": False, "error": "line_too_long"}
    try:
        with socket.create_connection(addr, timeout=connect_timeout) as conn:
            conn.settimeout(answer_timeout)
            conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)  # one request: the gateway answers, then closes
            answer = b""
            while not answer.endswith(b"\n") and len(answer) <= MAX_LINE:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                answer += chunk
    except OSError as e:  # refused, timed out, reset
        return {"ok": False, "error": "unreachable", "detail": str(e)}
    try:
        parsed = json.loads(answer.split(b"\n", 1)[0].decode("utf-8"))
    except ValueError:
        return {"ok": False, "error": "unreachable", "detail": "no answer line"}
    return parsed if isinstance(parsed, dict) else {"ok": False, "error": "unreachable"}


if __name__ == "__main__":
    import argparse
    import os

    p = argparse.ArgumentParser(description="Send one scan line to ws-gateway's notify port.")
    p.add_argument("fd", type=int)
    p.add_argument("nickname")
    p.add_argument("openid")
    p.add_argument("ticket")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9999)
    a = p.parse_args()
    a.secret = os.environ.get("NOTIFY_SECRET") or None  # the gateway's --notify-secret
    print(json.dumps(notify_login(a.fd, a.nickname, a.openid, a.ticket, a.secret, (a.host, a.port))))
