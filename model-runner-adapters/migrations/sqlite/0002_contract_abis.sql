-- The ABI registry: one JSON ABI per (chain, contract address), validated before it is written.
-- `address` is lowercase 0x-hex, so the primary key orders `abis` listings by chain then address.
CREATE TABLE contract_abis (
    chain TEXT NOT NULL,
    address TEXT NOT NULL,
    abi TEXT NOT NULL,                      -- the JSON ABI as registered
    updated_at INTEGER NOT NULL,            -- microseconds since the Unix epoch
    PRIMARY KEY (chain, address)
) STRICT;
