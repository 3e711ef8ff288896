"""Celery + RabbitMQ + PostgreSQL throughput, the way a production Celery stack runs models.

For each variant (trivial, erc20_transfers) and each prefetch multiplier (1, 4):
  1. a fresh PostgreSQL database with a `runs` table holding one row per task (state 'queued'),
     created before the clock starts, like model-runner's outbox of submitted runs;
  2. a fresh, uniquely named durable queue on RabbitMQ;
  3. ONE `celery worker` process (prefork pool, --concurrency = CPU cores unless given,
     task_acks_late=True, worker_prefetch_multiplier = 1 or 4), started and ready before the clock;
  4. the clock starts at PostgreSQL's clock_timestamp() just before the first publish; TASKS tasks
     are published (persistent messages, Celery's default: no publisher confirms);
  5. each task: UPDATE state='running' (committed), the model, UPDATE state='succeeded' (committed),
     stamping clock_timestamp();
  6. the clock stops at the last task's 'succeeded' commit: max(finished_at).
The queue, its exchange and the database are removed afterwards, also on failure.

Also measured in the same run (--floors): a plain single-row UPDATE loop on PostgreSQL
(one connection, autocommit), the database's per-commit floor.
"""

import argparse
import os
import signal
import subprocess
import sys
import time
import uuid

import kombu
import psycopg

HERE = os.path.dirname(os.path.abspath(__file__))


def load():
    return "%.2f %.2f %.2f" % os.getloadavg()


def redacted(url):
    """The URL without its password."""
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        if ":" in cred:
            return "%s://%s:***@%s" % (scheme, cred.split(":", 1)[0], host)
    return url


def dsn_with_db(url, db):
    """postgres://user@host:port/anything?x -> same with /db."""
    base, _, query = url.partition("?")
    scheme, rest = base.split("://", 1)
    hostpart = rest.split("/", 1)[0]
    return "%s://%s/%s%s" % (scheme, hostpart, db, ("?" + query) if query else "")


class Database:
    """A fresh database, dropped on exit."""

    def __init__(self, admin_url, name):
        self.admin_url = admin_url
        self.name = name
        self.url = dsn_with_db(admin_url, name)

    def __enter__(self):
        with psycopg.connect(self.admin_url, autocommit=True) as c:
            c.execute('CREATE DATABASE "%s"' % self.name)
        return self

    def __exit__(self, *exc):
        with psycopg.connect(self.admin_url, autocommit=True) as c:
            c.execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % self.name)


def create_runs(url, tasks):
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(
            "CREATE TABLE runs (id bigint PRIMARY KEY, state text NOT NULL, attempt int NOT NULL DEFAULT 0,"
            " records int, started_at timestamptz, finished_at timestamptz)"
        )
        c.execute("CREATE TABLE meta (k text PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())")
        c.execute("INSERT INTO runs (id, state) SELECT g, 'queued' FROM generate_series(1, %s) g", (tasks,))
        c.execute("VACUUM ANALYZE runs")


def delete_queue(amqp_url, queue):
    try:
        with kombu.Connection(amqp_url, connect_timeout=5) as conn:
            ch = conn.channel()
            ch.queue_delete(queue)
            ch.exchange_delete(queue)
    except Exception as e:  # cleanup must not hide the measurement's own error
        print("warning: could not delete queue %s: %s" % (queue, type(e).__name__), file=sys.stderr)


def start_worker_cmd(concurrency, prefetch, queue):
    return [
        sys.executable, "-m", "celery", "-A", "tasks", "worker",
        "--loglevel=WARNING", "--pool=prefork", "--concurrency=%d" % concurrency,
        "--prefetch-multiplier=%s" % prefetch, "-Q", queue,
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]


def start_worker(env, concurrency, prefetch, queue, log):
    cmd = start_worker_cmd(concurrency, prefetch, queue)
    return subprocess.Popen(cmd, cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop_worker(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # warm shutdown
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_for(cond, timeout, proc, what, log_path, interval=0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if proc.poll() is not None:
            sys.exit("error: the celery worker exited (%s) while waiting for %s; its log:\n%s"
                     % (proc.returncode, what, open(log_path).read()[-4000:]))
        if time.monotonic() > deadline:
            sys.exit("error: timed out after %ds waiting for %s" % (timeout, what))
        time.sleep(interval)


def measure(args, variant, prefetch):
    tasks_n = args.tasks if variant == "trivial" else args.erc20_tasks
    tag = uuid.uuid4().hex[:10]
    queue = "peers-celery-%s" % tag
    dbname = "peers_celery_%s" % tag
    load_before = load()
    with Database(args.pg_url, dbname) as db:
        create_runs(db.url, tasks_n)
        env = dict(os.environ)
        env.update(PEERS_AMQP_URL=args.amqp_url, PEERS_PG_DSN=db.url, PEERS_QUEUE=queue,
                   PEERS_PREFETCH=str(prefetch), PEERS_SEED=str(args.seed),
                   PEERS_LOGS_PER_BLOCK=str(args.logs_per_block),
                   PEERS_BLOCK_POOL=str(args.block_pool))
        os.environ.update(env)  # tasks.py reads them at import, below
        log_path = os.path.join(args.workdir, "worker-%s.log" % tag)
        proc = None
        try:
            with open(log_path, "w") as log:
                proc = start_worker(env, args.concurrency, prefetch, queue, log)
            sys.path.insert(0, HERE)
            import tasks  # noqa: E402
            tasks.app.conf.broker_url = args.amqp_url
            tasks.app.conf.task_default_queue = queue
            tasks.app.conf.task_default_exchange = queue
            tasks.app.conf.task_default_routing_key = queue
            with psycopg.connect(db.url, autocommit=True) as c:
                ready = ("SELECT count(*) FILTER (WHERE k = 'worker_ready') = 1 AND"
                         " count(*) FILTER (WHERE k LIKE 'process_ready_%%') >= %s FROM meta")
                wait_for(lambda: c.execute(ready, (args.concurrency,)).fetchone()[0],
                         300, proc, "the worker and its pool processes to be ready", log_path)
                task = tasks.trivial if variant == "trivial" else tasks.erc20_transfers
                opts = dict(queue=queue, exchange=queue, routing_key=queue)
                with tasks.app.connection_for_write() as conn:
                    producer = tasks.app.amqp.Producer(conn)
                    # Open the connection before the clock starts.
                    conn.ensure_connection()
                    t0 = c.execute("SELECT clock_timestamp()").fetchone()[0]
                    for run_id in range(1, tasks_n + 1):
                        if variant == "trivial":
                            task.apply_async((run_id, run_id), producer=producer, **opts)
                        else:
                            task.apply_async((run_id, (run_id - 1) * args.run_blocks, args.run_blocks),
                                             producer=producer, **opts)
                    t_pub = c.execute("SELECT clock_timestamp()").fetchone()[0]
                done = lambda: c.execute(  # noqa: E731
                    "SELECT count(*) = %s FROM runs WHERE state = 'succeeded'", (tasks_n,)
                ).fetchone()[0]
                wait_for(done, args.timeout, proc, "%d tasks to succeed" % tasks_n, log_path, 0.25)
                end, records, attempts = c.execute(
                    "SELECT max(finished_at), sum(records), sum(attempt) FROM runs").fetchone()
        finally:
            if proc is not None:
                stop_worker(proc)
            delete_queue(args.amqp_url, queue)
            for name in ("tasks",):
                sys.modules.pop(name, None)
    seconds = (end - t0).total_seconds()
    return dict(variant=variant, prefetch=prefetch, tasks=tasks_n, seconds=seconds,
                rate=tasks_n / seconds, publish=(t_pub - t0).total_seconds(), records=records,
                attempts=attempts, load_before=load_before, load_after=load())


def update_floor(args, rows):
    """Plain single-row UPDATE loop: one connection, autocommit, one row per statement."""
    tag = uuid.uuid4().hex[:10]
    load_before = load()
    with Database(args.pg_url, "peers_floor_%s" % tag) as db:
        create_runs(db.url, rows)
        with psycopg.connect(db.url, autocommit=True) as c:
            t = time.perf_counter()
            for i in range(1, rows + 1):
                c.execute("UPDATE runs SET state = 'succeeded' WHERE id = %s", (i,))
            seconds = time.perf_counter() - t
    return dict(rows=rows, seconds=seconds, rate=rows / seconds, load_before=load_before, load_after=load())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=10_000, help="trivial tasks per row")
    p.add_argument("--erc20-tasks", type=int, default=None,
                   help="erc20_transfers tasks per row (default: --tasks / 10, as model-runner's benchmark)")
    p.add_argument("--variants", default="trivial,erc20_transfers")
    p.add_argument("--prefetch", default="1,4", help="worker_prefetch_multiplier values, one row each")
    p.add_argument("--concurrency", type=int, default=os.cpu_count() or 1,
                   help="prefork pool processes of the one worker (default: CPU cores, %(default)s)")
    p.add_argument("--run-blocks", type=int, default=100, help="blocks per erc20_transfers task")
    p.add_argument("--logs-per-block", type=int, default=300,
                   help="mean synthetic logs per block (default 300: model-runner's devnet default)")
    p.add_argument("--block-pool", type=int, default=200,
                   help="distinct synthetic blocks each worker process generates and cycles through")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=int, default=1800, help="seconds to wait for a row's tasks")
    p.add_argument("--floors", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure the PostgreSQL single-row UPDATE floor")
    p.add_argument("--amqp-url", default=os.environ.get("PEERS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"))
    p.add_argument("--pg-url", default=os.environ.get("PEERS_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres"))
    p.add_argument("--workdir", default=os.environ.get("PEERS_WORKDIR", "/tmp"))
    args = p.parse_args()
    if args.erc20_tasks is None:
        args.erc20_tasks = max(1, args.tasks // 10)

    import celery
    print("celery %s, kombu %s, psycopg %s, Python %s; broker %s; database %s"
          % (celery.__version__, kombu.__version__, psycopg.__version__, sys.version.split()[0],
             redacted(args.amqp_url), redacted(args.pg_url)))
    print("one worker process: prefork pool, concurrency %d (CPU cores: %s), task_acks_late=True:"
          % (args.concurrency, os.cpu_count()))
    print("  python " + " ".join(start_worker_cmd(args.concurrency, "P", "QUEUE")[1:]))
    print("erc20_transfers tasks: %d blocks each, ~%d synthetic logs per block (seed %d, a pool of %d"
          " distinct blocks generated per worker process before it takes tasks)"
          % (args.run_blocks, args.logs_per_block, args.seed, args.block_pool))
    print()
    rows = []
    for variant in args.variants.split(","):
        for prefetch in [int(x) for x in args.prefetch.split(",")]:
            r = measure(args, variant, prefetch)
            rows.append(r)
            print("  measured %s prefetch %d: %.0f tasks/s (load %s -> %s)"
                  % (variant, prefetch, r["rate"], r["load_before"], r["load_after"]), flush=True)
    floor = update_floor(args, args.tasks) if args.floors else None

    print()
    hdr = "| variant | prefetch | tasks | seconds | tasks/s | publish s | records | load before -> after |"
    print(hdr)
    print("|" + "|".join("---" for _ in range(hdr.count("|") - 1)) + "|")
    for r in rows:
        print("| %s | %d | %d | %.2f | %.0f | %.2f | %d | %s -> %s |"
              % ("celery " + r["variant"], r["prefetch"], r["tasks"], r["seconds"], r["rate"],
                 r["publish"], r["records"], r["load_before"], r["load_after"]))
        if r["attempts"] != r["tasks"]:
            print("  note: %d task attempts for %d tasks (redeliveries)" % (r["attempts"], r["tasks"]))
    if floor:
        print()
        print("| floor | rows | seconds | rows/s | load before -> after |")
        print("|---|---|---|---|---|")
        print("| PostgreSQL single-row UPDATE loop (1 connection, autocommit) | %d | %.2f | %.0f | %s -> %s |"
              % (floor["rows"], floor["seconds"], floor["rate"], floor["load_before"], floor["load_after"]))


if __name__ == "__main__":
    main()
