-- The ABI registry: one JSON ABI per (chain, contract address), validated before it is written.
-- `address` is lowercase 0x-hex, so the primary key orders `abis` listings by chain then address.
-- The ABI is kept as the text registered (the store never queries into it).
CREATE TABLE contract_abis (
    chain text NOT NULL,
    address text NOT NULL,
    abi text NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (chain, address)
);
