/* OpenMFA web authenticator: every string the app shows, in one catalogue.
 *
 * To add a language, add a block with the same keys; the app picks the first of
 * navigator.languages that is here (by its primary subtag), else English. A classic script
 * (one global, OpenMFAI18n) so the service worker can load it with importScripts() too.
 * Placeholders are {name}; values are inserted as text, never as HTML.
 */
(function (global) {
  "use strict";

  const CATALOGUE = {
    en: {
      "app.title": "OpenMFA Authenticator",
      "install.android": "Install this app to get sign-in requests as notifications.",
      "install.button": "Install",
      "install.ios":
        "To get notifications on an iPhone, add this app to the Home Screen: tap Share, then \u201cAdd to Home Screen\u201d, and open it from there.",
      "activate.heading": "Add an account",
      "activate.intro":
        "Open the activation link from the OpenMFA portal on this phone (\u201cUse this phone's browser\u201d), or paste the link or code here.",
      "activate.code": "Activation link or code",
      "activate.button": "Activate",
      "activate.working": "Creating the key and activating\u2026",
      "activate.iosFirst":
        "iPhone: first add this app to the Home Screen (Share, then \u201cAdd to Home Screen\u201d), open it from there and paste the code above. Copy it now. Or tap Activate to use the app in Safari only, without notifications.",
      "activate.done": "Activated for {user}.",
      "activate.failed": "Activation failed: {detail}",
      "activate.algorithm": "Key: {algorithm}, kept in this browser and never exported.",
      "activate.pinMissing":
        "Your administrator requires a PIN for approvals, and you have none yet. Ask them to set one.",
      "accounts.heading": "Accounts",
      "accounts.none": "No account yet.",
      "accounts.add": "Add another account",
      "account.code": "Offline code",
      "account.expires": "{seconds} s",
      "account.remove": "Remove",
      "account.removeConfirm":
        "Remove the account {user} from this app? Its key is deleted; you need a new activation to add it again.",
      "account.removed": "Account {user} removed.",
      "account.removeFailed": "The server could not be told ({detail}); the account was removed here.",
      "push.ok": "Notifications: on",
      "push.off": "Notifications: not offered by this server. Open the app to see sign-in requests.",
      "push.denied": "Notifications: blocked in the browser settings. Open the app to see sign-in requests.",
      "push.lost": "Notifications: the subscription was lost. Registering again\u2026",
      "push.none": "Notifications: not set up yet.",
      "push.renewed": "registered again after the subscription was lost",
      "push.needsInstall": "Notifications: add the app to the Home Screen first.",
      "push.unsupported": "Notifications: this browser cannot receive push messages.",
      "push.error": "Notifications: could not be set up ({detail}).",
      "push.enable": "Turn on notifications",
      "pending.heading": "Sign-in requests",
      "pending.none": "No sign-in is waiting for you.",
      "pending.open": "Open",
      "pending.offline": "Offline: requests cannot be checked. Offline codes still work.",
      "challenge.heading": "Is this you signing in?",
      "challenge.account": "Account",
      "challenge.application": "Application",
      "challenge.address": "From address",
      "challenge.place": "Place",
      "challenge.time": "Time",
      "challenge.expires": "Expires",
      "challenge.unknown": "unknown",
      "challenge.number": "Number shown on the sign-in screen",
      "challenge.pin": "Your PIN",
      "challenge.approve": "Approve",
      "challenge.deny": "Deny",
      "challenge.fraud": "This wasn't me",
      "challenge.back": "Back",
      "challenge.fraudConfirm": "Report this sign-in as not yours? Your administrator is told and your account may be blocked until they check it.",
      "challenge.numberMissing": "Type the number shown on the sign-in screen.",
      "challenge.pinMissing": "Type your PIN.",
      "challenge.notFound": "This sign-in request is not there (any more).",
      "state.approved": "Approved.",
      "state.denied": "Denied.",
      "state.fraud": "Reported as not you. Your administrator has been told.",
      "state.expired": "This request has expired.",
      "state.cancelled": "This request was cancelled.",
      "state.pending": "Waiting for your answer.",
      "problem.wrong-pin": "The PIN is wrong.",
      "problem.pin-required": "Type your PIN.",
      "problem.pin-locked": "Too many wrong PINs. Approvals are locked for a while.",
      "problem.wrong-number": "That was not the number on the sign-in screen.",
      "problem.challenge-closed": "This request was already answered or cancelled.",
      "problem.challenge-expired": "This request has expired.",
      "problem.user-blocked": "Your account is blocked. Ask your administrator.",
      "problem.user-disabled": "Your account is disabled. Ask your administrator.",
      "problem.stale-request": "This phone's clock is wrong. Set it to automatic time.",
      "problem.unreachable": "The server cannot be reached.",
      "problem.activation-code-invalid": "This activation code is not known. Ask for a new one.",
      "problem.activation-code-used": "This activation code was used already. Ask for a new one.",
      "problem.activation-code-expired": "This activation code has expired. Ask for a new one.",
      "notify.title": "Sign-in request",
      "notify.titleUser": "Sign-in request for {user}",
      "notify.approve": "Approve",
      "notify.deny": "Deny",
      "notify.approved": "Approved",
      "notify.denied": "Denied",
      "offline.banner": "You are offline. Offline codes work; requests need the network.",
    },
    de: {
      "app.title": "OpenMFA Authenticator",
      "install.android": "Installieren Sie diese App, um Anmeldeanfragen als Mitteilung zu erhalten.",
      "install.button": "Installieren",
      "install.ios":
        "F\u00fcr Mitteilungen auf dem iPhone die App zum Home-Bildschirm hinzuf\u00fcgen: \u201eTeilen\u201c, dann \u201eZum Home-Bildschirm\u201c, und sie von dort \u00f6ffnen.",
      "activate.heading": "Konto hinzuf\u00fcgen",
      "activate.intro":
        "\u00d6ffnen Sie den Aktivierungslink aus dem OpenMFA-Portal auf diesem Telefon (\u201eBrowser dieses Telefons verwenden\u201c), oder f\u00fcgen Sie Link oder Code hier ein.",
      "activate.code": "Aktivierungslink oder -code",
      "activate.button": "Aktivieren",
      "activate.working": "Schl\u00fcssel wird erzeugt und aktiviert \u2026",
      "activate.iosFirst":
        "iPhone: f\u00fcgen Sie die App zuerst zum Home-Bildschirm hinzu (\u201eTeilen\u201c, dann \u201eZum Home-Bildschirm\u201c), \u00f6ffnen Sie sie dort und f\u00fcgen Sie den Code oben ein. Kopieren Sie ihn jetzt. Oder tippen Sie auf \u201eAktivieren\u201c, um die App nur in Safari zu nutzen, ohne Mitteilungen.",
      "activate.done": "Aktiviert f\u00fcr {user}.",
      "activate.failed": "Aktivierung fehlgeschlagen: {detail}",
      "activate.algorithm": "Schl\u00fcssel: {algorithm}, bleibt in diesem Browser und wird nie exportiert.",
      "activate.pinMissing":
        "Ihr Administrator verlangt eine PIN f\u00fcr Best\u00e4tigungen, und Sie haben noch keine. Bitten Sie ihn, eine zu setzen.",
      "accounts.heading": "Konten",
      "accounts.none": "Noch kein Konto.",
      "accounts.add": "Weiteres Konto hinzuf\u00fcgen",
      "account.code": "Offline-Code",
      "account.expires": "{seconds} s",
      "account.remove": "Entfernen",
      "account.removeConfirm":
        "Das Konto {user} aus dieser App entfernen? Der Schl\u00fcssel wird gel\u00f6scht; zum erneuten Hinzuf\u00fcgen brauchen Sie eine neue Aktivierung.",
      "account.removed": "Konto {user} entfernt.",
      "account.removeFailed": "Der Server konnte nicht benachrichtigt werden ({detail}); das Konto wurde hier entfernt.",
      "push.ok": "Mitteilungen: an",
      "push.off": "Mitteilungen: von diesem Server nicht angeboten. \u00d6ffnen Sie die App, um Anmeldeanfragen zu sehen.",
      "push.denied": "Mitteilungen: in den Browser-Einstellungen blockiert. \u00d6ffnen Sie die App, um Anmeldeanfragen zu sehen.",
      "push.lost": "Mitteilungen: das Abonnement ging verloren. Wird neu registriert \u2026",
      "push.none": "Mitteilungen: noch nicht eingerichtet.",
      "push.renewed": "nach Verlust des Abonnements neu registriert",
      "push.needsInstall": "Mitteilungen: zuerst die App zum Home-Bildschirm hinzuf\u00fcgen.",
      "push.unsupported": "Mitteilungen: dieser Browser kann keine Push-Nachrichten empfangen.",
      "push.error": "Mitteilungen: konnten nicht eingerichtet werden ({detail}).",
      "push.enable": "Mitteilungen einschalten",
      "pending.heading": "Anmeldeanfragen",
      "pending.none": "Keine Anmeldung wartet auf Sie.",
      "pending.open": "\u00d6ffnen",
      "pending.offline": "Offline: Anfragen k\u00f6nnen nicht abgerufen werden. Offline-Codes funktionieren weiter.",
      "challenge.heading": "Melden Sie sich gerade an?",
      "challenge.account": "Konto",
      "challenge.application": "Anwendung",
      "challenge.address": "Von Adresse",
      "challenge.place": "Ort",
      "challenge.time": "Zeit",
      "challenge.expires": "L\u00e4uft ab",
      "challenge.unknown": "unbekannt",
      "challenge.number": "Zahl auf dem Anmeldebildschirm",
      "challenge.pin": "Ihre PIN",
      "challenge.approve": "Best\u00e4tigen",
      "challenge.deny": "Ablehnen",
      "challenge.fraud": "Das war ich nicht",
      "challenge.back": "Zur\u00fcck",
      "challenge.fraudConfirm": "Diese Anmeldung als nicht Ihre melden? Ihr Administrator wird informiert, und Ihr Konto kann bis zur Pr\u00fcfung gesperrt werden.",
      "challenge.numberMissing": "Geben Sie die Zahl vom Anmeldebildschirm ein.",
      "challenge.pinMissing": "Geben Sie Ihre PIN ein.",
      "challenge.notFound": "Diese Anmeldeanfrage gibt es nicht (mehr).",
      "state.approved": "Best\u00e4tigt.",
      "state.denied": "Abgelehnt.",
      "state.fraud": "Als nicht Ihre gemeldet. Ihr Administrator wurde informiert.",
      "state.expired": "Diese Anfrage ist abgelaufen.",
      "state.cancelled": "Diese Anfrage wurde abgebrochen.",
      "state.pending": "Wartet auf Ihre Antwort.",
      "problem.wrong-pin": "Die PIN ist falsch.",
      "problem.pin-required": "Geben Sie Ihre PIN ein.",
      "problem.pin-locked": "Zu viele falsche PINs. Best\u00e4tigungen sind eine Weile gesperrt.",
      "problem.wrong-number": "Das war nicht die Zahl vom Anmeldebildschirm.",
      "problem.challenge-closed": "Diese Anfrage wurde schon beantwortet oder abgebrochen.",
      "problem.challenge-expired": "Diese Anfrage ist abgelaufen.",
      "problem.user-blocked": "Ihr Konto ist gesperrt. Wenden Sie sich an Ihren Administrator.",
      "problem.user-disabled": "Ihr Konto ist deaktiviert. Wenden Sie sich an Ihren Administrator.",
      "problem.stale-request": "Die Uhr dieses Telefons geht falsch. Stellen Sie die Zeit auf automatisch.",
      "problem.unreachable": "Der Server ist nicht erreichbar.",
      "problem.activation-code-invalid": "Dieser Aktivierungscode ist unbekannt. Fordern Sie einen neuen an.",
      "problem.activation-code-used": "Dieser Aktivierungscode wurde schon verwendet. Fordern Sie einen neuen an.",
      "problem.activation-code-expired": "Dieser Aktivierungscode ist abgelaufen. Fordern Sie einen neuen an.",
      "notify.title": "Anmeldeanfrage",
      "notify.titleUser": "Anmeldeanfrage f\u00fcr {user}",
      "notify.approve": "Best\u00e4tigen",
      "notify.deny": "Ablehnen",
      "notify.approved": "Best\u00e4tigt",
      "notify.denied": "Abgelehnt",
      "offline.banner": "Sie sind offline. Offline-Codes funktionieren; Anfragen brauchen das Netz.",
    },
  };

  function pickLanguage(languages) {
    for (const tag of languages || []) {
      const primary = String(tag).toLowerCase().split("-")[0];
      if (Object.prototype.hasOwnProperty.call(CATALOGUE, primary)) return primary;
    }
    return "en";
  }

  const language = pickLanguage(global.navigator && global.navigator.languages);

  function t(key, params) {
    const text = CATALOGUE[language][key] ?? CATALOGUE.en[key] ?? key;
    return text.replace(/\{(\w+)\}/g, (whole, name) =>
      params && Object.prototype.hasOwnProperty.call(params, name) ? String(params[name]) : whole,
    );
  }

  /* What to show for a refusal: our own words for the problem types an app meets (docs/app-api.md),
   * else the server's detail (English). */
  function problem(error) {
    const key = `problem.${error && error.type}`;
    if (CATALOGUE.en[key]) return t(key);
    return (error && error.message) || String(error);
  }

  global.OpenMFAI18n = { CATALOGUE, language, pickLanguage, problem, t };
})(self);
