#!/usr/bin/env python3
"""An official account's own message handler, written with wechatpy the way
sites write them, for the forwarding tests: it verifies WeChat's signature,
decrypts safe-mode messages with the EncodingAESKey, and answers a text
reply (encrypted when the request was). Every request it saw is appended to
a log file as one JSON line, so a test can tell what was forwarded.

Usage: wechatpy_handler.py PORT TOKEN APPID LOG [ENCODING_AES_KEY] [--slow S]
"""
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from wechatpy import parse_message
from wechatpy.crypto import WeChatCrypto
from wechatpy.exceptions import InvalidSignatureException
from wechatpy.replies import TextReply
from wechatpy.utils import check_signature

port, token, appid, log = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
rest = sys.argv[5:]
slow = 0.0
if "--slow" in rest:
    i = rest.index("--slow")
    slow = float(rest[i + 1])
    del rest[i:i + 2]
aes_key = rest[0] if rest else None
crypto = WeChatCrypto(token, aes_key, appid) if aes_key else None


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, body, ctype="text/plain"):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        q = {k: v[0] for k, v in parse_qs(urlparse(self.path).query).items()}
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        record = {"query": urlparse(self.path).query, "content_type": self.headers.get("Content-Type")}
        try:
            check_signature(token, q["signature"], q["timestamp"], q["nonce"])
            encrypted = q.get("encrypt_type") == "aes"
            if encrypted:
                xml = crypto.decrypt_message(body, q["msg_signature"], q["timestamp"], q["nonce"])
            else:
                xml = body
            msg = parse_message(xml)
            record.update(ok=True, type=msg.type, encrypted=encrypted,
                          content=getattr(msg, "content", None), event=getattr(msg, "event", None),
                          scene_id=getattr(msg, "scene_id", None))
        except (InvalidSignatureException, KeyError, Exception) as e:  # noqa: BLE001
            record.update(ok=False, error=f"{type(e).__name__}: {e}")
            with open(log, "a") as f:
                f.write(json.dumps(record) + "\n")
            return self.answer(403, "verification failed")
        with open(log, "a") as f:
            f.write(json.dumps(record) + "\n")
        if slow:
            time.sleep(slow)
        what = msg.content if msg.type == "text" else f"{msg.type}/{getattr(msg, 'event', '')}"
        reply = TextReply(content=f"handled by the site: {what}", message=msg).render()
        if encrypted:
            reply = crypto.encrypt_message(reply, q["nonce"], q["timestamp"])
        self.answer(200, reply, "application/xml")

    def do_GET(self):
        with open(log, "a") as f:
            f.write(json.dumps({"get": self.path}) + "\n")
        self.answer(200, "get reached the upstream")


ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
