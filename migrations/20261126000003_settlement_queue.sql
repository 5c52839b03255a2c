-- The settlement queue: billing workers claim authorized settlements with a
-- lease (SELECT ... FOR UPDATE SKIP LOCKED), so replicas never take the same
-- one and a crashed worker's claims come back once the lease runs out.
ALTER TABLE settlements
    ADD COLUMN lease_owner TEXT,
    ADD COLUMN lease_until TIMESTAMPTZ;

-- Due work, earliest deadline first.
CREATE INDEX authorizations_deadline ON authorizations (valid_before);
CREATE INDEX settlements_open ON settlements (status) WHERE status IN ('authorized', 'settling');

-- Every recorded transition is announced (on commit) to WatchSettlements.
CREATE FUNCTION notify_settlement_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('settlement_events', json_build_object(
        'request_id', NEW.request_id,
        'status', NEW.status,
        'tx_hash', coalesce(NEW.tx_hash, ''),
        'error', coalesce(NEW.error, ''),
        'at_ms', (extract(epoch FROM NEW.at) * 1000)::bigint)::text);
    RETURN NEW;
END $$;

CREATE TRIGGER settlement_events_notify AFTER INSERT ON settlement_events
    FOR EACH ROW EXECUTE FUNCTION notify_settlement_event();
