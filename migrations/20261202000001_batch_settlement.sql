-- x402 batch-settlement: escrow channels (a payer deposits once, pays each
-- call with a cumulative voucher), their deposits, the latest voucher of each
-- channel (one row per channel, moving forward only: per-call updates are
-- coalesced by billing), claims, refunds and sweeps with their transactions,
-- and gas as an expense.

-- Book accounts for the scheme: the payer's deposit is held in its channel's
-- escrow account (a liability: the payer's money), becomes earned as calls
-- are served, and revenue once claimed on chain. Gas is an expense paid from
-- the settler's account, in the chain's native unit.
ALTER TABLE accounts DROP CONSTRAINT accounts_kind_check;
ALTER TABLE accounts ADD CONSTRAINT accounts_kind_check
    CHECK (kind IN ('payer', 'revenue', 'escrow', 'earned', 'settler', 'expense'));

CREATE TABLE channels (
    channel_id          TEXT PRIMARY KEY CHECK (channel_id ~ '^0x[0-9a-f]{64}$'),
    network             TEXT NOT NULL,
    asset               TEXT NOT NULL,
    payer               TEXT NOT NULL,
    payer_authorizer    TEXT NOT NULL,
    receiver            TEXT NOT NULL,
    receiver_authorizer TEXT NOT NULL,
    withdraw_delay      BIGINT NOT NULL CHECK (withdraw_delay > 0),
    salt                TEXT NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TRIGGER channels_append_only BEFORE UPDATE OR DELETE ON channels
    FOR EACH ROW EXECUTE FUNCTION forbid_change();

-- Each channel's running totals; every column only grows (the statements
-- that write it move forward only), so a replayed or stale write is a no-op.
CREATE TABLE channel_states (
    channel_id   TEXT PRIMARY KEY REFERENCES channels (channel_id),
    deposited    NUMERIC(39, 0) NOT NULL DEFAULT 0 CHECK (deposited >= 0),
    refunded     NUMERIC(39, 0) NOT NULL DEFAULT 0 CHECK (refunded >= 0),
    -- The latest stored voucher: its ceiling and signature.
    signed_max   NUMERIC(39, 0) NOT NULL DEFAULT 0,
    signature    TEXT NOT NULL DEFAULT '',
    -- What served calls cost in all; never above the voucher's ceiling.
    charged      NUMERIC(39, 0) NOT NULL DEFAULT 0,
    -- The escrow's totalClaimed for the channel, as last recorded.
    claimed      NUMERIC(39, 0) NOT NULL DEFAULT 0,
    lease_owner  TEXT,
    lease_until  TIMESTAMPTZ,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (charged <= signed_max),
    CHECK (claimed <= charged),
    CHECK (charged + refunded <= deposited)
);
-- The claim queue: channels with charged money not yet claimed.
CREATE INDEX channel_states_due ON channel_states (updated_at) WHERE charged > claimed;

CREATE TABLE channel_deposits (
    request_id    TEXT PRIMARY KEY,
    channel_id    TEXT NOT NULL REFERENCES channels (channel_id),
    amount        NUMERIC(39, 0) NOT NULL CHECK (amount > 0),
    tx_hash       TEXT NOT NULL UNIQUE,
    block_number  BIGINT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE channel_claims (
    id             BIGSERIAL PRIMARY KEY,
    channel_id     TEXT NOT NULL REFERENCES channels (channel_id),
    total_claimed  NUMERIC(39, 0) NOT NULL,
    claimed        NUMERIC(39, 0) NOT NULL CHECK (claimed > 0),
    tx_hash        TEXT NOT NULL,
    block_number   BIGINT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (channel_id, total_claimed)
);
CREATE INDEX channel_claims_channel ON channel_claims (channel_id, total_claimed);

CREATE TABLE channel_refunds (
    channel_id    TEXT NOT NULL REFERENCES channels (channel_id),
    refund_nonce  BIGINT NOT NULL,
    amount        NUMERIC(39, 0) NOT NULL CHECK (amount >= 0),
    tx_hash       TEXT NOT NULL,
    block_number  BIGINT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (channel_id, refund_nonce)
);

CREATE TABLE sweeps (
    id            BIGSERIAL PRIMARY KEY,
    network       TEXT NOT NULL,
    asset         TEXT NOT NULL,
    receiver      TEXT NOT NULL,
    amount        NUMERIC(39, 0) NOT NULL CHECK (amount > 0),
    tx_hash       TEXT NOT NULL UNIQUE,
    block_number  BIGINT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX sweeps_receiver ON sweeps (network, asset, receiver, block_number);

CREATE TABLE gas_spent (
    tx_hash     TEXT PRIMARY KEY,
    network     TEXT NOT NULL,
    payer       TEXT NOT NULL,
    wei         NUMERIC(39, 0) NOT NULL CHECK (wei >= 0),
    purpose     TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TRIGGER channel_deposits_append_only BEFORE UPDATE OR DELETE ON channel_deposits
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER channel_claims_append_only BEFORE UPDATE OR DELETE ON channel_claims
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER channel_refunds_append_only BEFORE UPDATE OR DELETE ON channel_refunds
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER sweeps_append_only BEFORE UPDATE OR DELETE ON sweeps
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER gas_spent_append_only BEFORE UPDATE OR DELETE ON gas_spent
    FOR EACH ROW EXECUTE FUNCTION forbid_change();

-- A voucher-paid call's usage names its channel and the channel's charged
-- total after it (what its receipt shows, and how it finds its claim).
ALTER TABLE usage_records
    ADD COLUMN channel_id TEXT,
    ADD COLUMN cumulative NUMERIC(39, 0);
