-- The key broker's records (crates/adyton-kbs/src/store/mod.rs: PolicyRecord, KeyRecord).
--
-- Ids use the "C" collation, so that lists ordered by id come out bytewise, as with every other
-- backend, whatever the database's default collation is.

CREATE TABLE policies (
    id TEXT COLLATE "C" PRIMARY KEY,
    attestation_type TEXT NOT NULL,
    -- The policy table for that TEE (the fields of docs/policy.md).
    policy_table JSONB NOT NULL,
    -- Unix seconds.
    created_at BIGINT NOT NULL CHECK (created_at >= 0)
);

CREATE TABLE keys (
    id TEXT COLLATE "C" PRIMARY KEY,
    -- A policy that keys use cannot be deleted (NO ACTION); the store reports it with a count.
    transfer_policy_id TEXT COLLATE "C" NOT NULL REFERENCES policies (id),
    algorithm TEXT NOT NULL,
    key_length BIGINT NOT NULL CHECK (key_length >= 0 AND key_length <= 4294967295),
    -- Unix seconds.
    created_at BIGINT NOT NULL CHECK (created_at >= 0),
    -- The model key sealed under the master key (an envelope v2 whose key id is `id`).
    sealed_key BYTEA NOT NULL
);

-- The policy-in-use check counts a policy's keys.
CREATE INDEX keys_transfer_policy_id ON keys (transfer_policy_id);
