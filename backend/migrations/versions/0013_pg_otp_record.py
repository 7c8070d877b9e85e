"""pgfast: a PostgreSQL function that records a code check in one round trip

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06

On PostgreSQL the code check is two round trips: one read (gateway token, user, seeds,
lockout policy), the comparison in Python (the seeds are decrypted with the server key, which
never goes to the database), then one call of ``openmfa_otp_record``, which takes the user's
advisory lock, re-checks the user under it, claims the time step or counts the failure
(locking the user at the limit) and writes the audit row, in that order, in one statement's
transaction. SQLite has no server-side functions and keeps its one group-committed job.
"""
from collections.abc import Sequence

from alembic import op

revision: str = '0013'
down_revision: str | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The audit INSERTs repeat AuditLog.add_job's columns: a change to audit_events needs a
# migration that replaces this function too.
# Statements run in a fixed order under the advisory lock: the device row before the user
# row, the order a push answer takes them, so the two never deadlock.
RECORD = """
CREATE OR REPLACE FUNCTION openmfa_otp_record(
    p_lock_class integer, p_lock_key integer, p_user_id integer, p_device_id text,
    p_step bigint, p_now timestamptz, p_reason text, p_max_failures integer,
    p_lockout_seconds integer, p_actor text, p_user_name text, p_source text,
    p_request_id text, p_where text
) RETURNS TABLE (outcome text, locked_until timestamptz, blocked_reason text)
LANGUAGE plpgsql AS $fn$
DECLARE
    v_user record;
    v_claimed integer;
    v_failures integer;
    v_reason text := p_reason;
BEGIN
    -- One code check per user at a time: the lock state read, the claim and the count
    -- are one step, so concurrent wrong codes cannot outrun the lockout.
    PERFORM pg_advisory_xact_lock(p_lock_class, p_lock_key);
    SELECT u.disabled, u.blocked, u.blocked_reason, u.otp_locked_until INTO v_user
        FROM users AS u WHERE u.id = p_user_id;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'gone'::text, NULL::timestamptz, NULL::text;
        RETURN;
    END IF;
    IF v_user.disabled THEN
        RETURN QUERY SELECT 'disabled'::text, NULL::timestamptz, NULL::text;
        RETURN;
    END IF;
    IF v_user.blocked THEN
        RETURN QUERY SELECT 'blocked'::text, NULL::timestamptz, v_user.blocked_reason::text;
        RETURN;
    END IF;
    IF v_user.otp_locked_until IS NOT NULL AND v_user.otp_locked_until > p_now THEN
        RETURN QUERY SELECT 'locked-out'::text, v_user.otp_locked_until, NULL::text;
        RETURN;
    END IF;
    IF p_device_id IS NOT NULL THEN
        UPDATE devices SET last_step = p_step, last_used_at = p_now, state = 'active',
            activated_at = COALESCE(activated_at, p_now)
            WHERE id = p_device_id AND state IN ('pending', 'active')
            AND (last_step IS NULL OR last_step < p_step);
        GET DIAGNOSTICS v_claimed = ROW_COUNT;
        IF v_claimed = 1 THEN
            UPDATE users SET otp_failures = 0, last_sign_in_at = p_now WHERE id = p_user_id;
            INSERT INTO audit_events (at, actor, user_name, source, action, result, detail,
                request_id)
                VALUES (p_now, p_actor, p_user_name, p_source, 'otp.verify', 'accept',
                    left(btrim(p_device_id || ' ' || p_where), 1024), p_request_id);
            RETURN QUERY SELECT 'accept'::text, NULL::timestamptz, NULL::text;
            RETURN;
        END IF;
        v_reason := 'replayed';
    END IF;
    -- A code that was valid once is no guess: refused and audited, not counted.
    IF v_reason <> 'replayed' THEN
        UPDATE users SET otp_failures = otp_failures + 1 WHERE id = p_user_id
            RETURNING otp_failures INTO v_failures;
        IF v_failures >= p_max_failures THEN
            UPDATE users SET otp_failures = 0,
                otp_locked_until = p_now + make_interval(secs => p_lockout_seconds)
                WHERE id = p_user_id;
            v_reason := 'locked';
        END IF;
    END IF;
    INSERT INTO audit_events (at, actor, user_name, source, action, result, detail, request_id)
        VALUES (p_now, p_actor, p_user_name, p_source, 'otp.verify', 'reject',
            left(btrim(v_reason || ' ' || p_where), 1024), p_request_id);
    RETURN QUERY SELECT v_reason, NULL::timestamptz, NULL::text;
END
$fn$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(RECORD)


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(
            'DROP FUNCTION IF EXISTS openmfa_otp_record(integer, integer, integer, text, bigint,'
            ' timestamptz, text, integer, integer, text, text, text, text, text)'
        )
