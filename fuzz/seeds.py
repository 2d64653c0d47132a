#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/ from real payloads:
WeChat's test vectors and callback bodies, bus request and answer lines,
browser frames, event keys and settings files.

The committed corpus is what this writes; run it again only to change the
seeds (`python3 fuzz/seeds.py`). It needs the `cryptography` package (which
scripts/install-test-deps.sh installs with wechatpy) for the safe-mode
ciphertexts.
"""

import base64
import pathlib
import shutil
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
CORPUS = HERE / "corpus"

# WeChat's published test vector key and appid (protocol's crypto tests).
ENCODING_AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
APPID = "wxb11529c136998cb6"
AES_KEY = base64.b64decode(ENCODING_AES_KEY + "=")


def cdata(s):
    return "<![CDATA[" + s.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def event_body(event, key=None, ticket=None, to="gh_xxx", frm="OPENID", t=123456789):
    out = (
        f"<xml><ToUserName>{cdata(to)}</ToUserName><FromUserName>{cdata(frm)}</FromUserName>"
        f"<CreateTime>{t}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
        f"<Event>{cdata(event)}</Event>"
    )
    if key is not None:
        out += f"<EventKey>{cdata(key)}</EventKey>"
    if ticket is not None:
        out += f"<Ticket>{cdata(ticket)}</Ticket>"
    return out + "</xml>"


def message_body(msg_type, fields, msg_id="1234567890123456"):
    out = (
        "<xml><ToUserName><![CDATA[gh_xxx]]></ToUserName><FromUserName><![CDATA[OPENID]]></FromUserName>"
        f"<CreateTime>1348831860</CreateTime><MsgType>{cdata(msg_type)}</MsgType>"
    )
    for k, v in fields:
        out += f"<{k}>{cdata(v)}</{k}>"
    return out + f"<MsgId>{msg_id}</MsgId></xml>"


# Callback bodies: WeChat's documented shapes and the protocol tests' ones.
SUBSCRIBE = event_body("subscribe", "qrscene_123123", "TICKET")
CALLBACK_BODIES = {
    "subscribe_qrscene": SUBSCRIBE,
    "subscribe_login_fd": event_body("subscribe", "qrscene_1048577", "gQH47joAAAAAAAAAASxodHRwOi8v"),
    "scan_follower": event_body("SCAN", "123123", "TICKET"),
    "scan_login_fd": event_body("SCAN", "1048577", "t"),
    "scan_top_fd": event_body("SCAN", "2147483647", "t"),
    "subscribe_plain": event_body("subscribe", ""),
    "subscribe_str_scene": event_body("subscribe", "qrscene_abc", "TICKET"),
    "unsubscribe": event_body("unsubscribe", ""),
    "click": event_body("CLICK", "MENU_KEY"),
    "view": event_body("VIEW", "http://www.example.com/"),
    "location_event": event_body("LOCATION").replace(
        "</xml>", "<Latitude>23.137466</Latitude><Longitude>113.352425</Longitude><Precision>119.385040</Precision></xml>"
    ),
    "scancode_push_nested": event_body("scancode_push", "k").replace(
        "</xml>", "<ScanCodeInfo><ScanType>qrcode</ScanType><ScanResult>1</ScanResult></ScanCodeInfo></xml>"
    ),
    "text_vector_whitespace": "<xml>\n <ToUserName><![CDATA[asdasdasd]]></ToUserName>\n <FromUserName><![CDATA[u]]></FromUserName>\n <CreateTime>1234567898</CreateTime>\n <MsgType><![CDATA[text]]></MsgType>\n <Content><![CDATA[hello]]></Content>\n <MsgId>12345</MsgId>\n</xml>\n",
    "text_v2_vector": "<xml><URL><![CDATA[http://wechat.laravel.so/server]]></URL><ToUserName><![CDATA[asdasdasd]]></ToUserName><FromUserName><![CDATA[asdasdasdsadasd]]></FromUserName><CreateTime>1234567898</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hello]]></Content><MsgId>12345</MsgId></xml>",
    "text_entities": "<?xml version=\"1.0\" encoding=\"UTF-8\"?><xml><ToUserName>a&amp;b</ToUserName><FromUserName>&#20320;&#x597d;</FromUserName><CreateTime>1</CreateTime><MsgType>text</MsgType><Content>&lt;hi&gt; &quot;x&apos; <!-- c --></Content></xml>",
    "image": message_body("image", [("PicUrl", "http://example.com/p.jpg"), ("MediaId", "media_id")]),
    "voice": message_body("voice", [("MediaId", "media_id"), ("Format", "amr"), ("Recognition", "腾讯微信团队")]),
    "video": message_body("video", [("MediaId", "media_id"), ("ThumbMediaId", "thumb_media_id")]),
    "shortvideo": message_body("shortvideo", [("MediaId", "media_id"), ("ThumbMediaId", "thumb_media_id")]),
    "location": message_body("location", [("Location_X", "23.134521"), ("Location_Y", "113.358803"), ("Scale", "20"), ("Label", "位置信息")]),
    "link": message_body("link", [("Title", "公众平台官网链接"), ("Description", "公众平台官网链接"), ("Url", "url")]),
    "unknown_type": "<xml><ToUserName>a</ToUserName><FromUserName>b</FromUserName><CreateTime>1</CreateTime><MsgType>miniprogrampage</MsgType></xml>",
    "empty_root": "<xml/>",
    "xxe_doctype": "<?xml version=\"1.0\"?><!DOCTYPE xml [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><xml><ToUserName>&x;</ToUserName></xml>",
    "too_deep": "<xml><a><b><c><d>1</d></c></b></a></xml>",
    "reply_envelope": "<xml><Encrypt><![CDATA[msg_encrypt]]></Encrypt><MsgSignature><![CDATA[msg_signature]]></MsgSignature><TimeStamp>12345</TimeStamp><Nonce><![CDATA[nonce]]></Nonce></xml>",
}


def encrypt(message: bytes, appid=APPID, random=b"d43123b161a4ba84") -> str:
    return base64.b64encode(aes(layout(message, appid.encode(), random))).decode()


def layout(message: bytes, appid: bytes, random: bytes) -> bytes:
    plain = random + struct.pack(">I", len(message)) + message + appid
    pad = 32 - len(plain) % 32
    return plain + bytes([pad]) * pad


def aes(plain: bytes) -> bytes:
    enc = Cipher(algorithms.AES(AES_KEY), modes.CBC(AES_KEY[:16])).encryptor()
    return enc.update(plain) + enc.finalize()


def encrypted_post(to_user, enc):
    return f"<xml><ToUserName>{cdata(to_user)}</ToUserName><Encrypt>{cdata(enc)}</Encrypt></xml>"


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / name).write_bytes(data)


def write_each(target, prefix, items, head=b"", tail=b""):
    """One seed per item, named prefix_<index>, between head and tail."""
    for i, item in enumerate(items):
        data = item.encode() if isinstance(item, str) else item
        write(target, f"{prefix}_{i}", head + data + tail)


def main():
    if CORPUS.exists():
        shutil.rmtree(CORPUS)

    # 1. xml_message: callback bodies as they are posted.
    for name, body in CALLBACK_BODIES.items():
        write("xml_message", name, body)
    v2 = (ROOT / "protocol/src/wechat/testdata/v2_encrypt.txt").read_text().strip()
    write("xml_message", "safe_mode_post", encrypted_post("asdasdasd", v2))

    # 2. safe_mode: the first byte is the mode (see fuzz_targets/safe_mode.rs).
    v1 = "jn1L23DB+6ELqJ+6bruv21Y6MD7KeIfP82D6gU39rmkgczbWwt5+3bnyg5K55bgVtVzd832WzZGMhkP72vVOfg=="
    login = CALLBACK_BODIES["subscribe_login_fd"].encode()
    scan = CALLBACK_BODIES["scan_login_fd"].encode()
    write("safe_mode", "post_v2_vector", b"\x00" + encrypted_post("asdasdasd", v2).encode())
    write("safe_mode", "post_subscribe", b"\x00" + encrypted_post("gh_xxx", encrypt(login)).encode())
    write("safe_mode", "post_no_to_user", b"\x00" + f"<xml><Encrypt>{cdata(encrypt(scan))}</Encrypt></xml>".encode())
    write("safe_mode", "encrypt_v2_vector", b"\x01" + v2.encode())
    write("safe_mode", "encrypt_v1_vector", b"\x01" + v1.encode())
    write("safe_mode", "encrypt_scan", b"\x01" + encrypt(scan).encode())
    write("safe_mode", "encrypt_other_appid", b"\x01" + encrypt(scan, appid="wx0000000000000000").encode())
    write("safe_mode", "plain_subscribe", b"\x02" + login)
    write("safe_mode", "plain_text", b"\x02" + CALLBACK_BODIES["text_v2_vector"].encode())
    write("safe_mode", "blocks_subscribe", b"\x03" + layout(login, APPID.encode(), b"d43123b161a4ba84"))
    write("safe_mode", "blocks_scan_no_appid", b"\x03" + layout(scan, b"", b"aaaabbbbccccdddd"))

    # 3. bus_lines: byte 0 the line limit (0x80 = MAX_LINE_BYTES, else
    # 0..=127), byte 1 the chunk-size seed, then what the socket carries.
    requests = [
        '{"type":"scan","fd":1048577,"nickname":"Alice","ticket":"t"}',
        '{"type":"scanned","fd":1048577,"nickname":"Alice","ticket":"t"}',
        '{"type":"scan","fd":2147483647,"nickname":"Bob \\"q\\"\\n","openid":"o1","token":"eyJhbGciOi.x.y","ticket":"a+b/c=","secret":"s3cret"}',
        '{"type":"scan","fd":42,"nickname":"\\u4f60\\u597d"}',
    ]
    bad = [
        "not json",
        '{"type":"hello"}',
        '{"type":"scan","nickname":"a"}',
        '{"type":"scan","fd":-1,"nickname":"a"}',
        '{"type":"scan","fd":4294967296,"nickname":"a"}',
        '{"type":"scan","fd":1.5,"nickname":"a"}',
    ]
    answers = [
        '{"ok":true}',
        '{"ok":false,"error":"no_such_client"}',
        '{"ok":true,"ip":"1.2.3.4","user_agent":"x"}',
        '{"ok":false,"error":"line_too_long"}',
        '{"ok":false,"error":"some_new_code"}',
    ]
    write_each("bus_lines", "request", requests, b"\x80\x01", b"\n")
    write("bus_lines", "requests_crlf_chunked", b"\x80\x2a" + "\r\n".join(requests).encode() + b"\r\n")
    write("bus_lines", "bad_lines", b"\x80\x07" + "\n".join(bad).encode() + b"\n")
    write_each("bus_lines", "answer", answers, b"\x80\x03", b"\n")
    write("bus_lines", "no_final_newline", b"\x80\x05" + requests[0].encode() + b"\n" + requests[1].encode())
    write("bus_lines", "too_long_small_max", b"\x40\x09" + requests[0].encode() + b"\n" + requests[3].encode() + b"\n")
    write("bus_lines", "empty_lines", b"\x10\x00\n\n\r\n" + answers[0].encode() + b"\n")

    # 4. event_key: EventKey values as WeChat sends them.
    write_each("event_key", "key", ["qrscene_1048577", "100", "1048577", "qrscene_123123",
                                    "2147483647", "4294967295", "4294967296", "qrscene_abc", "",
                                    "0", "MENU_KEY", "qrscene_", "+12"])
    write("event_key", "scene_le_bytes", struct.pack("<I", (3 << 27) | (1 << 20)))

    # 5. ws_frame: browser commands, and the server's frames.
    frames = [
        '{"cmd":"ping"}',
        '{"cmd":"refresh"}',
        '{"cmd":"nope"}',
        '{"cmd":"ping","extra":1}',
        "garbage",
        '{"message_type":"qrcode_url","url":"https://mp.weixin.qq.com/cgi-bin/showqrcode?ticket=t","qr_content":"http://weixin.qq.com/q/x","expire_seconds":120}',
        '{"message_type":"scan_success","user":"Alice","openid":"o","token":"eyJ.x.y"}',
        '{"message_type":"scanned","user":"Alice"}',
        '{"message_type":"error","error":"rate_limited","message":"slow down"}',
        '{"message_type":"qrcode_expired"}',
        '{"message_type":"pong"}',
    ]
    write_each("ws_frame", "frame", frames)

    # 6. config_toml: settings files (keys of fuzz_targets/config_toml.rs,
    # and the deployed files, whose keys it does not know).
    tomls = [
        'name = "file:1"\nrate = 7\nstrict = true\nproxy = ["10.0.0.0/8", "::1"]\n',
        '# comment\nname = "gw"  # trailing\nrate = 0\nstrict = "yes"\nproxy = "127.0.0.1/32,::1/128"\n',
        'rate = "7"\n',
        "rate = -3\n",
        "rate = 4294967296\n",
        "rate = 7.0\nstrict = 1\n",
        "proxy = []\nname = ''\n",
        'lisen = "x"\n',
        "check_config = true\n",
        'config = "/etc/x.toml"\n',
        "listen = \n",
        "[table]\nname = 1\n",
        "name = 1979-05-27T07:32:00Z\n",
        'proxy = [1, 2.5, true, "x"]\n',
        'proxy = [[1], {a = 1}]\n',
        "",
    ]
    write_each("config_toml", "settings", tomls)
    for f in sorted((ROOT / "deploy/config").glob("*.toml")):
        write("config_toml", f"deploy_{f.stem}", f.read_bytes())

    for d in sorted(CORPUS.iterdir()):
        print(f"{d.name}: {len(list(d.iterdir()))} seeds")


if __name__ == "__main__":
    main()
