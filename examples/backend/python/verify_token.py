"""Verify a wechat-scan-login login token on your site's backend (PyJWT 2.x).

The page receives the token in `scan_success.token` and hands it to your
backend (e.g. `POST /session`). Before trusting `sub` (the user's openid),
check everything:

    claims = verify(token, LOGIN_TOKEN_SECRET, "wechat-scan-login",
                    "https://www.example.com", SEEN_JTIS)
    session["openid"] = claims["sub"]

- the HS256 signature, with the same secret as wechat-callback's
  --login-token-secret (LOGIN_TOKEN_SECRET), and only HS256;
- `exp` (the token lives 5 minutes) and `iat`;
- `iss` (wechat-callback's --login-token-issuer, default "wechat-scan-login");
- `aud`: pass `audience` exactly when --login-token-audience is set; PyJWT
  then requires it, and refuses a token carrying an `aud` when you pass None;
- single use: the `jti` is spent here, and a token whose `jti` was seen
  before is refused (`TokenReplayed`).

`SeenJtis` keeps spent jtis in this process's memory until their token has
expired: enough for one backend process. With several processes or hosts,
spend the jti in your database or Redis instead (see `spend_jti_redis`).

Run it by hand: `LOGIN_TOKEN_SECRET=... python3 verify_token.py TOKEN
[--issuer ISS] [--audience AUD]` prints the claims or why the token is bad.
"""

import argparse
import json
import os
import sys
import threading
import time

import jwt  # pip install PyJWT

DEFAULT_ISSUER = "wechat-scan-login"
# Clock difference tolerated between the host that signed and this one.
LEEWAY_SECONDS = 30


class TokenReplayed(jwt.InvalidTokenError):
    """The token's jti was already used: each login token logs in once."""


class SeenJtis:
    """Spent jtis, each kept until its token has expired (plus the leeway).

    In memory and per process: fine for one process; use your database or
    Redis when the backend runs as several processes or on several hosts.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._until = {}  # jti -> unix time after which it can be forgotten

    def spend(self, jti, exp):
        """Record `jti`; True the first time, False if it was seen before."""
        now = time.time()
        with self._lock:
            for old in [j for j, t in self._until.items() if t < now]:
                del self._until[old]
            if jti in self._until:
                return False
            self._until[jti] = exp + LEEWAY_SECONDS
            return True

    def __len__(self):
        return len(self._until)


def spend_jti_redis(redis_client, jti, exp):
    """The same as `SeenJtis.spend`, shared by every process (redis-py).

    SET NX is atomic: of two requests racing with one token, only one wins.
    In SQL: INSERT INTO used_login_jti (jti, expires_at) VALUES (...) with
    jti as the primary key; a unique-key violation means "seen before".
    """
    ttl = max(1, int(exp - time.time()) + LEEWAY_SECONDS)
    return bool(redis_client.set("scan-login:jti:" + jti, 1, nx=True, ex=ttl))


def verify(token, secret, issuer=DEFAULT_ISSUER, audience=None, seen_jtis=None):
    """Check a login token and spend its jti; return its claims.

    Raises a `jwt.InvalidTokenError` subclass when the token must not log
    anyone in: `InvalidSignatureError` (wrong secret or tampered),
    `ExpiredSignatureError`, `InvalidIssuerError`, `InvalidAudienceError`,
    `MissingRequiredClaimError`, `DecodeError`, or `TokenReplayed`.

    `seen_jtis` is a `SeenJtis` (or anything with `spend(jti, exp) -> bool`).
    It is required: a login token must not be accepted twice.
    """
    if seen_jtis is None:
        raise ValueError("seen_jtis is required: login tokens are single-use")
    required = ["sub", "iat", "exp", "jti", "iss"]
    if audience is not None:
        required.append("aud")
    claims = jwt.decode(
        token,
        secret,
        algorithms=["HS256"],  # pinned: never "none", never what the token says
        issuer=issuer,
        audience=audience,
        leeway=LEEWAY_SECONDS,
        options={"require": required},
    )
    if not isinstance(claims["sub"], str) or not claims["sub"]:
        raise jwt.InvalidTokenError("sub is not an openid")
    if not isinstance(claims["jti"], str) or not claims["jti"]:
        raise jwt.InvalidTokenError("jti is not a string")
    # Spend the jti last, so a token refused for another reason spends nothing.
    if not seen_jtis.spend(claims["jti"], claims["exp"]):
        raise TokenReplayed("token already used (its jti was seen before)")
    return claims


SEEN_JTIS = SeenJtis()


def main(argv=None):
    parser = argparse.ArgumentParser(description="Verify a wechat-scan-login token.")
    parser.add_argument("token", help="the token from scan_success")
    parser.add_argument("--issuer", default=DEFAULT_ISSUER)
    parser.add_argument("--audience", default=None, help="when --login-token-audience is set")
    args = parser.parse_args(argv)
    secret = os.environ.get("LOGIN_TOKEN_SECRET")
    if not secret:
        print("set LOGIN_TOKEN_SECRET to wechat-callback's --login-token-secret", file=sys.stderr)
        return 2
    try:
        claims = verify(args.token, secret, args.issuer, args.audience, SEEN_JTIS)
    except jwt.InvalidTokenError as e:
        print(f"rejected: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(claims, ensure_ascii=False, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
