"""An account's own message handler (wechatpy) with scan-login added.

The account keeps this handler as its server URL; wechat-callback is not
used. For a `subscribe`/`SCAN` event whose scene is a login fd, the handler
signs a login token, sends one bus line to ws-gateway (notify.py) and
replies to the user according to the answer. Everything else is the
handler's own business.

    WECHAT_TOKEN=... LOGIN_TOKEN_SECRET=... python3 handler.py   # serves :8080/wechat

`handle(query, body)` is the part to copy into your own framework (Flask,
Django, ...): `query` is the request's query parameters as a dict, `body`
the raw POST body; it returns the XML (or "success") to answer WeChat with.
Needs wechatpy and PyJWT (`pip install wechatpy cryptography PyJWT`).
"""

import logging
import os
import secrets
import threading
import time

import jwt
from wechatpy import create_reply, parse_message
from wechatpy.crypto import WeChatCrypto
from wechatpy.exceptions import InvalidSignatureException
from wechatpy.utils import check_signature

from notify import LOGIN_OK, SCAN_AGAIN, login_fd, notify_login

log = logging.getLogger("scan-login")

CONFIG = {
    "wechat_token": os.environ.get("WECHAT_TOKEN", ""),
    "encoding_aes_key": os.environ.get("WECHAT_ENCODING_AES_KEY", ""),  # safe mode
    "app_id": os.environ.get("SCAN_LOGIN_APP_ID", ""),
    "login_token_secret": os.environ.get("LOGIN_TOKEN_SECRET", ""),  # >= 32 bytes
    "login_token_issuer": os.environ.get("SCAN_LOGIN_LOGIN_TOKEN_ISSUER", "wechat-scan-login"),
    "login_token_audience": os.environ.get("SCAN_LOGIN_LOGIN_TOKEN_AUDIENCE") or None,
    "notify_addr": (os.environ.get("NOTIFY_HOST", "127.0.0.1"), int(os.environ.get("NOTIFY_PORT", "9999"))),
    "notify_secret": os.environ.get("NOTIFY_SECRET") or None,
}


def mint_login_token(openid, nickname, config, unionid=None):
    """The same token wechat-callback would sign: verify it the same way."""
    now = int(time.time())
    claims = {"sub": openid, "nickname": nickname, "iat": now, "exp": now + 300,
              "jti": secrets.token_hex(16), "iss": config["login_token_issuer"]}
    if config["login_token_audience"]:
        claims["aud"] = config["login_token_audience"]
    if unionid:
        claims["unionid"] = unionid
    return jwt.encode(claims, config["login_token_secret"], algorithm="HS256")


# WeChat retries an event it got no answer to within 5 s. A retry must get
# the first answer, not a second bus line (the ticket is spent by then and
# the gateway would say ticket_mismatch). Keep this in your store when the
# handler runs as several processes.
_replies = {}
_replies_lock = threading.Lock()


def _once(key, work):
    now = time.time()
    with _replies_lock:
        for k in [k for k, (t, _) in _replies.items() if t < now - 300]:
            del _replies[k]
        if key in _replies:
            return _replies[key][1]
    reply = work()
    with _replies_lock:
        _replies[key] = (now, reply)
    return reply


def on_login_scan(msg, fd, config):
    """A login page's code was scanned: tell the gateway, word the reply."""
    name = "WeChat user " + msg.source[-4:]  # or the remark from user/info
    token = mint_login_token(msg.source, name, config)
    answer = notify_login(fd, name, msg.source, msg.ticket,
                          secret=config["notify_secret"], addr=config["notify_addr"], token=token)
    if answer.get("ok") is True:
        return LOGIN_OK.format(name=name)
    # no_such_client, ticket_mismatch, client_busy, shutting_down, unreachable:
    # the page did not get the login. unauthorized, ticket_required, bad_json:
    # this handler is misconfigured; log it loudly. The user is told the same.
    log.warning("fd %s: the gateway answered %s", fd, answer)
    return SCAN_AGAIN.format(name=name)


def handle(query, body, config=CONFIG):
    """Answer one POST from WeChat. Raises InvalidSignatureException (-> 403)."""
    check_signature(config["wechat_token"], query.get("signature", ""),
                    query.get("timestamp", ""), query.get("nonce", ""))
    crypto = None
    if query.get("encrypt_type") == "aes":  # safe or compatible mode
        crypto = WeChatCrypto(config["wechat_token"], config["encoding_aes_key"], config["app_id"])
        body = crypto.decrypt_message(body, query.get("msg_signature", ""),
                                      query["timestamp"], query["nonce"])
    msg = parse_message(body)

    reply = None
    if msg.type == "event" and msg.event in ("subscribe_scan", "scan"):
        fd = login_fd(msg.scene_id)  # wechatpy strips "qrscene_" for subscribe
        if fd is not None:
            key = (msg.source, msg.create_time, msg.event, msg.scene_id)
            text = _once(key, lambda: on_login_scan(msg, fd, config))
            reply = create_reply(text, msg)
        # else: one of the account's own QR codes (scene < 2^20): your logic here
    # ... the rest of your handler: text messages, menu clicks, other events

    if reply is None:
        return "success"
    xml = reply.render()
    if crypto is not None:
        return crypto.encrypt_message(xml, query["nonce"], query["timestamp"])
    return xml


def application(environ, start_response):
    """A WSGI app around `handle`, e.g. `gunicorn handler:application`."""
    from urllib.parse import parse_qsl

    query = dict(parse_qsl(environ.get("QUERY_STRING", "")))
    try:
        if environ["REQUEST_METHOD"] == "GET":  # server URL verification
            check_signature(CONFIG["wechat_token"], query.get("signature", ""),
                            query.get("timestamp", ""), query.get("nonce", ""))
            out = query.get("echostr", "")
        else:
            size = min(int(environ.get("CONTENT_LENGTH") or 0), 1 << 20)
            out = handle(query, environ["wsgi.input"].read(size))
    except InvalidSignatureException:
        start_response("403 Forbidden", [("Content-Type", "text/plain")])
        return [b"forbidden"]
    start_response("200 OK", [("Content-Type", "application/xml; charset=utf-8")])
    return [out.encode("utf-8")]


if __name__ == "__main__":
    from wsgiref.simple_server import make_server

    make_server("127.0.0.1", 8080, application).serve_forever()
