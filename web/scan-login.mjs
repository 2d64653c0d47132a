/**
 * ES-module entry point for scan-login.js.
 *
 *   import ScanLogin, { mount, pickLang } from '/scan-login.mjs';
 *   const handle = mount(document.getElementById('login'), { onSuccess });
 *
 * scan-login.js is a classic script that sets globalThis.ScanLogin; importing
 * it for its side effect and re-exporting keeps a single implementation that
 * works both with <script src> and with import. See scan-login.js for the API.
 */
import './scan-login.js';

const ScanLogin = globalThis.ScanLogin;

export default ScanLogin;
export const mount = (element, options) => ScanLogin.mount(element, options);
export const ticketOf = (url) => ScanLogin.ticketOf(url);
export const pickLang = (tag) => ScanLogin.pickLang(tag);
export const version = ScanLogin.version;
