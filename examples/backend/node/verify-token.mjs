// Verify a wechat-scan-login login token on your site's backend (Node,
// npm package `jsonwebtoken`).
//
// The page receives the token in `scan_success.token` and hands it to your
// backend (e.g. `POST /session`). Before trusting `sub` (the user's openid),
// check everything:
//
//   const claims = verify(token, process.env.LOGIN_TOKEN_SECRET, {
//     issuer: 'wechat-scan-login', audience: 'https://www.example.com', seenJtis });
//   req.session.openid = claims.sub;
//
// - the HS256 signature, with the same secret as wechat-callback's
//   --login-token-secret, and only HS256 (`algorithms` is pinned);
// - `exp` (the token lives 5 minutes) and `iat`;
// - `iss` (wechat-callback's --login-token-issuer, default wechat-scan-login);
// - `aud`: pass `audience` exactly when --login-token-audience is set;
// - single use: the `jti` is spent here, and a token whose `jti` was seen
//   before is refused (TokenReplayedError).
//
// `SeenJtis` keeps spent jtis in this process's memory until their token has
// expired: enough for one process. With several processes or hosts, spend
// the jti in your database or Redis instead (see spendJtiRedis below).
//
// By hand: LOGIN_TOKEN_SECRET=... node verify-token.mjs TOKEN [ISSUER] [AUDIENCE]

import jwt from 'jsonwebtoken';
import { pathToFileURL } from 'node:url';

export const DEFAULT_ISSUER = 'wechat-scan-login';
/** Clock difference tolerated between the host that signed and this one. */
export const LEEWAY_SECONDS = 30;

/** The token's jti was already used: each login token logs in once. */
export class TokenReplayedError extends jwt.JsonWebTokenError {
  constructor() {
    super('token already used (its jti was seen before)');
    this.name = 'TokenReplayedError';
  }
}

/** Spent jtis, each kept until its token has expired (plus the leeway). */
export class SeenJtis {
  #until = new Map(); // jti -> unix seconds after which it can be forgotten

  /** Records `jti`; true the first time, false if it was seen before. */
  spend(jti, exp) {
    const now = Date.now() / 1000;
    for (const [old, t] of this.#until) if (t < now) this.#until.delete(old);
    if (this.#until.has(jti)) return false;
    this.#until.set(jti, exp + LEEWAY_SECONDS);
    return true;
  }

  get size() {
    return this.#until.size;
  }
}

/**
 * The same as SeenJtis.spend, shared by every process (node-redis v4):
 * SET NX is atomic, so of two requests racing with one token only one wins.
 * In SQL: INSERT the jti into a table where it is the primary key; a
 * unique-key violation means "seen before". (Async: await it.)
 */
export async function spendJtiRedis(redis, jti, exp) {
  const ttl = Math.max(1, Math.ceil(exp - Date.now() / 1000) + LEEWAY_SECONDS);
  return (await redis.set(`scan-login:jti:${jti}`, '1', { NX: true, EX: ttl })) === 'OK';
}

/**
 * Checks a login token and spends its jti; returns its claims. Throws a
 * jwt.JsonWebTokenError (TokenExpiredError, 'invalid signature',
 * 'jwt audience invalid…', 'jwt issuer invalid…', TokenReplayedError, …)
 * when the token must not log anyone in.
 */
export function verify(token, secret, { issuer = DEFAULT_ISSUER, audience, seenJtis } = {}) {
  if (!seenJtis) throw new Error('seenJtis is required: login tokens are single-use');
  const claims = jwt.verify(token, secret, {
    algorithms: ['HS256'], // pinned: never "none", never what the token says
    issuer,
    ...(audience !== undefined && audience !== null ? { audience } : {}),
    clockTolerance: LEEWAY_SECONDS,
  });
  // jsonwebtoken checks exp only when present, and does not look at an aud
  // it was not asked about: require what the contract promises.
  for (const [name, type] of [['sub', 'string'], ['jti', 'string'], ['exp', 'number'], ['iat', 'number']]) {
    if (typeof claims[name] !== type || claims[name] === '') {
      throw new jwt.JsonWebTokenError(`jwt ${name} missing or not a ${type}`);
    }
  }
  if ((audience === undefined || audience === null) && claims.aud !== undefined) {
    throw new jwt.JsonWebTokenError('jwt has an audience but none was expected');
  }
  // Spend the jti last, so a token refused for another reason spends nothing.
  if (!seenJtis.spend(claims.jti, claims.exp)) throw new TokenReplayedError();
  return claims;
}

export const seenJtis = new SeenJtis();

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const [token, issuer = DEFAULT_ISSUER, audience] = process.argv.slice(2);
  const secret = process.env.LOGIN_TOKEN_SECRET;
  if (!token || !secret) {
    console.error('usage: LOGIN_TOKEN_SECRET=... node verify-token.mjs TOKEN [ISSUER] [AUDIENCE]');
    process.exit(2);
  }
  try {
    console.log(JSON.stringify(verify(token, secret, { issuer, audience, seenJtis })));
  } catch (e) {
    console.error(`rejected: ${e.name}: ${e.message}`);
    process.exit(1);
  }
}
