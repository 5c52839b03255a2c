-- The double-entry book, in the spirit of TigerBeetle: accounts and immutable
-- transfers, each moving one amount from one account to another, so the sum
-- of all debits equals the sum of all credits at every commit by construction.
-- Payments are two-phase: an authorization books a pending transfer
-- (payer -> revenue); settlement posts it; failure, expiry or voiding voids it.
-- A pending transfer is resolved at most once (unique index below).

CREATE TABLE accounts (
    id          BIGSERIAL PRIMARY KEY,
    -- kind:network:asset[:owner], e.g. payer:eip155:8453:0x8335...:0xabc...
    code        TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL CHECK (kind IN ('payer', 'revenue')),
    -- Transfers never cross assets: both sides carry the same ledger.
    ledger      TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TYPE transfer_kind AS ENUM ('posted', 'pending', 'post_pending', 'void_pending');

CREATE TABLE transfers (
    id              BIGSERIAL PRIMARY KEY,
    -- Deterministic per fact (auth:<request>, settle:<request>, void:<request>):
    -- the same fact can never be booked twice.
    transfer_key    TEXT NOT NULL UNIQUE,
    kind            transfer_kind NOT NULL,
    debit_account   BIGINT NOT NULL REFERENCES accounts (id),
    credit_account  BIGINT NOT NULL REFERENCES accounts (id),
    amount          NUMERIC(39, 0) NOT NULL CHECK (amount > 0),
    pending_id      BIGINT REFERENCES transfers (id),
    request_id      TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (debit_account <> credit_account),
    CHECK ((kind IN ('post_pending', 'void_pending')) = (pending_id IS NOT NULL))
);
CREATE UNIQUE INDEX transfers_resolve_once ON transfers (pending_id) WHERE pending_id IS NOT NULL;
CREATE INDEX transfers_debit ON transfers (debit_account);
CREATE INDEX transfers_credit ON transfers (credit_account);

CREATE TRIGGER transfers_append_only BEFORE UPDATE OR DELETE ON transfers
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER accounts_append_only BEFORE UPDATE OR DELETE ON accounts
    FOR EACH ROW EXECUTE FUNCTION forbid_change();

-- Balances are computed from the transfers, never stored: nothing to drift.
-- posted: 'posted' and 'post_pending' rows; pending: 'pending' rows not yet resolved.
CREATE VIEW account_balances AS
WITH resolved AS (SELECT pending_id FROM transfers WHERE pending_id IS NOT NULL),
moves AS (
    SELECT debit_account AS account, amount AS debit, 0::numeric AS credit, kind, id FROM transfers
    UNION ALL
    SELECT credit_account, 0, amount, kind, id FROM transfers
)
SELECT a.id, a.code, a.kind, a.ledger,
    coalesce(sum(m.debit) FILTER (WHERE m.kind IN ('posted', 'post_pending')), 0) AS debits_posted,
    coalesce(sum(m.credit) FILTER (WHERE m.kind IN ('posted', 'post_pending')), 0) AS credits_posted,
    coalesce(sum(m.debit) FILTER (WHERE m.kind = 'pending' AND m.id NOT IN (SELECT pending_id FROM resolved)), 0) AS debits_pending,
    coalesce(sum(m.credit) FILTER (WHERE m.kind = 'pending' AND m.id NOT IN (SELECT pending_id FROM resolved)), 0) AS credits_pending
FROM accounts a LEFT JOIN moves m ON m.account = a.id
GROUP BY a.id;
