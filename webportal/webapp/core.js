/* OpenMFA web authenticator: what the page and the service worker share.
 *
 * A classic script (not an ES module) on purpose: the service worker loads it with
 * importScripts(), which works in every browser that has Web Push, while module service
 * workers do not. It defines one global, OpenMFACore.
 *
 * - IndexedDB: accounts (one per activated device: device id, user, the non-extractable
 *   signing key and TOTP key as CryptoKey objects) and a small key/value store (push state).
 * - Request signing exactly as docs/app-api.md (backend/domain/signing.py): OPENMFA-V2
 *   canonical request, Ed25519, or ECDSA P-256 with SHA-256 (IEEE P1363 r||s) where the
 *   browser has no Ed25519.
 * - The app API calls (/app/v1), and offline codes (RFC 6238) from an HMAC CryptoKey.
 */
(function (global) {
  "use strict";

  const DB_NAME = "openmfa";
  const DB_VERSION = 1;
  const SCHEME = "OPENMFA-V2";
  // Challenge and device ids as the server makes them; anything else is not used in a path.
  const ID = /^[A-Za-z0-9_-]{1,80}$/;

  // -- bytes ----------------------------------------------------------------------------

  function b64uEncode(bytes) {
    const view = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
    let text = "";
    for (const byte of view) text += String.fromCharCode(byte);
    return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function b64uDecode(text) {
    if (!/^[A-Za-z0-9_-]*={0,2}$/.test(text)) throw new Error("not base64url");
    const plain = text.replace(/=+$/, "").replace(/-/g, "+").replace(/_/g, "/");
    const raw = atob(plain + "=".repeat((4 - (plain.length % 4)) % 4));
    return Uint8Array.from(raw, (c) => c.charCodeAt(0));
  }

  function base32Decode(text) {
    const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    const clean = text.toUpperCase().replace(/=+$/, "");
    let bits = 0;
    let value = 0;
    const out = [];
    for (const char of clean) {
      const index = alphabet.indexOf(char);
      if (index < 0) throw new Error("not base32");
      value = (value << 5) | index;
      bits += 5;
      if (bits >= 8) {
        out.push((value >>> (bits - 8)) & 0xff);
        bits -= 8;
      }
    }
    return new Uint8Array(out);
  }

  async function sha256Hex(bytes) {
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
    return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // -- IndexedDB ------------------------------------------------------------------------

  let dbPromise = null;

  function openDb() {
    if (dbPromise) return dbPromise;
    dbPromise = new Promise((resolve, reject) => {
      const request = indexedDB.open(DB_NAME, DB_VERSION);
      request.onupgradeneeded = () => {
        const db = request.result;
        if (!db.objectStoreNames.contains("accounts")) {
          db.createObjectStore("accounts", { keyPath: "id" });
        }
        if (!db.objectStoreNames.contains("meta")) db.createObjectStore("meta");
      };
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    });
    return dbPromise;
  }

  async function tx(storeName, mode, work) {
    const db = await openDb();
    return new Promise((resolve, reject) => {
      const transaction = db.transaction(storeName, mode);
      const result = work(transaction.objectStore(storeName));
      transaction.oncomplete = () => resolve(result && "result" in result ? result.result : result);
      transaction.onerror = () => reject(transaction.error);
      transaction.onabort = () => reject(transaction.error);
    });
  }

  const store = {
    accounts: async () => {
      const list = await tx("accounts", "readonly", (s) => s.getAll());
      return list.sort((a, b) => a.createdAt.localeCompare(b.createdAt));
    },
    account: (id) => tx("accounts", "readonly", (s) => s.get(id)),
    putAccount: (account) => tx("accounts", "readwrite", (s) => s.put(account)),
    deleteAccount: (id) => tx("accounts", "readwrite", (s) => s.delete(id)),
    get: (key) => tx("meta", "readonly", (s) => s.get(key)),
    set: (key, value) => tx("meta", "readwrite", (s) => s.put(value, key)),
  };

  // -- keys -----------------------------------------------------------------------------

  const ED25519 = { name: "Ed25519" };
  const P256 = { name: "ECDSA", namedCurve: "P-256" };

  /* A new non-extractable signing key pair: Ed25519 where the browser has it, else P-256.
   * `prefer` ("ECDSA") is only for tests that drive the P-256 path on a browser with both. */
  async function generateDeviceKey(prefer) {
    if (prefer !== "ECDSA") {
      try {
        const pair = await crypto.subtle.generateKey(ED25519, false, ["sign", "verify"]);
        const raw = await crypto.subtle.exportKey("raw", pair.publicKey);
        return { algorithm: "Ed25519", privateKey: pair.privateKey, publicKey: b64uEncode(raw) };
      } catch (error) {
        // NotSupportedError (no Ed25519 in this browser): fall through to P-256.
      }
    }
    const pair = await crypto.subtle.generateKey(P256, false, ["sign", "verify"]);
    const raw = await crypto.subtle.exportKey("raw", pair.publicKey); // 0x04||X||Y, 65 bytes
    return { algorithm: "P-256", privateKey: pair.privateKey, publicKey: b64uEncode(raw) };
  }

  async function signBytes(algorithm, privateKey, message) {
    const params = algorithm === "Ed25519" ? ED25519 : { name: "ECDSA", hash: "SHA-256" };
    // WebCrypto's ECDSA signature is already r||s (IEEE P1363), as the server wants.
    return new Uint8Array(await crypto.subtle.sign(params, privateKey, message));
  }

  const TOTP_HASHES = { SHA1: "SHA-1", SHA256: "SHA-256", SHA512: "SHA-512" };

  /* The offline-code seed as a non-extractable HMAC key: the base32 text is dropped after. */
  async function importTotpKey(totp) {
    const hash = TOTP_HASHES[String(totp.algorithm || "SHA1").toUpperCase()];
    if (!hash) throw new Error("unsupported TOTP algorithm");
    return crypto.subtle.importKey(
      "raw",
      base32Decode(totp.secret),
      { name: "HMAC", hash },
      false,
      ["sign"],
    );
  }

  /* RFC 6238 code for `when` (ms since the epoch). */
  async function totpCode(key, params, when) {
    const period = params.period || 30;
    const digits = params.digits || 6;
    let counter = Math.floor(when / 1000 / period);
    const message = new Uint8Array(8);
    for (let i = 7; i >= 0; i -= 1) {
      message[i] = counter & 0xff;
      counter = Math.floor(counter / 256);
    }
    const mac = new Uint8Array(await crypto.subtle.sign("HMAC", key, message));
    const offset = mac[mac.length - 1] & 0x0f;
    const binary =
      ((mac[offset] & 0x7f) << 24) |
      (mac[offset + 1] << 16) |
      (mac[offset + 2] << 8) |
      mac[offset + 3];
    return String(binary % 10 ** digits).padStart(digits, "0");
  }

  // -- the app API ----------------------------------------------------------------------

  class ApiError extends Error {
    constructor(message, type, status) {
      super(message);
      this.type = type;
      this.status = status;
    }
  }

  /* The API base of this server: the path before /app/ (a site may serve OpenMFA under a
   * prefix). Accounts all live on the server that serves the app (connect-src 'self'). */
  function apiBase(scopeUrl) {
    const path = new URL(scopeUrl).pathname;
    const at = path.lastIndexOf("/app/");
    return at >= 0 ? path.slice(0, at) : "";
  }

  function nonce() {
    return b64uEncode(crypto.getRandomValues(new Uint8Array(18)));
  }

  /* The exact bytes that are signed (docs/app-api.md, "Canonical request"). */
  async function canonicalRequest(method, target, deviceId, timestamp, once, body) {
    const lines = [SCHEME, method.toUpperCase(), target, deviceId, timestamp, once, await sha256Hex(body)];
    return new TextEncoder().encode(lines.join("\n"));
  }

  /* One signed request. `signer`: {deviceId, algorithm, privateKey}. */
  async function signedFetch(base, signer, method, path, payload) {
    const body = payload === undefined ? new Uint8Array(0) : new TextEncoder().encode(JSON.stringify(payload));
    const target = base + path;
    const timestamp = String(Math.floor(Date.now() / 1000));
    const once = nonce();
    const canonical = await canonicalRequest(method, target, signer.deviceId, timestamp, once, body);
    const signature = await signBytes(signer.algorithm, signer.privateKey, canonical);
    const headers = {
      "X-OpenMFA-Device": signer.deviceId,
      "X-OpenMFA-Timestamp": timestamp,
      "X-OpenMFA-Nonce": once,
      "X-OpenMFA-Signature": b64uEncode(signature),
    };
    if (payload !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(target, {
        method,
        headers,
        body: payload === undefined ? undefined : body,
        cache: "no-store",
        credentials: "omit",
      });
    } catch (error) {
      throw new ApiError("the server cannot be reached", "unreachable", 0);
    }
    if (response.ok) return response.status === 204 ? null : response.json();
    let type = "http-error";
    let detail = response.statusText;
    try {
      const problem = await response.json();
      type = String(problem.type || "").split("/").pop() || type;
      detail = String(problem.detail || problem.title || detail);
    } catch (error) {
      // not a problem document: keep the status text
    }
    throw new ApiError(detail, type, response.status);
  }

  function signerOf(account) {
    return { deviceId: account.id, algorithm: account.algorithm, privateKey: account.privateKey };
  }

  const api = {
    activate: async (base, code, key, platformName, pushToken) => {
      const payload = { code, public_key: key.publicKey, platform: "web", name: platformName };
      if (pushToken) payload.push_token = pushToken;
      const signer = { deviceId: "activation", algorithm: key.algorithm, privateKey: key.privateKey };
      return signedFetch(base, signer, "POST", "/app/v1/activate", payload);
    },
    pending: async (account) =>
      (await signedFetch(account.base, signerOf(account), "GET", "/app/v1/challenges")).challenges,
    challenge: async (account, id) => {
      if (!ID.test(id)) throw new ApiError("not a challenge id", "not-found", 404);
      return signedFetch(account.base, signerOf(account), "GET", `/app/v1/challenges/${id}`);
    },
    answer: async (account, id, answer, extra) => {
      if (!ID.test(id)) throw new ApiError("not a challenge id", "not-found", 404);
      const payload = { answer, ...(extra || {}) };
      return signedFetch(account.base, signerOf(account), "POST", `/app/v1/challenges/${id}/answer`, payload);
    },
    setPushToken: (account, token) =>
      signedFetch(account.base, signerOf(account), "PUT", "/app/v1/device/push-token", { push_token: token }),
    remove: (account) => signedFetch(account.base, signerOf(account), "DELETE", "/app/v1/device"),
    vapidKey: async (base) => {
      const response = await fetch(`${base}/app/v1/webpush/key`, { cache: "no-store", credentials: "omit" });
      if (!response.ok) return null; // 404: Web Push is off on this server (the app polls)
      const data = await response.json();
      return typeof data.vapid_public_key === "string" ? data.vapid_public_key : null;
    },
  };

  /* The push token of a web device: PushSubscription.toJSON() without expirationTime, as
   * compact JSON (I15 contract). */
  function pushToken(subscription) {
    const json = typeof subscription.toJSON === "function" ? subscription.toJSON() : subscription;
    if (!json || !json.endpoint || !json.keys) return null;
    return JSON.stringify({ endpoint: json.endpoint, keys: { p256dh: json.keys.p256dh, auth: json.keys.auth } });
  }

  global.OpenMFACore = {
    ID,
    ApiError,
    api,
    apiBase,
    b64uDecode,
    b64uEncode,
    canonicalRequest,
    generateDeviceKey,
    importTotpKey,
    pushToken,
    signBytes,
    store,
    totpCode,
  };
})(self);
