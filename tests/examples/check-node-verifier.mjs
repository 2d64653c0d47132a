// Runs examples/backend/node/verify-token.mjs on a real login token.
//
//   node check-node-verifier.mjs TOKEN SECRET ISSUER AUDIENCE EXPECTED_SUB
//
// Prints one `ok - ...` or `not ok - ...` line per check; exits 1 if any
// failed. Other tokens are forged with node:crypto, not with the example's
// own library.

import crypto from 'node:crypto';
import { SeenJtis, TokenReplayedError, verify } from '../../examples/backend/node/verify-token.mjs';

const [token, secret, issuer, audience, expectedSub] = process.argv.slice(2);
let failed = 0;

function check(name, fn) {
  try {
    const detail = fn();
    console.log(`ok - node verifier: ${name}${detail ? ` (${detail})` : ''}`);
  } catch (e) {
    failed += 1;
    console.log(`not ok - node verifier: ${name}: ${e.name}: ${e.message}`);
  }
}

function rejects(match, tok, opts) {
  try {
    verify(tok, opts.secret ?? secret, { issuer, audience, seenJtis: new SeenJtis(), ...opts });
  } catch (e) {
    if (match(e)) return `${e.name}: ${e.message}`;
    throw new Error(`wrong rejection: ${e.name}: ${e.message}`);
  }
  throw new Error('the token was accepted');
}

const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
function sign(claims, key, alg = 'HS256') {
  const head = `${b64({ alg, typ: 'JWT' })}.${b64(claims)}`;
  if (alg === 'none') return `${head}.`;
  return `${head}.${crypto.createHmac('sha256', key).update(head).digest('base64url')}`;
}

const claims = JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString());
const seenJtis = new SeenJtis();

check('accepts the real token once, iss and aud checked', () => {
  const c = verify(token, secret, { issuer, audience, seenJtis });
  if (c.sub !== expectedSub || c.iss !== issuer || c.aud !== audience) throw new Error(JSON.stringify(c));
  if (c.exp - c.iat !== 300 || c.jti.length !== 32) throw new Error(JSON.stringify(c));
  return `sub=${c.sub} nickname=${JSON.stringify(c.nickname)}`;
});
check('rejects it the second time (jti replay)', () =>
  rejects((e) => e instanceof TokenReplayedError, token, { seenJtis }));
check('rejects it with a wrong audience', () =>
  rejects((e) => /audience invalid/.test(e.message), token, { audience: 'https://evil.test' }));
check('rejects it when no audience is expected', () =>
  rejects((e) => /audience/.test(e.message), token, { audience: undefined }));
check('rejects it with a wrong issuer', () =>
  rejects((e) => /issuer invalid/.test(e.message), token, { issuer: 'someone-else' }));
check('a refused token does not spend its jti', () => {
  const fresh = new SeenJtis();
  rejects((e) => /audience invalid/.test(e.message), token, { audience: 'https://evil.test', seenJtis: fresh });
  verify(token, secret, { issuer, audience, seenJtis: fresh });
});
check('rejects a token signed with another secret', () =>
  rejects((e) => e.message === 'invalid signature',
    sign({ ...claims, jti: 'f'.repeat(32) }, `another-secret-${'x'.repeat(32)}`), {}));
const now = Math.floor(Date.now() / 1000);
check('rejects an expired token', () =>
  rejects((e) => e.name === 'TokenExpiredError',
    sign({ ...claims, jti: 'e'.repeat(32), iat: now - 400, exp: now - 100 }, secret), {}));
check('rejects alg none', () =>
  rejects((e) => e.name === 'JsonWebTokenError', sign({ ...claims, jti: 'a'.repeat(32) }, null, 'none'), {}));
check('rejects a token without jti', () => {
  const { jti, ...rest } = claims;
  return rejects((e) => /jti/.test(e.message), sign(rest, secret), {});
});

process.exit(failed ? 1 : 0);
