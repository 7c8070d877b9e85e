/* OpenMFA web authenticator: the page. See docs/webapp.md for what a user does.
 *
 * Screens: the home view (pending sign-in requests, accounts with offline codes and the
 * notification state, "add an account") and the challenge view (#challenge=<id>). The
 * activation code arrives as #activate=<code> and leaves the address bar at once.
 */
const { ApiError, ID, api, apiBase, b64uDecode, generateDeviceKey, importTotpKey, pushToken, store, totpCode } =
  self.OpenMFACore;
const { language, problem, t } = self.OpenMFAI18n;

/* Set only by the browser tests (Playwright's add_init_script) before this script runs: it
 * stands in for the browser's push service, which headless Chromium cannot reach. Production
 * code never sets it; without it every call below goes to the real PushManager. */
const TEST = globalThis.__OPENMFA_TEST__ || null;

const BASE = apiBase(location.href);
const POLL_MS = 3000;
const CODE = /^[A-Za-z0-9_-]{1,128}$/;
const $ = (id) => document.getElementById(id);
// Dates in the user's own variant of the app's language (en-GB: 6 Dec 2026, 14:05:09).
const LOCALE = (navigator.languages || []).find((tag) => tag.toLowerCase().split("-")[0] === language) || language;

const state = {
  accounts: [],
  challenge: null, // {account, data} on the challenge view
  installPrompt: null,
  pollTimer: 0,
  busy: false,
  adding: false, // the "add another account" form is open
};

// -- small helpers -------------------------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function toast(text) {
  const node = $("message");
  node.textContent = text;
  node.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => {
    node.hidden = true;
  }, 5000);
}

function formatTime(iso) {
  const when = new Date(iso);
  if (Number.isNaN(when.getTime())) return t("challenge.unknown");
  return when.toLocaleString(LOCALE, { dateStyle: "medium", timeStyle: "medium" });
}

function isIos() {
  return /iPad|iPhone|iPod/.test(navigator.userAgent) || (navigator.platform === "MacIntel" && navigator.maxTouchPoints > 1);
}

function standalone() {
  return matchMedia("(display-mode: standalone)").matches || navigator.standalone === true;
}

function deviceName() {
  const platform = (navigator.userAgentData && navigator.userAgentData.platform) || (isIos() ? "iOS" : "");
  return (platform ? `Web app on ${platform}` : "Web app").slice(0, 128);
}

function translatePage() {
  document.documentElement.lang = language;
  document.title = t("app.title");
  for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
}

// -- the address fragment ------------------------------------------------------------------

/* #activate=<code> is read once and removed from the address and the history entry, so the
 * code is neither shown, bookmarked nor offered by "back"; #challenge=<id> stays (it is what
 * a notification opens). */
function takeFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const code = params.get("activate");
  if (code !== null) {
    history.replaceState(null, "", location.pathname + location.search);
    return { activate: code };
  }
  const challenge = params.get("challenge");
  if (challenge !== null && ID.test(challenge)) return { challenge };
  return {};
}

/* What a user may paste: the app link with #activate=, an openmfa://activate URI (its
 * server must be this one), or the bare code. */
function codeFromInput(text) {
  const value = text.trim();
  if (CODE.test(value)) return value;
  try {
    const url = new URL(value);
    if (url.protocol === "openmfa:") {
      const query = new URLSearchParams(url.search || url.pathname.split("?")[1] || "");
      const server = new URL(query.get("url") || "");
      if (server.origin !== location.origin) return null; // an account lives on this server
      return CODE.test(query.get("code") || "") ? query.get("code") : null;
    }
    if (url.origin !== location.origin) return null;
    const code = new URLSearchParams(url.hash.slice(1)).get("activate");
    return code && CODE.test(code) ? code : null;
  } catch (error) {
    return null;
  }
}

// -- activation ----------------------------------------------------------------------------

async function activate(code) {
  const status = $("activate-status");
  status.classList.remove("error");
  if (!CODE.test(code)) {
    status.textContent = t("activate.failed", { detail: t("challenge.unknown") });
    status.classList.add("error");
    return;
  }
  status.textContent = t("activate.working");
  $("activate-button").disabled = true;
  try {
    const key = await generateDeviceKey(TEST && TEST.keyAlgorithm);
    const token = await store.get("pushToken");
    const data = await api.activate(BASE, code, key, deviceName(), token || null);
    const account = {
      id: data.device_id,
      user: data.user,
      base: BASE,
      algorithm: key.algorithm,
      privateKey: key.privateKey, // CryptoKey, non-extractable: IndexedDB keeps the object
      publicKey: key.publicKey,
      totpKey: await importTotpKey(data.totp), // the base32 seed is not stored
      totp: { algorithm: data.totp.algorithm, digits: data.totp.digits, period: data.totp.period },
      requirePin: Boolean(data.require_pin),
      hasPin: Boolean(data.has_pin),
      pushToken: token || null,
      createdAt: new Date().toISOString(),
    };
    await store.putAccount(account);
    state.adding = false;
    status.textContent = "";
    const notes = [
      t("activate.done", { user: account.user }),
      t("activate.algorithm", { algorithm: account.algorithm }),
      account.requirePin && !account.hasPin ? t("activate.pinMissing") : "",
    ]
      .filter(Boolean)
      .join(" ");
    $("account-note").textContent = notes;
    $("activate-code").value = "";
    await loadAccounts();
    await syncPush({ ask: true });
    refreshPending();
  } catch (error) {
    status.textContent = t("activate.failed", { detail: problem(error) });
    status.classList.add("error");
  } finally {
    $("activate-button").disabled = false;
  }
}

// -- accounts and offline codes ------------------------------------------------------------

async function loadAccounts() {
  state.accounts = await store.accounts();
  renderAccounts();
}

function renderAccounts() {
  const list = $("account-list");
  list.replaceChildren();
  $("accounts").hidden = state.accounts.length === 0;
  // With accounts, "add another" is one button away instead of a form under the codes.
  const some = state.accounts.length > 0;
  $("activate").hidden = some && !state.adding;
  $("add-account").hidden = !some || state.adding;
  $("activate-heading").textContent = t(some ? "accounts.add" : "activate.heading");
  for (const account of state.accounts) {
    const item = el("li", "account");
    item.dataset.account = account.id;
    const head = el("div", "account-head");
    head.append(el("span", "account-user", account.user));
    const remove = el("button", "small danger", t("account.remove"));
    remove.type = "button";
    remove.addEventListener("click", () => removeAccount(account));
    head.append(remove);
    const row = el("div", "code-row");
    const code = el("span", "code", "\u2007".repeat(account.totp.digits || 6));
    code.setAttribute("aria-label", t("account.code"));
    row.append(code, el("span", "countdown"));
    item.append(head, el("span", "label", t("account.code")), row);
    list.append(item);
  }
  updateCodes();
}

async function updateCodes() {
  const now = Date.now();
  for (const account of state.accounts) {
    const item = document.querySelector(`li[data-account="${CSS.escape(account.id)}"]`);
    if (!item) continue;
    const period = account.totp.period || 30;
    const code = await totpCode(account.totpKey, account.totp, now);
    const left = period - (Math.floor(now / 1000) % period);
    item.querySelector(".code").textContent = code;
    item.querySelector(".countdown").textContent = t("account.expires", { seconds: left });
  }
}

async function removeAccount(account) {
  if (!confirm(t("account.removeConfirm", { user: account.user }))) return;
  try {
    await api.remove(account);
  } catch (error) {
    // Already gone on the server (removed by an administrator): forget it here too. Any other
    // failure keeps the key, or the server would go on showing a device nobody can use.
    if (!(error instanceof ApiError && error.type === "bad-signature")) {
      toast(problem(error));
      return;
    }
  }
  await store.deleteAccount(account.id);
  toast(t("account.removed", { user: account.user }));
  await loadAccounts();
  refreshPending();
}

// -- push subscription ---------------------------------------------------------------------

const push = {
  supported: () =>
    Boolean(TEST && TEST.push) || ("serviceWorker" in navigator && "PushManager" in self && "Notification" in self),
  permission: () => (TEST && TEST.push && TEST.push.permission) || (self.Notification ? Notification.permission : "denied"),
  get: (registration) => (TEST && TEST.push ? TEST.push.subscription : registration.pushManager.getSubscription()),
  subscribe: (registration, key) =>
    TEST && TEST.push
      ? TEST.push.subscribe(key)
      : registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: b64uDecode(key) }),
};

function showPushState(key, detail) {
  $("push-status").textContent = t(key, { detail: detail || "" });
  $("push-status").dataset.state = key.split(".")[1];
  $("push-enable").hidden = key !== "push.none";
}

/* Tell every account's server about `token` (null: none, the device falls back to polling).
 * One refusal (say, an account an administrator removed) does not keep the others from it;
 * the first is raised after all were tried, and the next start tries again. */
async function sendToken(token) {
  let failure = null;
  for (const account of await store.accounts()) {
    if (account.pushToken === token) continue;
    try {
      await api.setPushToken(account, token);
      account.pushToken = token;
      await store.putAccount(account);
    } catch (error) {
      failure = failure || error;
    }
  }
  if (failure) throw failure;
}

/* Make sure the server has this browser's current push subscription; run at each start and
 * after activation. Detects a lost subscription (permission revoked, subscription gone or
 * replaced) and registers again. `ask`: may ask for notification permission. */
async function syncPush({ ask = false } = {}) {
  const accounts = await store.accounts();
  if (!accounts.length) return;
  if (!push.supported()) return showPushState(isIos() && !standalone() ? "push.needsInstall" : "push.unsupported");
  if (isIos() && !standalone()) return showPushState("push.needsInstall"); // iOS: push only when installed
  if (!navigator.onLine) return; // checked again when the network is back
  try {
    let permission = push.permission();
    if (permission === "default" && ask && !TEST) permission = await Notification.requestPermission();
    if (permission === "denied") {
      await sendToken(null);
      await store.set("pushToken", null);
      return showPushState("push.denied");
    }
    if (permission !== "granted") return showPushState("push.none");
    const key = await api.vapidKey(BASE);
    if (!key) return showPushState("push.off");
    const registration = await navigator.serviceWorker.ready;
    const stored = await store.get("pushToken");
    const storedKey = await store.get("vapidKey");
    let subscription = await push.get(registration);
    let lost = false;
    if (subscription && storedKey && storedKey !== key && !TEST) {
      await subscription.unsubscribe(); // the server has a new VAPID key: subscribe anew
      subscription = null;
    }
    if (!subscription) {
      lost = Boolean(stored);
      if (lost) showPushState("push.lost");
      subscription = await push.subscribe(registration, key);
    }
    const token = pushToken(subscription);
    if (stored && token !== stored) lost = true;
    await store.set("vapidKey", key);
    await sendToken(token);
    await store.set("pushToken", token);
    if (lost) await store.set("pushRenewed", new Date().toISOString());
    showPushState("push.ok");
    if (await store.get("pushRenewed")) $("push-status").textContent += ` \u2014 ${t("push.renewed")}`;
  } catch (error) {
    showPushState("push.error", problem(error));
  }
}

// -- pending challenges --------------------------------------------------------------------

async function refreshPending() {
  clearTimeout(state.pollTimer);
  const list = $("pending-list");
  const status = $("pending-status");
  $("pending").hidden = state.accounts.length === 0;
  if (!state.accounts.length) return;
  const items = [];
  let unreachable = false;
  for (const account of state.accounts) {
    try {
      for (const challenge of await api.pending(account)) items.push({ account, challenge });
    } catch (error) {
      if (error.type === "unreachable") unreachable = true;
      else status.textContent = `${account.user}: ${problem(error)}`;
    }
  }
  list.replaceChildren();
  for (const { account, challenge } of items) {
    const item = el("li", "pending-item");
    item.dataset.challenge = challenge.id;
    const text = el("span", "pending-text", challenge.display);
    if (state.accounts.length > 1) text.append(el("span", "label", account.user));
    const open = el("button", "small", t("pending.open"));
    open.type = "button";
    open.addEventListener("click", () => {
      location.hash = `challenge=${challenge.id}`;
    });
    item.append(text, open);
    list.append(item);
  }
  if (unreachable) status.textContent = t("pending.offline");
  else if (!items.length) status.textContent = t("pending.none");
  else status.textContent = "";
  if (document.visibilityState === "visible") state.pollTimer = setTimeout(refreshPending, POLL_MS);
}

// -- one challenge -------------------------------------------------------------------------

function showHome() {
  state.challenge = null;
  $("view-challenge").hidden = true;
  $("view-home").hidden = false;
  refreshPending();
}

async function openChallenge(id) {
  $("view-home").hidden = true;
  $("view-challenge").hidden = false;
  const result = $("ch-result");
  result.textContent = "";
  result.classList.remove("error");
  $("ch-form").hidden = true;
  $("ch-display").textContent = "";
  $("ch-context").replaceChildren();
  // Always what the server says now, never what a notification carried.
  for (const account of await store.accounts()) {
    try {
      const data = await api.challenge(account, id);
      state.challenge = { account, data };
      renderChallenge();
      return;
    } catch (error) {
      if (error.type === "unreachable") {
        result.textContent = t("pending.offline");
        result.classList.add("error");
        return;
      }
    }
  }
  result.textContent = t("challenge.notFound");
  result.classList.add("error");
}

function renderChallenge() {
  const { account, data } = state.challenge;
  const context = data.context || {};
  $("ch-display").textContent = data.display;
  const rows = [
    ["challenge.account", account.user],
    ["challenge.application", context.client_name || data.client_name],
    ["challenge.address", context.client_ip || data.client_ip],
    ["challenge.place", [context.city, context.country].filter(Boolean).join(", ")],
    ["challenge.time", formatTime(context.time || data.created_at)],
    ["challenge.expires", formatTime(data.expires_at)],
  ];
  const list = $("ch-context");
  list.replaceChildren();
  for (const [key, value] of rows) list.append(el("dt", "", t(key)), el("dd", "", value || t("challenge.unknown")));
  const pending = data.state === "pending";
  $("ch-form").hidden = !pending;
  $("ch-number-row").hidden = !data.number_required;
  $("ch-pin-row").hidden = !account.requirePin;
  $("ch-number").value = "";
  $("ch-pin").value = "";
  for (const button of ["ch-approve", "ch-deny", "ch-fraud"]) $(button).disabled = false;
  if (!pending) $("ch-result").textContent = t(`state.${data.state}`);
  if (pending && data.number_required) $("ch-number").focus();
}

async function answer(kind) {
  if (!state.challenge || state.busy) return;
  const { account, data } = state.challenge;
  const result = $("ch-result");
  result.classList.remove("error");
  const extra = {};
  if (kind === "approve") {
    if (data.number_required) {
      const text = $("ch-number").value.trim();
      if (!/^[0-9]{1,2}$/.test(text)) {
        result.textContent = t("challenge.numberMissing");
        result.classList.add("error");
        return;
      }
      extra.number = Number(text);
    }
    if (account.requirePin) {
      const pin = $("ch-pin").value.trim();
      if (!pin) {
        result.textContent = t("challenge.pinMissing");
        result.classList.add("error");
        return;
      }
      extra.pin = pin;
    }
  }
  if (kind === "fraud" && !confirm(t("challenge.fraudConfirm"))) return;
  state.busy = true;
  for (const button of ["ch-approve", "ch-deny", "ch-fraud"]) $(button).disabled = true;
  try {
    const outcome = await api.answer(account, data.id, kind, extra);
    result.textContent = t(`state.${outcome.state}`);
    $("ch-form").hidden = true;
  } catch (error) {
    result.textContent = problem(error);
    result.classList.add("error");
    // A wrong number denies the challenge; a wrong PIN leaves it pending: show what is true now.
    try {
      state.challenge.data = await api.challenge(account, data.id);
      if (state.challenge.data.state !== "pending") {
        $("ch-form").hidden = true;
        result.textContent += ` ${t(`state.${state.challenge.data.state}`)}`;
      } else {
        for (const button of ["ch-approve", "ch-deny", "ch-fraud"]) $(button).disabled = false;
      }
    } catch (ignored) {
      for (const button of ["ch-approve", "ch-deny", "ch-fraud"]) $(button).disabled = false;
    }
  } finally {
    state.busy = false;
  }
}

// -- routing -------------------------------------------------------------------------------

function route() {
  const fragment = takeFragment();
  if (fragment.activate !== undefined) {
    state.adding = true; // show the activation's progress and any refusal
    renderAccounts();
    showHome();
    if (isIos() && !standalone()) {
      // On iOS the Home Screen app has storage of its own: an account activated in this Safari
      // tab would not be in it, and only the Home Screen app gets notifications. Keep the
      // code for the user to paste there (or to activate here anyway).
      $("activate-code").value = fragment.activate;
      $("activate-status").textContent = t("activate.iosFirst");
      return;
    }
    activate(fragment.activate);
  } else if (fragment.challenge) {
    openChallenge(fragment.challenge);
  } else {
    showHome();
  }
}

// -- install prompt ------------------------------------------------------------------------

function setUpInstall() {
  if (standalone()) return;
  if (isIos()) {
    $("install-text").textContent = t("install.ios");
    $("install").hidden = false;
    return;
  }
  addEventListener("beforeinstallprompt", (event) => {
    event.preventDefault(); // show our own button instead of the browser's mini bar
    state.installPrompt = event;
    $("install-text").textContent = t("install.android");
    $("install-button").hidden = false;
    $("install").hidden = false;
  });
  $("install-button").addEventListener("click", async () => {
    if (!state.installPrompt) return;
    state.installPrompt.prompt();
    await state.installPrompt.userChoice;
    state.installPrompt = null;
    $("install").hidden = true;
  });
  addEventListener("appinstalled", () => {
    $("install").hidden = true;
  });
}

// -- start ---------------------------------------------------------------------------------

function showOnline() {
  $("offline").hidden = navigator.onLine;
}

async function start() {
  translatePage();
  setUpInstall();
  showOnline();
  addEventListener("online", () => {
    showOnline();
    refreshPending();
    syncPush();
  });
  addEventListener("offline", showOnline);
  $("activate-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const code = codeFromInput($("activate-code").value);
    if (code) activate(code);
    else {
      $("activate-status").textContent = t("activate.failed", { detail: t("activate.code") });
      $("activate-status").classList.add("error");
    }
  });
  $("ch-form").addEventListener("submit", (event) => {
    event.preventDefault();
    answer("approve");
  });
  $("ch-deny").addEventListener("click", () => answer("deny"));
  $("ch-fraud").addEventListener("click", () => answer("fraud"));
  $("ch-back").addEventListener("click", () => {
    history.replaceState(null, "", location.pathname + location.search);
    showHome();
  });
  $("push-enable").addEventListener("click", () => syncPush({ ask: true }));
  $("add-account").addEventListener("click", () => {
    state.adding = true;
    renderAccounts();
    $("activate-code").focus();
  });
  addEventListener("hashchange", route);
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") {
      if (!state.challenge) refreshPending();
      syncPush();
    }
  });
  if ("serviceWorker" in navigator) {
    navigator.serviceWorker.addEventListener("message", (event) => {
      const message = event.data || {};
      if (message.type === "open" && ID.test(message.challenge_id || "")) {
        location.hash = `challenge=${message.challenge_id}`;
      } else if (message.type === "push" && !state.challenge) {
        refreshPending();
      }
    });
    try {
      await navigator.serviceWorker.register("sw.js", { scope: "./" });
    } catch (error) {
      // No service worker (e.g. plain http on a non-local address): the app still works
      // online; push and offline start need HTTPS.
    }
  }
  await loadAccounts();
  setInterval(updateCodes, 1000);
  route();
  syncPush();
}

start();
