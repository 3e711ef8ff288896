"""The Celery app and tasks of the peer benchmark (imported by the worker and by bench.py).

Configured from the environment that bench.py sets for one measured row:
PEERS_AMQP_URL (broker), PEERS_PG_DSN (this row's database), PEERS_QUEUE (this row's queue),
PEERS_PREFETCH (worker_prefetch_multiplier), PEERS_SEED, PEERS_LOGS_PER_BLOCK.

Each task does what a production Celery worker of a model does around the model, with the two
state updates committed on their own: UPDATE runs SET state='running' at the start, run the
model, UPDATE runs SET state='succeeded' at the end. Both are compare-and-set on the state.
"""

import os
import sys

import psycopg
from celery import Celery
from celery.signals import worker_process_init, worker_ready

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import synthetic  # noqa: E402

QUEUE = os.environ.get("PEERS_QUEUE", "peers-celery")

app = Celery("peers", broker=os.environ.get("PEERS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"))
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=int(os.environ.get("PEERS_PREFETCH", "1")),
    task_ignore_result=True,  # state lives in PostgreSQL, as in production
    task_default_queue=QUEUE,
    task_default_exchange=QUEUE,
    task_default_routing_key=QUEUE,
    task_serializer="json",
    accept_content=["json"],
    worker_enable_remote_control=False,  # no pidbox queue left behind
    worker_send_task_events=False,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

_conn = None
_universe = None


def _db():
    global _conn
    if _conn is None or _conn.closed:
        _conn = psycopg.connect(os.environ["PEERS_PG_DSN"], autocommit=True)
    return _conn


# Blocks are generated once per pool process: a pool of BLOCK_POOL distinct synthetic blocks,
# block n served by block n % BLOCK_POOL (with its own number), so a task pays for decoding its
# logs and not for Python generating them. Model-runner's benchmark generates its devnet blocks
# inside every run, so this favours Celery.
BLOCK_POOL = int(os.environ.get("PEERS_BLOCK_POOL", "200"))
_blocks = {}


def block_logs(number):
    """The logs of block `number` (from the per-process pool)."""
    key = number % BLOCK_POOL
    logs = _blocks.get(key)
    if logs is None:
        global _universe
        if _universe is None:
            _universe = synthetic.Universe(int(os.environ.get("PEERS_SEED", "1")))
        _, logs = synthetic.block_logs(_universe, key, int(os.environ.get("PEERS_LOGS_PER_BLOCK", "300")))
        _blocks[key] = logs
    return logs


@worker_process_init.connect
def _open(**_):
    """Each pool process connects and generates its block pool before it takes tasks."""
    global _conn
    _conn = None
    _db()
    for n in range(BLOCK_POOL):
        block_logs(n)
    _db().execute("INSERT INTO meta (k) VALUES (%s)", ("process_ready_%d" % os.getpid(),))


@worker_ready.connect
def _ready(**_):
    with psycopg.connect(os.environ["PEERS_PG_DSN"], autocommit=True) as c:
        c.execute("INSERT INTO meta (k) VALUES ('worker_ready') ON CONFLICT DO NOTHING")


def _start(run_id):
    cur = _db().execute(
        "UPDATE runs SET state = 'running', attempt = attempt + 1, started_at = clock_timestamp() "
        "WHERE id = %s AND state IN ('queued', 'running')",
        (run_id,),
    )
    return cur.rowcount == 1


def _finish(run_id, records):
    _db().execute(
        "UPDATE runs SET state = 'succeeded', records = %s, finished_at = clock_timestamp() "
        "WHERE id = %s AND state = 'running'",
        (records, run_id),
    )


@app.task(name="peers.trivial")
def trivial(run_id, block):
    """A one-block run of a trivial model: one tiny record."""
    if not _start(run_id):
        return 0
    record = {"model": "trivial", "block_number": block, "payload": {"n": block, "double": 2 * block}}
    _finish(run_id, 1 if record else 0)
    return 1


def erc20_records(first_block, blocks):
    """The `erc20_transfers` model over synthetic blocks: take each block's logs and decode the
    ERC-20 Transfer logs (topic0 = Transfer, exactly 3 topics, 32 bytes of data) into
    ethereum-etl `token_transfers` rows, as model-runner's erc20_transfers does. The records
    stay in memory (nothing is written: model-runner's benchmark writes them to a sink)."""
    records = []
    for number in range(first_block, first_block + blocks):
        for log in block_logs(number):
            topics = log["topics"]
            data = log["data"]
            if len(topics) != 3 or topics[0] != synthetic.TRANSFER or len(data) != 66:
                continue
            records.append({
                "token_address": log["address"].lower(),
                "from_address": "0x" + topics[1][26:].lower(),
                "to_address": "0x" + topics[2][26:].lower(),
                "value": str(int(data, 16)),
                "transaction_hash": log["transaction_hash"],
                "log_index": log["log_index"],
                "block_number": number,
            })
    return records


@app.task(name="peers.erc20_transfers")
def erc20_transfers(run_id, first_block, blocks):
    """A `blocks`-block run of erc20_transfers over synthetic blocks."""
    if not _start(run_id):
        return 0
    records = erc20_records(first_block, blocks)
    _finish(run_id, len(records))
    return len(records)
