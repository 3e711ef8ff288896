"""Deterministic synthetic Ethereum logs, shared by the peer comparisons.

A block's logs depend only on (seed, block number, mean logs per block), so any block range can
be regenerated on its own: the ethereum-etl generator writes a whole range to files, and the
Celery task regenerates the 100 blocks of its run. Only `random.Random(...).random()` and
`.getrandbits()` are used, whose output is the same on every CPython 3 version.

Log mix (fractions of all logs; the constants are the events' real keccak topics):

| kind                       | topics | data     | share  |
| ERC-20 Transfer            | 3      | 32 bytes | 50 %   |
| ERC-721 Transfer           | 4      | empty    | 8 %    |
| ERC-20 Approval            | 3      | 32 bytes | 12 %   |
| Uniswap-V2 Sync            | 1      | 64 bytes | 10 %   |
| Uniswap-V2 Swap            | 3      | 128 bytes| 10 %   |
| WETH Deposit               | 2      | 32 bytes | 7 %    |
| anonymous event            | 0      | 0-96 B   | 2 %    |
| Transfer, unindexed args   | 1      | 96 bytes | 0.5 %  |  (early-token style; ethereum-etl
| Transfer, malformed data   | 3      | 64 bytes | 0.5 %  |   emits the first, nobody the second)

Addresses are drawn Zipf-like (weight 1/rank^1.1) from a pool of accounts (senders, recipients,
owners) and pools of ERC-20 and ERC-721 contracts, so a few tokens and accounts dominate as on
mainnet. Transfer values mix token-unit amounts (x 10^6, 10^12, 10^18), small integers, zero,
128-bit and full 256-bit numbers, so exact big-integer handling is exercised. 2 % of ERC-20
transfers are mints (from the zero address).
"""

from __future__ import annotations

import bisect
import random

TRANSFER = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
APPROVAL = "0x8c5be1e5ebec7d5bd14f71427d1e84f3dd0314c0f7b2291e5b200ac8c7c3b925"
SYNC = "0x1c411e9a96e071241c2f21f7726b17ae89e3cab4c78be50e062b03a9fffbbad1"
SWAP = "0xd78ad95fa46c994b6551d0da85fc275fe613ce37657fb8d5e3d130840159d822"
DEPOSIT = "0xe1fffcc4923d04b559f4d29a8bfc6cda04eb5b0d3c460751c2402c5c5cc9109c"

ZERO_WORD = "0x" + "0" * 64
ZERO_ADDRESS = "0x" + "0" * 40
MAX_UINT256 = (1 << 256) - 1

# Cumulative shares (per mille) of the log kinds above, in the order of `_KINDS`.
_KINDS = (
    ("erc20", 500),
    ("erc721", 80),
    ("approval", 120),
    ("sync", 100),
    ("swap", 100),
    ("deposit", 70),
    ("anonymous", 20),
    ("transfer_unindexed", 5),
    ("transfer_malformed", 5),
)
_KIND_CUM = []
_acc = 0
for _k, _share in _KINDS:
    _acc += _share
    _KIND_CUM.append(_acc)
assert _acc == 1000


def _hex40(rng: random.Random) -> str:
    return "0x%040x" % rng.getrandbits(160)


def _word(x: int) -> str:
    return "0x%064x" % x


def _addr_word(address: str) -> str:
    return "0x" + "0" * 24 + address[2:]


class _Zipf:
    """Draws from a pool with weight 1/rank^s."""

    def __init__(self, pool: list[str], s: float = 1.1):
        self.pool = pool
        cum, acc = [], 0.0
        for rank in range(1, len(pool) + 1):
            acc += rank ** -s
            cum.append(acc)
        self.cum = cum
        self.total = acc

    def draw(self, rng: random.Random) -> str:
        i = bisect.bisect_left(self.cum, rng.random() * self.total)
        return self.pool[min(i, len(self.pool) - 1)]


class Universe:
    """The address pools of one seed."""

    def __init__(self, seed: int, accounts: int = 50_000, tokens: int = 2_000, nfts: int = 300,
                 pairs: int = 500):
        rng = random.Random(seed)
        self.seed = seed
        self.accounts = _Zipf([_hex40(rng) for _ in range(accounts)])
        self.tokens = _Zipf([_hex40(rng) for _ in range(tokens)])
        self.nfts = _Zipf([_hex40(rng) for _ in range(nfts)])
        self.pairs = _Zipf([_hex40(rng) for _ in range(pairs)])

    def block_rng(self, number: int) -> random.Random:
        return random.Random(self.seed * 1_000_000_007 + number)

    def block_hash(self, number: int) -> str:
        """The hash of block `number` (random, not a real keccak), so a parent is known."""
        return "0x%064x" % random.Random(-(self.seed * 1_000_000_007 + number) - 1).getrandbits(256)


def _value(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.70:
        return (1 + int(rng.random() * 999_999)) * 10 ** (6, 12, 18)[int(rng.random() * 3)]
    if r < 0.90:
        return int(rng.random() * 1_000_000_000)
    if r < 0.92:
        return 0
    if r < 0.99:
        return rng.getrandbits(128)
    return rng.getrandbits(256)


def _log(u: Universe, rng: random.Random, kind: str) -> tuple[str, list[str], str]:
    """(address, topics, data) of one log of `kind`."""
    acct = u.accounts.draw
    if kind == "erc20":
        frm = ZERO_ADDRESS if rng.random() < 0.02 else acct(rng)
        return (u.tokens.draw(rng), [TRANSFER, _addr_word(frm), _addr_word(acct(rng))],
                _word(_value(rng)))
    if kind == "erc721":
        token_id = int(rng.random() * 20_000) if rng.random() < 0.9 else rng.getrandbits(256)
        return (u.nfts.draw(rng),
                [TRANSFER, _addr_word(acct(rng)), _addr_word(acct(rng)), _word(token_id)], "0x")
    if kind == "approval":
        amount = MAX_UINT256 if rng.random() < 0.5 else _value(rng)
        return (u.tokens.draw(rng), [APPROVAL, _addr_word(acct(rng)), _addr_word(acct(rng))],
                _word(amount))
    if kind == "sync":
        return (u.pairs.draw(rng), [SYNC],
                _word(rng.getrandbits(112)) + _word(rng.getrandbits(112))[2:])
    if kind == "swap":
        data = "0x" + "".join(_word(_value(rng) if rng.random() < 0.5 else 0)[2:] for _ in range(4))
        return (u.pairs.draw(rng), [SWAP, _addr_word(acct(rng)), _addr_word(acct(rng))], data)
    if kind == "deposit":
        return (u.tokens.pool[0], [DEPOSIT, _addr_word(acct(rng))], _word(_value(rng)))
    if kind == "anonymous":
        words = int(rng.random() * 4)
        return (acct(rng), [], "0x" + "".join("%064x" % rng.getrandbits(256) for _ in range(words)))
    if kind == "transfer_unindexed":
        data = _addr_word(acct(rng)) + _addr_word(acct(rng))[2:] + _word(_value(rng))[2:]
        return (u.tokens.draw(rng), [TRANSFER], data)
    if kind == "transfer_malformed":
        return (u.tokens.draw(rng), [TRANSFER, _addr_word(acct(rng)), _addr_word(acct(rng))],
                _word(_value(rng)) + "0" * 64)
    raise ValueError(kind)


def block_logs(u: Universe, number: int, mean_logs: int) -> tuple[dict, list[dict]]:
    """One block: (block fields, its logs as ethereum-etl log rows, in log-index order).

    The block has mean_logs +-20 % logs, grouped into transactions of 1-6 logs each; every
    transaction of the block emits at least one log, so `transaction_count` counts only those.
    """
    rng = u.block_rng(number)
    spread = max(1, mean_logs // 5)
    n = max(0, mean_logs - spread + int(rng.random() * (2 * spread + 1))) if mean_logs else 0
    block_hash = u.block_hash(number)
    logs = []
    tx_index = -1
    tx_left = 0
    tx_hash = ""
    for log_index in range(n):
        if tx_left == 0:
            tx_index += 1
            tx_left = 1 + int(rng.random() * 6)
            tx_hash = "0x%064x" % rng.getrandbits(256)
        tx_left -= 1
        i = bisect.bisect_right(_KIND_CUM, int(rng.random() * 1000))
        address, topics, data = _log(u, rng, _KINDS[i][0])
        logs.append({
            "log_index": log_index,
            "transaction_hash": tx_hash,
            "transaction_index": tx_index,
            "block_hash": block_hash,
            "block_number": number,
            "address": address,
            "data": data,
            "topics": topics,
        })
    block = {
        "number": number,
        "hash": block_hash,
        "transaction_count": tx_index + 1,
        "timestamp": 1_700_000_000 + 12 * number,
        "gas_used": 50_000 * n,
        "miner": u.accounts.pool[int(rng.random() * 20)],
    }
    return block, logs
