#!/usr/bin/env python3
"""Writes the seeds of the index_file target (corpus-seeds/index_file/): small shard tables,
partials, layout.json and lookup strings in batch-index's formats (table.rs, reduce.rs,
partial.rs, bitmap_encoding.rs, varint.rs). The first byte of each seed picks the target's mode
(see fuzz_targets/index_file.rs). Run from fuzz/: python3 corpus-seeds/make_index_seeds.py"""
import struct
import zlib

S = "corpus-seeds/index_file"


def varint(v):
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def pref(b):
    return varint(len(b)) + b


def deltas(values):
    body = varint(len(values))
    prev = 0
    for i, v in enumerate(values):
        body += varint(v if i == 0 else v - prev)
        prev = v
    return body


def bitmap_deltas(values):  # tag 0
    return b"\x00" + deltas(values)


def bitmap_deflate(values):  # tag 2: raw deflate of the tag-0 body
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    z = c.compress(deltas(values)) + c.flush()
    return b"\x02" + pref(z)


def bitmap_periodic(count, first, gaps):  # tag 3
    return b"\x03" + varint(count) + varint(first) + varint(len(gaps)) + b"".join(varint(g) for g in gaps)


def table(meta, records, per_block=2):
    body = b""
    blocks = []
    for i in range(0, len(records), per_block):
        off = len(body)
        for k, v in records[i : i + per_block]:
            body += pref(k) + pref(v)
        blocks.append((records[i][0], off, len(body) - off))
    f = pref(meta) + varint(len(records)) + varint(len(blocks))
    for k, o, l in blocks:
        f += pref(k) + varint(o) + varint(l)
    return body + f + struct.pack("<I", len(f)) + b"BIXTBL01"


def write(name, data):
    with open(f"{S}/{name}", "wb") as f:
        f.write(data)


names = [b"all/all", b"all/payments"]
meta = varint(len(names)) + b"".join(pref(n) for n in names)
accounts = [
    (b"GAAZI4TCR3TY5OJHCTJC2A4QSY6CJWJH5IAJTGKIN2ER7LBNVKOCCWN7",
     varint(2) + varint(0) + bitmap_deltas([22033, 22034, 22037]) + varint(1) + bitmap_deltas([22034])),
    (b"GBRPYHIL2CI3FNQ4BXLFMNDLFJUNPU2HY3ZMFSHONUCEOASW7QC7OX2H",
     varint(1) + varint(0) + bitmap_deflate(list(range(22000, 22400, 3)))),
    (b"GCEZWKCA5VLDNRLN3RPRJMRZOX3Z6G5CHCGSNFHEYVXM3XOJMDS674JZ",
     varint(1) + varint(0) + bitmap_periodic(50, 100, [1, 6])),
    (b"0x5aeda56215b167893e80b4fe645ba6d5bab767de", varint(1) + varint(1) + bitmap_deltas([7])),
]
account_table = table(meta, accounts)
write("account_shard", b"\x01" + account_table)
key = accounts[2][0]
write("lookup_account", b"\x00" + bytes([len(key)]) + key + account_table)
txs = [(bytes([i]) * 32, struct.pack(">Q", (1410048 << 32) | (i << 12))) for i in (1, 2, 3)]
tx_table = table(b"", txs)
write("transaction_shard", b"\x02" + tx_table)
write("lookup_transaction", b"\x00" + bytes([32]) + txs[1][0] + tx_table)
partial = b"BIXPART1" + varint(len(names)) + b"".join(pref(n) for n in names) + varint(len(accounts))
for k, v in accounts:
    partial += pref(k) + v
write("accounts_partial", b"\x03" + partial)
write("transactions_partial", b"\x04" + b"BIXTXP01" + varint(len(txs)) + b"".join(k + v for k, v in txs))
write("layout_pointer.json", b"\x05" + b'{"format":"batch-index/2","reduce_job_count":4,"worker_count":2,"generation":"gen-0123456789abcdef"}')
write("layout_legacy.json", b"\x05" + b'{"format":"batch-index/1","reduce_job_count":1,"worker_count":1}')
write("account_stellar", b"\x06" + b"GAAZI4TCR3TY5OJHCTJC2A4QSY6CJWJH5IAJTGKIN2ER7LBNVKOCCWN7")
write("account_muxed", b"\x06" + b"MAAAAAAAAAAAAAB7BQ2L7E5NBWMXDUCMZSIPOBKRDSBYVLMXGSSKF6YNPIB7Y77ITLVL6")
write("account_ethereum", b"\x06" + b"0x5aeda56215b167893e80b4fe645ba6d5bab767de")
write("tx_hash", b"\x06" + b"0x04cbcb236043d8fb7839e07bbc7f5eed692fb2ca55d897f1101eac3e3ad4fab8")
