"""Runs examples/backend/python/verify_token.py on a real login token.

    python3 check_python_verifier.py TOKEN SECRET ISSUER AUDIENCE EXPECTED_SUB

Prints one `ok - ...` or `not ok - ...` line per check; exits 1 if any failed.
"""

import base64
import json
import os
import sys
import time

import jwt

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "examples", "backend", "python"))
from verify_token import SeenJtis, TokenReplayed, verify  # noqa: E402

token, secret, issuer, audience, expected_sub = sys.argv[1:6]
failed = 0


def check(name, fn):
    global failed
    try:
        detail = fn()
        print(f"ok - python verifier: {name}" + (f" ({detail})" if detail else ""))
    except Exception as e:  # noqa: BLE001 - report every failure as a check
        failed += 1
        print(f"not ok - python verifier: {name}: {type(e).__name__}: {e}")


def rejects(exc, token_, secret_, issuer_, audience_, seen):
    try:
        verify(token_, secret_, issuer_, audience_, seen)
    except exc as e:
        return f"{type(e).__name__}: {e}"
    raise AssertionError(f"expected {exc.__name__}, the token was accepted or raised otherwise")


def b64(obj):
    raw = json.dumps(obj, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


seen = SeenJtis()
claims = jwt.decode(token, options={"verify_signature": False})


def accept_once():
    c = verify(token, secret, issuer, audience, seen)
    assert c["sub"] == expected_sub, c
    assert c["iss"] == issuer and c["aud"] == audience, c
    assert c["exp"] - c["iat"] == 300, c
    assert len(c["jti"]) == 32, c
    return f"sub={c['sub']} nickname={c['nickname']!r}"


check("accepts the real token once, iss and aud checked", accept_once)
check("rejects it the second time (jti replay)",
      lambda: rejects(TokenReplayed, token, secret, issuer, audience, seen))
check("rejects it with a wrong audience",
      lambda: rejects(jwt.InvalidAudienceError, token, secret, issuer, "https://evil.test", SeenJtis()))
check("rejects it when no audience is expected",
      lambda: rejects(jwt.InvalidAudienceError, token, secret, issuer, None, SeenJtis()))
check("rejects it with a wrong issuer",
      lambda: rejects(jwt.InvalidIssuerError, token, secret, "someone-else", audience, SeenJtis()))


def refusal_spends_nothing():
    fresh = SeenJtis()
    rejects(jwt.InvalidAudienceError, token, secret, issuer, "https://evil.test", fresh)
    verify(token, secret, issuer, audience, fresh)


check("a refused token does not spend its jti", refusal_spends_nothing)

forged = dict(claims, jti="f" * 32)
check("rejects a token signed with another secret",
      lambda: rejects(jwt.InvalidSignatureError,
                      jwt.encode(forged, "another-secret-" + "x" * 32, algorithm="HS256"),
                      secret, issuer, audience, SeenJtis()))
now = int(time.time())
expired = dict(claims, jti="e" * 32, iat=now - 400, exp=now - 100)
check("rejects an expired token",
      lambda: rejects(jwt.ExpiredSignatureError, jwt.encode(expired, secret, algorithm="HS256"),
                      secret, issuer, audience, SeenJtis()))
unsigned = b64({"alg": "none", "typ": "JWT"}) + "." + b64(dict(claims, jti="a" * 32)) + "."
check("rejects alg none",
      lambda: rejects(jwt.InvalidTokenError, unsigned, secret, issuer, audience, SeenJtis()))
no_jti = {k: v for k, v in claims.items() if k != "jti"}
check("rejects a token without jti",
      lambda: rejects(jwt.MissingRequiredClaimError, jwt.encode(no_jti, secret, algorithm="HS256"),
                      secret, issuer, audience, SeenJtis()))

sys.exit(1 if failed else 0)
