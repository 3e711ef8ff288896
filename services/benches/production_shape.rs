//! Production-shape throughput: `model-runner enqueuer` and `model-runner worker` as separate
//! processes on a real PostgreSQL and RabbitMQ, next to floors of the same servers measured in
//! the same run.
//!
//! Run with: `DATABASE_URL=postgres://postgres@127.0.0.1:5432/test
//! AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo bench -p model-runner --features
//! postgres,rabbitmq --bench production_shape [-- RUNS [WORKER_CONCURRENCY]]`
//!
//! For each scenario it submits RUNS runs (default 10,000 one-block runs of the trivial
//! `block_stats` on empty devnet blocks, then RUNS/100 100-block runs of `erc20_transfers` on
//! devnet blocks of about 150 transactions and 300 logs) with
//! `model-runner backfill` while no enqueuer runs (so they wait `pending` in the outbox),
//! starts one worker process, then the enqueuer process, and reports runs per second from the
//! moment the enqueuer is started (so its start-up counts) to the last run's `finished_at`.
//! Every run must end `succeeded`. The worker runs WORKER_CONCURRENCY runs at once (default
//! 64; `--concurrency`), with twice as many deliveries prefetched.
//!
//! The floors, measured first on the same servers:
//! - PostgreSQL: a plain single-row `UPDATE` loop (one connection, each statement its own
//!   committed transaction), rows per second: what a runner that commits every state change
//!   of every run alone is bounded by (a run needs three: queued, running, succeeded).
//! - RabbitMQ: lapin publish with confirms (batches of 500 written together, then their
//!   confirms awaited: the enqueuer's way), and consume + ack one by one (prefetch 64),
//!   messages per second.
//!
//! Everything happens in a database and a vhost of its own (`bench_<uuid>`), dropped at the end.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

#[path = "../tests/support/isolation.rs"]
#[allow(dead_code)]
mod isolation;

use isolation::{Isolation, env_url};

const BIN: &str = env!("CARGO_BIN_EXE_model-runner");
/// Devnet blocks of the erc20 scenario: the devnet's defaults (about 150 transactions and
/// 300 logs per block).
const DEVNET: &str = "devnet://?head=100000000";
/// Devnet blocks of the trivial scenario: empty, so the run's cost is the runner's alone.
const DEVNET_EMPTY: &str = "devnet://?head=100000000&txs=0";
const DEADLINE: Duration = Duration::from_secs(600);

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let runs: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let concurrency: u32 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(64);
    let (Some(database_url), Some(amqp_url)) = (env_url("DATABASE_URL"), env_url("AMQP_URL"))
    else {
        eprintln!(
            "production_shape needs DATABASE_URL and AMQP_URL (a PostgreSQL and a RabbitMQ to \
             measure on), e.g. DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
             AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f"
        );
        std::process::exit(2);
    };
    let isolation = Isolation::create("bench", &database_url, &amqp_url).await;
    let tmp = tempfile::Builder::new()
        .prefix("model-runner-bench-")
        .tempdir()
        .unwrap();

    println!(
        "production shape on {} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        Utc::now().format("%Y-%m-%d")
    );
    let update = pg_update_floor(&isolation.store_url, runs).await;
    let (publish, consume) = amqp_floors(&isolation.queue_url, runs).await;
    println!("floor  PostgreSQL single-row UPDATE loop  {update:>10.0} rows/s");
    println!("floor  RabbitMQ publish with confirms      {publish:>10.0} msgs/s");
    println!("floor  RabbitMQ consume + ack              {consume:>10.0} msgs/s");

    let bench = Bench {
        dir: tmp.path(),
        store_url: &isolation.store_url,
        queue_url: &isolation.queue_url,
        concurrency,
    };
    let migrate = bench
        .command(DEVNET, "migrate", &["migrate"])
        .status()
        .unwrap();
    assert!(
        migrate.success(),
        "migrate failed; see {}",
        tmp.path().display()
    );
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&isolation.store_url)
        .await
        .unwrap();
    let trivial = bench
        .scenario(&pool, DEVNET_EMPTY, "block_stats", runs, 1, 0)
        .await;
    println!(
        "runner {:>6} one-block block_stats runs       {:>7.2} s {:>10.0} runs/s  ({:.1}x the UPDATE floor / 3)",
        runs,
        trivial.seconds,
        trivial.runs_per_second,
        trivial.runs_per_second / (update / 3.0)
    );
    let erc_runs = (runs / 100).max(1);
    let erc = bench
        .scenario(&pool, DEVNET, "erc20_transfers", erc_runs, 100, runs)
        .await;
    println!(
        "runner {:>6} 100-block erc20_transfers runs  {:>7.2} s {:>10.0} runs/s {:>10.0} blocks/s",
        erc_runs,
        erc.seconds,
        erc.runs_per_second,
        erc.runs_per_second * 100.0
    );
    pool.close().await;
    isolation.drop_all().await;
}

struct Measured {
    seconds: f64,
    runs_per_second: f64,
}

struct Bench<'a> {
    dir: &'a Path,
    store_url: &'a str,
    queue_url: &'a str,
    concurrency: u32,
}

impl Bench<'_> {
    /// `model-runner` with the store, queue, chain and sink flags, logging to `<name>.log`.
    fn command(&self, devnet: &str, name: &str, args: &[&str]) -> Command {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let mut command = Command::new(BIN);
        command
            .arg("--store")
            .arg(self.store_url)
            .arg("--queue")
            .arg(self.queue_url)
            .arg("--chain")
            .arg(format!("ethereum={devnet}"))
            .arg("--sink")
            .arg(format!("file://{}", self.dir.join("sink").display()))
            .arg("--env")
            .arg("bench")
            .args(args)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("MODEL_RUNNER_") {
                command.env_remove(key);
            }
        }
        command
    }

    /// Submits `runs` runs of `run_blocks` blocks of `model` from block `first` (the outbox
    /// holds them: no enqueuer runs), starts a worker, then the enqueuer, and waits for every
    /// run to succeed.
    async fn scenario(
        &self,
        pool: &PgPool,
        devnet: &str,
        model: &str,
        runs: u64,
        run_blocks: u64,
        first: u64,
    ) -> Measured {
        let spec = format!("ethereum:{model}:{first}-{}", first + runs * run_blocks - 1);
        let submitted = self
            .command(
                devnet,
                &format!("backfill-{model}"),
                &["backfill", &spec, "--chunk-size", &run_blocks.to_string()],
            )
            .status()
            .unwrap();
        assert!(
            submitted.success(),
            "backfill {spec} failed; see the log in {}",
            self.dir.display()
        );
        let pending = count(pool, model, "pending").await;
        assert_eq!(pending, runs as i64, "the backfill created {pending} runs");

        let concurrency = self.concurrency.to_string();
        let mut worker = Guard(
            self.command(
                devnet,
                &format!("worker-{model}"),
                &[
                    "worker",
                    "--queues",
                    "ethereum_backfill_nonreads",
                    "--concurrency",
                    &concurrency,
                ],
            )
            .spawn()
            .unwrap(),
        );
        // The worker is consuming once RabbitMQ lists its consumer on the queue.
        let ready = Instant::now();
        while !consuming(self.queue_url, "ethereum_backfill_nonreads").await {
            assert!(
                ready.elapsed() < Duration::from_secs(30),
                "the worker did not start consuming; see {}",
                self.dir.display()
            );
            assert!(
                worker.0.try_wait().unwrap().is_none(),
                "the worker exited; see {}",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let started: DateTime<Utc> = Utc::now();
        let mut enqueuer = Guard(
            self.command(devnet, &format!("enqueuer-{model}"), &["enqueuer"])
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + DEADLINE;
        loop {
            let done = count(pool, model, "succeeded").await;
            if done == runs as i64 {
                break;
            }
            let failed = count(pool, model, "failed").await;
            assert_eq!(
                failed,
                0,
                "runs failed; see the logs in {}",
                self.dir.display()
            );
            assert!(
                worker.0.try_wait().unwrap().is_none(),
                "the worker exited; see {}",
                self.dir.display()
            );
            assert!(
                enqueuer.0.try_wait().unwrap().is_none(),
                "the enqueuer exited; see {}",
                self.dir.display()
            );
            assert!(
                Instant::now() < deadline,
                "{done} of {runs} runs succeeded within {DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let last: DateTime<Utc> = sqlx::query_scalar(
            "SELECT max(finished_at) FROM run_states WHERE model = $1 AND state = 'succeeded'",
        )
        .bind(model)
        .fetch_one(pool)
        .await
        .unwrap();
        enqueuer.stop();
        worker.stop();
        let seconds = (last - started).num_microseconds().unwrap() as f64 / 1e6;
        Measured {
            seconds,
            runs_per_second: runs as f64 / seconds,
        }
    }
}

async fn count(pool: &PgPool, model: &str, state: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM run_states WHERE model = $1 AND state = $2")
        .bind(model)
        .bind(state)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Whether `queue` has a consumer (a passive declare reports the count).
async fn consuming(queue_url: &str, queue: &str) -> bool {
    let Ok(connection) = Connection::connect(queue_url, ConnectionProperties::default()).await
    else {
        return false;
    };
    let Ok(channel) = connection.create_channel().await else {
        return false;
    };
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    let _ = connection.close(200, "bye".into()).await;
    declared.is_ok_and(|q| q.consumer_count() > 0)
}

/// A child process, SIGTERMed and waited for on `stop`, killed if dropped before.
struct Guard(Child);

impl Guard {
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Rows per second of a single-row UPDATE loop, each its own committed transaction.
async fn pg_update_floor(url: &str, rows: u64) -> f64 {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE floor (id bigint PRIMARY KEY, state text NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO floor SELECT g, 'pending' FROM generate_series(1, $1) g")
        .bind(rows as i64)
        .execute(&pool)
        .await
        .unwrap();
    let mut connection = pool.acquire().await.unwrap();
    let t = Instant::now();
    for id in 1..=rows as i64 {
        sqlx::query("UPDATE floor SET state = 'done' WHERE id = $1")
            .bind(id)
            .execute(&mut *connection)
            .await
            .unwrap();
    }
    let rate = rows as f64 / t.elapsed().as_secs_f64();
    drop(connection);
    sqlx::query("DROP TABLE floor")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    rate
}

/// Messages per second of lapin publishing with confirms (batches of 500 written together,
/// then confirmed) and of consuming them with one ack each.
async fn amqp_floors(url: &str, messages: u64) -> (f64, f64) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let queue = "floor";
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let payload = br#"{"run_id":"0190a7c2-4a5e-7c3b-9d1e-2f3a4b5c6d7e","attempt":1}"#;
    let t = Instant::now();
    let mut sent = 0;
    while sent < messages {
        let batch = (messages - sent).min(500);
        let mut confirms = Vec::with_capacity(batch as usize);
        for _ in 0..batch {
            confirms.push(
                channel
                    .basic_publish(
                        "".into(),
                        queue.into(),
                        BasicPublishOptions::default(),
                        payload,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                    .unwrap(),
            );
        }
        for confirm in confirms {
            assert!(confirm.await.unwrap().is_ack());
        }
        sent += batch;
    }
    let publish = messages as f64 / t.elapsed().as_secs_f64();

    let consumer_channel = connection.create_channel().await.unwrap();
    consumer_channel
        .basic_qos(64, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = consumer_channel
        .basic_consume(
            queue.into(),
            "floor".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let t = Instant::now();
    for _ in 0..messages {
        let delivery = consumer.next().await.unwrap().unwrap();
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    let consume = messages as f64 / t.elapsed().as_secs_f64();
    let _ = connection.close(200, "bye".into()).await;
    (publish, consume)
}
