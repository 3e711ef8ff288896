#!/usr/bin/env python3
"""Deterministic ethereum-etl export files of synthetic Ethereum logs.

    generate_logs.py --logs 200000 --seed 1 --out DIR [--logs-per-block 300] [--start-block 18000000]

Writes, in the JSON-lines layout of ethereum-etl 2.4.2 (`json.dumps` of each row, its columns in
its order):
- DIR/logs.json   as `export_receipts_and_logs --logs-output logs.json` writes it:
  log_index, transaction_hash, transaction_index, block_hash, block_number, address, data, topics;
- DIR/blocks.json as `export_blocks_and_transactions --blocks-output blocks.json` writes it
  (model-runner's file source needs the blocks a range covers; ethereum-etl's
  extract_token_transfers reads the logs only);
- DIR/generated.txt: what was generated (key=value lines; not JSON, so no reader takes it for
  chain data).

Exactly --logs logs over consecutive blocks from --start-block, about --logs-per-block each
(+-20 %); every block of the range is in blocks.json, block hashes and parent hashes chain, log
indexes count from 0 in each block, transactions are numbered in order and each emits 1-6 logs.
The log mix and address reuse are described in ../synthetic.py. The same arguments always give
byte-identical files. Hashes, blooms and roots are random-looking, not computed.
"""

import argparse
import collections
import json
import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import synthetic  # noqa: E402

SHA3_UNCLES_EMPTY = "0x1dcc4de8dec75d7aab85b567b6ccd41ad312451b948a7413f0a142fd40d49347"


def block_row(u, block, n_logs):
    rng = random.Random(u.seed * 31 + block["number"])
    word = lambda: "0x%064x" % rng.getrandbits(256)  # noqa: E731
    return {
        "number": block["number"],
        "hash": block["hash"],
        "parent_hash": u.block_hash(block["number"] - 1),
        "nonce": "0x0000000000000000",
        "sha3_uncles": SHA3_UNCLES_EMPTY,
        "logs_bloom": "0x" + "0" * 512,
        "transactions_root": word(),
        "state_root": word(),
        "receipts_root": word(),
        "miner": block["miner"],
        "difficulty": 0,
        "total_difficulty": 58750003716598352816469,
        "size": 1000 + 400 * n_logs,
        "extra_data": "0x",
        "gas_limit": 30000000,
        "gas_used": block["gas_used"],
        "timestamp": block["timestamp"],
        "transaction_count": block["transaction_count"],
        "base_fee_per_gas": 10_000_000_000 + int(rng.random() * 40_000_000_000),
        "withdrawals_root": word(),
        "withdrawals": [],
        "blob_gas_used": 0,
        "excess_blob_gas": 0,
    }


def kind_of(log):
    t = log["topics"]
    if t and t[0] == synthetic.TRANSFER:
        if len(t) == 3 and len(log["data"]) == 66:
            return "erc20_transfer"
        if len(t) == 4:
            return "erc721_transfer"
        return "transfer_other_layout"
    return "other"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--logs", type=int, default=200_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", required=True)
    p.add_argument("--logs-per-block", type=int, default=300)
    p.add_argument("--start-block", type=int, default=18_000_000)
    a = p.parse_args()
    if a.logs < 1 or a.logs_per_block < 1:
        p.error("--logs and --logs-per-block must be positive")
    os.makedirs(a.out, exist_ok=True)
    u = synthetic.Universe(a.seed)
    kinds = collections.Counter()
    written = 0
    number = a.start_block
    with open(os.path.join(a.out, "logs.json"), "w") as lf, open(os.path.join(a.out, "blocks.json"), "w") as bf:
        while written < a.logs:
            block, logs = synthetic.block_logs(u, number, a.logs_per_block)
            logs = logs[: a.logs - written]
            block["transaction_count"] = logs[-1]["transaction_index"] + 1 if logs else 0
            for log in logs:
                lf.write(json.dumps(log) + "\n")
                kinds[kind_of(log)] += 1
            bf.write(json.dumps(block_row(u, block, len(logs))) + "\n")
            written += len(logs)
            number += 1
    end = number - 1
    summary = [
        ("logs", written), ("blocks", end - a.start_block + 1), ("start_block", a.start_block),
        ("end_block", end), ("seed", a.seed), ("logs_per_block", a.logs_per_block),
    ] + sorted(kinds.items())
    with open(os.path.join(a.out, "generated.txt"), "w") as f:
        for k, v in summary:
            f.write("%s=%s\n" % (k, v))
    print(" ".join("%s=%s" % kv for kv in summary))


if __name__ == "__main__":
    main()
