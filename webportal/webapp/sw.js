/* OpenMFA web authenticator: the service worker.
 *
 * - Caches the app shell and serves it when the network is gone, for the app's own paths
 *   only (never /app/v1, the API, and nothing outside /app/). Online it fetches first, so a
 *   changed app reaches the user at once; the cache is a fallback, not a source of truth.
 * - push: shows the sign-in request (title and body from the payload's display; tag and
 *   data the challenge id), with Approve / Deny buttons where the platform has them.
 * - notificationclick: an Approve / Deny button answers directly only when the challenge,
 *   fetched fresh from the server, needs neither a number nor a PIN; anything else opens the
 *   app on the challenge (/app/#challenge=<id>).
 * - pushsubscriptionchange: registers the new subscription with every account's server.
 */
importScripts("i18n.js", "core.js");

const { ID, api, b64uDecode, pushToken, store } = self.OpenMFACore;
const { t } = self.OpenMFAI18n;

const CACHE = "openmfa-app-v1";
const SCOPE = new URL(self.registration.scope); // https://host/<prefix>/app/
const SHELL = [
  "./",
  "app.js",
  "core.js",
  "i18n.js",
  "app.css",
  "manifest.webmanifest",
  "icon.svg",
  "icon-192.png",
  "icon-512.png",
];

self.addEventListener("install", (event) => {
  event.waitUntil(
    (async () => {
      const cache = await caches.open(CACHE);
      await cache.addAll(SHELL.map((path) => new Request(new URL(path, SCOPE), { cache: "reload" })));
      await self.skipWaiting();
    })(),
  );
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    (async () => {
      for (const name of await caches.keys()) if (name !== CACHE) await caches.delete(name);
      await self.clients.claim();
    })(),
  );
});

/* A shell path: GET, this origin, under the scope, not the API. */
function isShell(request) {
  if (request.method !== "GET") return false;
  const url = new URL(request.url);
  if (url.origin !== SCOPE.origin || !url.pathname.startsWith(SCOPE.pathname)) return false;
  return !url.pathname.startsWith(`${SCOPE.pathname}v1/`);
}

self.addEventListener("fetch", (event) => {
  if (!isShell(event.request)) return; // the browser handles it as if there were no worker
  event.respondWith(
    (async () => {
      const cache = await caches.open(CACHE);
      // The app page is cached under the scope URL, whatever query a link added.
      const key = event.request.mode === "navigate" ? new Request(SCOPE.href) : event.request;
      try {
        // The server marks every app file no-cache, so this revalidates with the server.
        const response = await fetch(event.request);
        if (response.ok && response.type === "basic" && SHELL.some((p) => new URL(p, SCOPE).href === new URL(key.url).href)) {
          await cache.put(key, response.clone());
        }
        return response;
      } catch (error) {
        const cached = await cache.match(key, { ignoreSearch: true });
        if (cached) return cached;
        throw error;
      }
    })(),
  );
});

// -- push ----------------------------------------------------------------------------------

function readPayload(event) {
  try {
    const data = event.data ? event.data.json() : {};
    return data && typeof data === "object" ? data : {};
  } catch (error) {
    return {};
  }
}

async function tellClients(message) {
  const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  for (const client of windows) client.postMessage(message);
}

self.addEventListener("push", (event) => {
  event.waitUntil(
    (async () => {
      const data = readPayload(event);
      const id = typeof data.challenge_id === "string" && ID.test(data.challenge_id) ? data.challenge_id : null;
      const user = typeof data.user === "string" ? data.user.slice(0, 128) : "";
      const display = typeof data.display === "string" ? data.display.slice(0, 300) : "";
      const options = {
        body: display,
        tag: id || "openmfa",
        data: { challenge_id: id, user },
        icon: "icon-192.png",
        requireInteraction: true,
      };
      if (id && self.Notification && Notification.maxActions > 0) {
        options.actions = [
          { action: "approve", title: t("notify.approve") },
          { action: "deny", title: t("notify.deny") },
        ];
      }
      // Browsers want every push to show a notification (userVisibleOnly), even a bad one.
      const title = user ? t("notify.titleUser", { user }) : t("notify.title");
      await self.registration.showNotification(title, options);
      // An open app refreshes its list; it is also told what was shown (the tests read it).
      const actions = (options.actions || []).map((a) => a.action);
      await tellClients({
        type: "push",
        challenge_id: id,
        shown: { title, body: options.body, tag: options.tag, data: options.data, actions },
      });
    })(),
  );
});

/* Answer from a notification button, or say false when the app must open instead. */
async function answerFromNotification(id, user, action) {
  for (const account of await store.accounts()) {
    if (user && account.user !== user) continue;
    let challenge;
    try {
      challenge = await api.challenge(account, id);
    } catch (error) {
      continue; // not this account's (or offline): try the next, else open the app
    }
    if (challenge.state !== "pending" || challenge.number_required || account.requirePin) return false;
    try {
      await api.answer(account, id, action);
      return true;
    } catch (error) {
      return false;
    }
  }
  return false;
}

async function openApp(id) {
  const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  for (const client of windows) {
    if (new URL(client.url).pathname.startsWith(SCOPE.pathname)) {
      client.postMessage({ type: "open", challenge_id: id });
      try {
        await client.focus();
      } catch (error) {
        // focus() needs the user's tap; the app got the message either way
      }
      return;
    }
  }
  await self.clients.openWindow(new URL(id ? `./#challenge=${id}` : "./", SCOPE).href);
}

/* A tap on the notification (action "") or on one of its buttons. A global function so that
 * the browser tests can run it as a tap does: headless Chromium has no notification to tap. */
self.openmfaNotificationClick = async (data, action) => {
  const { challenge_id: raw, user } = data || {};
  const id = typeof raw === "string" && ID.test(raw) ? raw : null;
  if (id && (action === "approve" || action === "deny")) {
    if (await answerFromNotification(id, user, action)) return;
  }
  await openApp(id);
};

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  event.waitUntil(self.openmfaNotificationClick(event.notification.data, event.action));
});

self.addEventListener("pushsubscriptionchange", (event) => {
  event.waitUntil(
    (async () => {
      let subscription = event.newSubscription;
      if (!subscription) {
        const key = await store.get("vapidKey");
        if (!key) return;
        subscription = await self.registration.pushManager.subscribe({
          userVisibleOnly: true,
          applicationServerKey: b64uDecode(key),
        });
      }
      const token = pushToken(subscription);
      for (const account of await store.accounts()) {
        try {
          await api.setPushToken(account, token);
          account.pushToken = token;
          await store.putAccount(account);
        } catch (error) {
          // offline: the app's check at its next start sends it
        }
      }
      await store.set("pushToken", token);
      await store.set("pushRenewed", new Date().toISOString());
    })(),
  );
});
