"""One exception tree for the whole backend.

Each error carries a stable ``type`` slug (published as ``https://openmfa.org/problems/<slug>``
in RFC 9457 problem documents), a short title and the HTTP status it maps to. The mapping to
HTTP happens in :mod:`backend.api.problems`, to CLI exit codes in :mod:`backend.cli.main`;
nothing else translates errors. Messages never contain secrets.
"""

from __future__ import annotations

from typing import Any, ClassVar


class OpenMFAError(Exception):
    """Base of every error the backend raises on purpose."""

    type: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal error"
    status: ClassVar[int] = 500
    #: Seconds a client should wait before trying again (``Retry-After``), where that helps.
    retry_after: ClassVar[int | None] = None

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra = extra


class ConfigurationError(OpenMFAError):
    type = "configuration-error"
    title = "The server is not configured correctly"
    status = 500


class ServerKeyError(OpenMFAError):
    type = "server-key-error"
    title = "The server key is missing or does not match the database"
    status = 503


class DatabaseError(OpenMFAError):
    type = "database-unavailable"
    title = "The database cannot be used"
    status = 503


class BadRequest(OpenMFAError):
    type = "invalid-request"
    title = "The request is malformed"
    status = 400


class PayloadTooLarge(OpenMFAError):
    type = "payload-too-large"
    title = "The request body is too large"
    status = 413


class NotFound(OpenMFAError):
    type = "not-found"
    title = "No such resource"
    status = 404


class Conflict(OpenMFAError):
    type = "conflict"
    title = "The resource already exists or changed meanwhile"
    status = 409


class AuthenticationRequired(OpenMFAError):
    type = "unauthorized"
    title = "Missing or invalid credentials"
    status = 401


class Forbidden(OpenMFAError):
    type = "forbidden"
    title = "The credentials are valid but may not do this"
    status = 403


class FactorChangeRefused(Forbidden):
    """Adding or changing a second factor without the proof it needs (backend/domain/stepup.py)."""

    type = "factor-change-refused"
    title = "Changing a second factor needs proof of an existing one"


class StepUpRequired(FactorChangeRefused):
    type = "step-up-required"
    title = "Confirm with your authenticator first: approve a push or type a code (step-up)"


class EnrolmentNotAllowed(FactorChangeRefused):
    type = "enrolment-not-allowed"
    title = (
        "A first authenticator is enrolled only through an invitation or by an administrator; "
        "ask your help desk"
    )


class BadSignature(AuthenticationRequired):
    type = "bad-signature"
    title = "The request signature is missing, malformed or does not verify"


class StaleRequest(AuthenticationRequired):
    type = "stale-request"
    title = "The request timestamp is outside the accepted window"


class ReplayedRequest(AuthenticationRequired):
    type = "replayed-request"
    title = "The request nonce was used before"


class ActivationCodeInvalid(OpenMFAError):
    type = "activation-code-invalid"
    title = "The activation code is unknown, expired or already used"
    status = 400


class ActivationCodeExpired(ActivationCodeInvalid):
    type = "activation-code-expired"
    title = "The activation code has expired; generate a new one"


class ActivationCodeUsed(ActivationCodeInvalid):
    type = "activation-code-used"
    title = "The activation code was already used; generate a new one"


class UnknownUser(OpenMFAError):
    type = "unknown-user"
    title = "No such user"
    status = 404


class UserNotEnrolled(OpenMFAError):
    type = "user-not-enrolled"
    title = "The user has no active authenticator"
    status = 409


class UserDisabled(OpenMFAError):
    type = "user-disabled"
    title = "The user is disabled"
    status = 403


class UserBlocked(OpenMFAError):
    type = "user-blocked"
    title = "The user is blocked until an administrator unblocks them"
    status = 403


class OtpLocked(OpenMFAError):
    type = "otp-locked"
    title = "Too many wrong codes; the one-time codes are locked for a while"
    status = 429


class HashingBusy(OpenMFAError):
    """The argon2id pool is full: refused at once instead of queueing (backend/passwords.py).

    429, not 503: the RADIUS bridge reads a 5xx as "backend down" and applies its failmode,
    which must never turn a flood of password guesses into accepts."""

    type = "busy"
    title = "Too many password and PIN checks at once; try again in a moment"
    status = 429
    retry_after = 1


class PinRequired(OpenMFAError):
    type = "pin-required"
    title = "This approval needs the PIN"
    status = 403


class WrongPin(OpenMFAError):
    type = "wrong-pin"
    title = "The PIN is wrong"
    status = 403


class TooManyWatched(OpenMFAError):
    """A bridge's wait channel watches as many challenges as it may (per id, in the channel)."""

    type = "too-many-watched"
    title = "This channel watches as many challenges as it may"
    status = 429


class PinLocked(OpenMFAError):
    type = "pin-locked"
    title = "Too many wrong PINs; approvals are locked for a while"
    status = 429


class WrongNumber(OpenMFAError):
    type = "wrong-number"
    title = "The number does not match the one shown at sign-in"
    status = 403


class PushLimited(OpenMFAError):
    """The push-fatigue guard stopped pushes for the user; a code still works."""

    type = "push-limited"
    title = "Too many push sign-ins; use a code from the app for now"
    status = 429


class NumberMatchingUnavailable(OpenMFAError):
    """Number matching applies, the gateway cannot show the number, and policy refuses."""

    type = "number-matching-unavailable"
    title = "Number matching is required but this gateway cannot show the number"
    status = 409


class ChallengeExpired(OpenMFAError):
    type = "challenge-expired"
    title = "The challenge has expired"
    status = 410


class ChallengeClosed(OpenMFAError):
    type = "challenge-closed"
    title = "The challenge was already answered differently or cancelled"
    status = 409


class PolicyError(BadRequest):
    type = "invalid-policy"
    title = "Unknown policy key or invalid value"


class InvalidName(BadRequest):
    type = "invalid-name"
    title = "The name is not allowed"


class ImportRefused(BadRequest):
    """A CSV import refused as a whole; ``problems`` holds each bad line and why."""

    type = "import-refused"
    title = "The file was not imported"

    def __init__(self, detail: str | None = None, problems: tuple[str, ...] = ()) -> None:
        super().__init__(detail, problems=list(problems))
        self.problems = problems


class InvalidRadiusClient(BadRequest):
    type = "invalid-radius-client"
    title = "The RADIUS client settings are not valid"


class InvalidDirectory(BadRequest):
    type = "invalid-directory"
    title = "The directory settings are not valid"


class DirectoryError(OpenMFAError):
    """The directory refused what we asked (the service account's bind, a bad base DN or
    filter): the settings need fixing, retrying will not help."""

    type = "directory-error"
    title = "The directory refused the request"
    status = 502


class DirectoryUnavailable(OpenMFAError):
    """No URL of the directory answered (connection, TLS or timeout)."""

    type = "directory-unavailable"
    title = "The directory cannot be reached"
    status = 503


class SyncStopped(Conflict):
    """A sync would disable more users than the directory's threshold allows."""

    type = "sync-stopped"
    title = "The sync would disable too many users; check the directory, or force it"


class InvitationInvalid(OpenMFAError):
    type = "invitation-invalid"
    title = "This invitation link is not valid; ask your administrator for a new one"
    status = 404


class InvitationExpired(InvitationInvalid):
    type = "invitation-expired"
    title = "This invitation link has expired; ask your administrator for a new one"
    status = 410


class InvitationUsed(InvitationInvalid):
    type = "invitation-used"
    title = "This invitation link was already used; sign in with your password"
    status = 410


class BootstrapInvalid(OpenMFAError):
    type = "bootstrap-invalid"
    title = "This set-up link is not valid (an administrator exists, or the server restarted)"
    status = 404


class CsrfFailed(Forbidden):
    type = "csrf-failed"
    title = "The form expired or did not come from this site; reload the page and try again"
