#!/usr/bin/env python3
"""Diff of ethereum-etl's token_transfers.csv against model-runner's erc20_transfers records.

    compare.py --logs DIR/logs.json --etl token_transfers.csv --runner OUT/dev-ethereum-sink.jsonl

ethereum-etl's extract_token_transfers emits a row for every log whose topic0 is Transfer and whose
topics plus 32-byte data words number four: ERC-20 (3 topics + 1 data word), ERC-721 (4 topics, no
data) and unindexed Transfer layouts (1 topic + 3 data words). model-runner's erc20_transfers emits
ERC-20 only (exactly 3 topics and 32 bytes of data). So each ethereum-etl row is looked up in
logs.json by (block_number, log_index) and only the rows of three-topic logs are compared, exactly:
both sides are normalised to (token, from, to, value, transaction hash, log index, block number),
sorted, and their multiset difference counted. model-runner's sink is at-least-once: its records
are first deduplicated by key (the last line wins, as its readers do).

Prints one summary line of key=value pairs; exits 1 when the diff is not empty.
"""

import argparse
import collections
import csv
import json
import sys


def topic_counts(path):
    counts = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                topics = row["topics"]
                n = len(topics.split(",")) if isinstance(topics, str) and topics else len(topics or [])
                counts[(int(row["block_number"]), int(row["log_index"]))] = n
    return counts


def norm(token, frm, to, value, tx, log_index, block):
    return (token.lower(), frm.lower(), to.lower(), str(int(value)), tx.lower(), int(log_index), int(block))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--logs", required=True)
    p.add_argument("--etl", required=True)
    p.add_argument("--runner", required=True)
    p.add_argument("--show", type=int, default=5, help="diff rows to print per side")
    a = p.parse_args()

    topics = topic_counts(a.logs)
    etl, by_topics = [], collections.Counter()
    with open(a.etl, newline="") as f:
        for r in csv.DictReader(f):
            n = topics.get((int(r["block_number"]), int(r["log_index"])))
            by_topics[n] += 1
            if n == 3:
                etl.append(norm(r["token_address"], r["from_address"], r["to_address"], r["value"],
                                r["transaction_hash"], r["log_index"], r["block_number"]))

    latest, lines = {}, 0
    with open(a.runner) as f:
        for line in f:
            if not line.strip():
                continue
            lines += 1
            rec = json.loads(line)
            k = rec["key"]
            latest[(k["model"], k["chain"], k["block_number"], k["position"])] = rec["payload"]
    runner = [
        norm(r["token_address"], r["from_address"], r["to_address"], r["value"], r["transaction_hash"],
             r["log_index"], r["block_number"])
        for r in latest.values()
    ]

    only_etl = collections.Counter(etl) - collections.Counter(runner)
    only_runner = collections.Counter(runner) - collections.Counter(etl)
    diff = sum(only_etl.values()) + sum(only_runner.values())
    for name, side in (("only in ethereum-etl", only_etl), ("only in model-runner", only_runner)):
        for row in sorted(side)[: a.show]:
            print("%s: %s" % (name, row), file=sys.stderr)
    print("etl_rows=%d etl_three_topic_rows=%d etl_four_topic_rows=%d etl_other_rows=%d "
          "runner_lines=%d runner_rows=%d diff_rows=%d"
          % (sum(by_topics.values()), by_topics[3], by_topics[4],
             sum(v for k, v in by_topics.items() if k not in (3, 4)), lines, len(runner), diff))
    sys.exit(1 if diff else 0)


if __name__ == "__main__":
    main()
