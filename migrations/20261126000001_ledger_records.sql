-- Ledger records: payment authorizations, served-call usage and settlements.
-- Policy: migrations are forward-only; a mistake is fixed by a later migration,
-- never by editing or reverting an applied one (money history is never rewritten).

-- Every write carries a client-chosen idempotency key. The first payload wins;
-- replays with the same payload are no-ops, with another payload conflicts.
CREATE TABLE idempotency_keys (
    key         TEXT PRIMARY KEY CHECK (length(key) BETWEEN 1 AND 200),
    payload     BYTEA NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per presented payment. The UNIQUE constraint on
-- (network, asset, payer, nonce) is the server-side replay guard.
CREATE TABLE authorizations (
    id            BIGSERIAL PRIMARY KEY,
    request_id    TEXT NOT NULL UNIQUE,
    network       TEXT NOT NULL,
    asset         TEXT NOT NULL,
    payer         TEXT NOT NULL,
    pay_to        TEXT NOT NULL,
    amount        NUMERIC(39, 0) NOT NULL CHECK (amount >= 0),
    valid_after   NUMERIC(20, 0) NOT NULL,
    valid_before  NUMERIC(20, 0) NOT NULL CHECK (valid_before > valid_after),
    nonce         TEXT NOT NULL,
    signature     TEXT NOT NULL,
    scheme        TEXT NOT NULL,
    x402_version  INTEGER NOT NULL CHECK (x402_version IN (1, 2)),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (network, asset, payer, nonce)
);
CREATE INDEX authorizations_payer ON authorizations (payer, id);

-- One row per served call (free calls too: they have no authorization).
CREATE TABLE usage_records (
    request_id         TEXT PRIMARY KEY,
    model              TEXT NOT NULL,
    prompt_tokens      INTEGER NOT NULL CHECK (prompt_tokens >= 0),
    completion_tokens  INTEGER NOT NULL CHECK (completion_tokens >= 0),
    quoted             NUMERIC(39, 0) NOT NULL CHECK (quoted >= 0),
    charged            NUMERIC(39, 0) NOT NULL CHECK (charged >= 0 AND charged <= quoted),
    engine             TEXT NOT NULL,
    finish_reason      TEXT NOT NULL,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TYPE settlement_status AS ENUM
    ('authorized', 'settling', 'settled', 'failed', 'expired', 'voided');

-- Current state of each authorization's settlement; it only moves forward.
CREATE TABLE settlements (
    request_id    TEXT PRIMARY KEY REFERENCES authorizations (request_id),
    status        settlement_status NOT NULL,
    tx_hash       TEXT,
    block_number  BIGINT,
    attempts      INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error    TEXT,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Every transition, append-only.
CREATE TABLE settlement_events (
    id            BIGSERIAL PRIMARY KEY,
    request_id    TEXT NOT NULL REFERENCES authorizations (request_id),
    status        settlement_status NOT NULL,
    tx_hash       TEXT,
    block_number  BIGINT,
    error         TEXT,
    at            TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX settlement_events_request ON settlement_events (request_id, id);

CREATE FUNCTION forbid_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END $$;

CREATE TRIGGER settlement_events_append_only BEFORE UPDATE OR DELETE ON settlement_events
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER authorizations_append_only BEFORE UPDATE OR DELETE ON authorizations
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER usage_records_append_only BEFORE UPDATE OR DELETE ON usage_records
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
