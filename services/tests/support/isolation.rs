//! A database and a RabbitMQ vhost of a test's (or benchmark's) own, for tests that run the
//! `model-runner` processes against the real servers; and running `rabbitmqctl`.

use std::process::Command;
use std::time::Duration;

use sqlx::PgPool;

/// An environment variable that is set and not empty.
pub fn env_url(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The test's database and vhost, dropped at the end (best-effort, also when the test fails).
pub struct Isolation {
    admin_url: String,
    /// The database's name (also the vhost's).
    pub database: String,
    vhost: String,
    /// `DATABASE_URL` with the database's name.
    pub store_url: String,
    /// `AMQP_URL` with the vhost's name.
    pub queue_url: String,
    /// What the messages call it (`chaos`, `bench`); also the prefix of the names.
    label: &'static str,
    dropped: bool,
}

impl Isolation {
    /// A database and a vhost named `<label>_<uuid>`; panics naming the server that cannot be
    /// reached (the variables are set, so the servers MUST be there).
    pub async fn create(label: &'static str, database_url: &str, amqp_url: &str) -> Self {
        let user = amqp_user(amqp_url);
        let broker = amqp_address(amqp_url);
        std::net::TcpStream::connect_timeout(
            &std::net::ToSocketAddrs::to_socket_addrs(&broker)
                .ok()
                .and_then(|mut a| a.next())
                .unwrap_or_else(|| panic!("AMQP_URL names no address: {broker}")),
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| {
            panic!("AMQP_URL is set, so RabbitMQ MUST be reachable at {broker}: {e}")
        });
        let name = format!("{label}_{}", uuid::Uuid::now_v7().simple());
        let admin = PgPool::connect(database_url).await.unwrap_or_else(|e| {
            panic!("DATABASE_URL is set, so PostgreSQL MUST be reachable: {e}")
        });
        // The name is ours: the label and hex digits.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .unwrap_or_else(|e| panic!("creating database {name}: {e}"));
        admin.close().await;
        let this = Self {
            admin_url: database_url.to_owned(),
            store_url: with_path(database_url, &name),
            queue_url: with_path(amqp_url, &name),
            database: name.clone(),
            vhost: name,
            label,
            dropped: false,
        };
        rabbitmqctl(&["add_vhost", &this.vhost])
            .expect("AMQP_URL is set, so RabbitMQ MUST be reachable");
        rabbitmqctl(&[
            "set_permissions",
            "-p",
            &this.vhost,
            &user,
            ".*",
            ".*",
            ".*",
        ])
        .expect("granting the AMQP user the vhost");
        this
    }

    /// Drops the database and the vhost (`CHAOS_KEEP=1` keeps them).
    pub async fn drop_all(mut self) {
        self.dropped = true;
        if std::env::var_os("CHAOS_KEEP").is_some() {
            eprintln!(
                "{}: kept database {} and vhost {} (CHAOS_KEEP)",
                self.label, self.database, self.vhost
            );
            return;
        }
        drop_database(&self.admin_url, &self.database).await;
        if let Err(e) = rabbitmqctl(&["delete_vhost", &self.vhost]) {
            eprintln!("{}: could not delete vhost {}: {e}", self.label, self.vhost);
        }
    }
}

impl Drop for Isolation {
    /// The test failed: drop what it created, from a thread of its own (this one may be
    /// inside the test's runtime).
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        if std::env::var_os("CHAOS_KEEP").is_some() {
            eprintln!(
                "{}: kept database {} and vhost {} (CHAOS_KEEP)",
                self.label, self.database, self.vhost
            );
            return;
        }
        let (admin, database) = (self.admin_url.clone(), self.database.clone());
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(drop_database(&admin, &database)))
        })
        .join();
        if let Err(e) = rabbitmqctl(&["delete_vhost", &self.vhost]) {
            eprintln!("{}: could not delete vhost {}: {e}", self.label, self.vhost);
        }
    }
}

async fn drop_database(admin_url: &str, database: &str) {
    let result = async {
        let admin = PgPool::connect(admin_url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
        )))
        .execute(&admin)
        .await?;
        admin.close().await;
        Ok::<_, sqlx::Error>(())
    }
    .await;
    if let Err(e) = result {
        eprintln!("could not drop database {database}: {e}");
    }
}

/// `url` with its path (database or vhost) replaced by `path`, its query kept.
pub fn with_path(url: &str, path: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_at = base.find("://").expect("a URL with a scheme") + 3;
    let host_end = base[authority_at..]
        .find('/')
        .map_or(base.len(), |i| authority_at + i);
    let mut out = format!("{}/{path}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// `HOST:PORT` of an `amqp://USER:PASS@HOST[:PORT]/VHOST` URL.
pub fn amqp_address(url: &str) -> String {
    let rest = &url[url.find("://").map_or(0, |i| i + 3)..];
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let host = rest.split(['/', '?']).next().unwrap_or(rest);
    if host
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
    {
        host.to_owned()
    } else {
        format!("{host}:5672")
    }
}

/// The user of an `amqp://USER:PASS@HOST/VHOST` URL (RabbitMQ's default `guest` without one).
pub fn amqp_user(url: &str) -> String {
    let rest = &url[url.find("://").map_or(0, |i| i + 3)..];
    match rest.split_once('@') {
        Some((userinfo, _)) => userinfo.split(':').next().unwrap_or("guest").to_owned(),
        None => "guest".to_owned(),
    }
}

/// Runs `rabbitmqctl ARGS` (or `$RABBITMQCTL ARGS`).
pub fn rabbitmqctl(args: &[&str]) -> Result<String, String> {
    let command = std::env::var("RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".to_owned());
    let mut words = command.split_whitespace();
    let program = words.next().ok_or("RABBITMQCTL is empty")?;
    let output = Command::new(program)
        .args(words)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {command} {args:?}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{command} {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}
