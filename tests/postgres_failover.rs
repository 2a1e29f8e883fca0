//! latchkey on a highly available PostgreSQL: etcd and three Patroni-managed PostgreSQL 15 nodes in
//! synchronous mode (scripts/patroni-cluster), two replicas of the real binary on the cluster's
//! multi-host URL (`target_session_attrs=read-write`), a bounded load of IssueLoginLink,
//! VerifyToken and LoginOrCreate, and the primary's postmaster killed with -9 three times.
//!
//! Afterwards nothing acknowledged is lost: every acknowledged link verifies exactly once (or
//! answers TOKEN_ALREADY_USED when its verification was acknowledged), every acknowledged email is
//! delivered, and every call that answered UNAVAILABLE converges when retried with its
//! idempotency key. Health turns back to SERVING after each failover. The write gap per failover
//! (the longest stretch without an acknowledged write around it) is printed.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::mail::eml_files;
use common::process::BinaryServer;
use common::*;
use pb::passwordless_client::PasswordlessClient;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;

const FAILOVERS: usize = 3;
const WORKERS_PER_REPLICA: usize = 3;
/// Each worker's pace: a bounded load, not a benchmark.
const PACE: Duration = Duration::from_millis(15);
/// Writes acknowledged between failovers, so each kill lands in a running load.
const WRITES_BETWEEN: usize = 30;
/// A bound on any one call (its server-side deadline is 3 s), not a measurement.
const NO_HANG: Duration = Duration::from_secs(30);
/// A bound on each wait for the cluster or the load (a failover takes seconds).
const WAIT: Duration = Duration::from_secs(40);

/// The cluster scripts/patroni-cluster runs in `dir`; stopped when dropped.
struct Cluster {
    dir: PathBuf,
}

impl Cluster {
    /// Starts it; returns it and its multi-host URL.
    fn start(dir: PathBuf) -> (Self, String) {
        let cluster = Self { dir };
        let url = cluster.run("start");
        (cluster, url)
    }

    fn run(&self, command: &str) -> String {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/patroni-cluster");
        let output = std::process::Command::new("bash")
            .arg(script)
            .arg(command)
            .arg(&self.dir)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "scripts/patroni-cluster {command}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    }

    /// The node whose Patroni REST API answers 200 to `path` (`/primary`, `/sync`).
    async fn node_answering(&self, path: &str) -> Option<usize> {
        for node in 1..=3 {
            let port: u16 = std::fs::read_to_string(self.dir.join(format!("n{node}/rest_port")))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            if rest_status(port, path).await == Some(200) {
                return Some(node);
            }
        }
        None
    }

    /// SIGKILL to the postmaster of `node`: a crash, no shutdown checkpoint, no goodbye to clients.
    fn kill_postmaster(&self, node: usize) {
        let pid_file = std::fs::read_to_string(self.dir.join(format!("n{node}/data/postmaster.pid"))).unwrap();
        let pid = pid_file.lines().next().unwrap().trim();
        let status = std::process::Command::new("kill")
            .args(["-KILL", pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill -9 {pid}");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.run("stop");
    }
}

/// The HTTP status of GET `path` on a loopback port, or None when nothing answers in time.
async fn rest_status(port: u16, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        // Read to the end (HTTP/1.0: the server closes): a client that hangs up early makes
        // Patroni log a traceback.
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        std::str::from_utf8(response.get(9..12)?).ok()?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), ask).await.ok().flatten()
}

fn login_or_create_request(email: &str) -> pb::LoginOrCreateRequest {
    pb::LoginOrCreateRequest {
        email: email.into(),
        ..Default::default()
    }
}

/// A call that answered UNAVAILABLE, to be retried with the same key and request.
#[derive(Clone, Debug)]
enum Unanswered {
    Issue { key: String, email: String },
    Verify { key: String, token: String },
    LoginOrCreate { key: String, email: String },
}

/// What the load was told.
#[derive(Default)]
struct Ledger {
    /// Acknowledged links not yet verified (by token).
    issued: Vec<String>,
    /// Links whose verification was acknowledged.
    verified: Vec<String>,
    /// Acknowledged emails (their ids).
    emails: Vec<String>,
    unanswered: Vec<Unanswered>,
    /// (started, acknowledged) of every acknowledged write.
    acknowledged: Vec<(Instant, Instant)>,
    /// Verifications retried with their key that answered TOKEN_ALREADY_USED: the first call
    /// committed but its answer was not kept (docs/high-availability.md, "Limit").
    used_on_retry: usize,
}

/// Whether a refusal is one a failover may cause: the store unavailable, or (a repeat) the key's
/// first call still holding it.
fn failover_refusal(status: &Status) -> bool {
    status.code() == Code::Unavailable
        && matches!(reason(status).as_str(), "STORE_UNAVAILABLE" | "IDEMPOTENCY_KEY_IN_USE")
}

/// One worker of the load: issues links, verifies acknowledged ones, and asks for sign-in emails,
/// each call with an idempotency key, until `stop`.
async fn worker(
    name: String,
    mut client: PasswordlessClient<Channel>,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
) {
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = format!("{name}-{n}");
        let email = format!("{name}-{n}@example.com");
        let started = Instant::now();
        let step = n % 3;
        let token = if step == 1 {
            ledger.lock().unwrap().issued.pop()
        } else {
            None
        };
        let (outcome, unanswered) = match (step, token) {
            (1, Some(token)) => {
                let answer = tokio::time::timeout(NO_HANG, client.verify_token(keyed(verify_request(&token), &key)))
                    .await
                    .expect("VerifyToken is bounded");
                let unanswered = Unanswered::Verify {
                    key: key.clone(),
                    token: token.clone(),
                };
                (answer.map(|_| Acknowledged::Verified(token)), unanswered)
            }
            (2, _) => {
                let answer = tokio::time::timeout(
                    NO_HANG,
                    client.login_or_create(keyed(login_or_create_request(&email), &key)),
                )
                .await
                .expect("LoginOrCreate is bounded");
                let unanswered = Unanswered::LoginOrCreate {
                    key: key.clone(),
                    email: email.clone(),
                };
                (
                    answer.map(|answer| Acknowledged::Email(answer.into_inner().email_id)),
                    unanswered,
                )
            }
            _ => {
                let answer = tokio::time::timeout(NO_HANG, client.issue_login_link(keyed(issue_request(&email), &key)))
                    .await
                    .expect("IssueLoginLink is bounded");
                let unanswered = Unanswered::Issue {
                    key: key.clone(),
                    email: email.clone(),
                };
                (
                    answer.map(|answer| Acknowledged::Issued(token_of(&answer.into_inner().link))),
                    unanswered,
                )
            }
        };
        {
            let mut ledger = ledger.lock().unwrap();
            match outcome {
                Ok(acknowledged) => {
                    ledger.acknowledged.push((started, Instant::now()));
                    acknowledged.record(&mut ledger);
                }
                Err(status) if failover_refusal(&status) => ledger.unanswered.push(unanswered),
                Err(status) => panic!("{name}: {unanswered:?} answered {status:?}"),
            }
        }
        tokio::time::sleep(PACE).await;
    }
}

enum Acknowledged {
    Issued(String),
    Verified(String),
    Email(String),
}

impl Acknowledged {
    fn record(self, ledger: &mut Ledger) {
        match self {
            Acknowledged::Issued(token) => ledger.issued.push(token),
            Acknowledged::Verified(token) => ledger.verified.push(token),
            Acknowledged::Email(id) => ledger.emails.push(id),
        }
    }
}

/// Retries an unanswered call with its key and request until it answers something other than a
/// failover refusal; records what it was told.
async fn converge(client: &mut PasswordlessClient<Channel>, call: Unanswered, ledger: &mut Ledger) {
    let started = Instant::now();
    loop {
        // A claim whose own acknowledgement a failover lost is let go of in the background, once
        // the new primary takes writes, within the lease (2 min) (docs/high-availability.md). A
        // repeat waits 20 s per try meanwhile.
        assert!(
            started.elapsed() < Duration::from_secs(150),
            "{call:?} did not converge"
        );
        let answer = match &call {
            Unanswered::Issue { key, email } => client
                .issue_login_link(keyed(issue_request(email), key))
                .await
                .map(|answer| Acknowledged::Issued(token_of(&answer.into_inner().link))),
            Unanswered::Verify { key, token } => match client.verify_token(keyed(verify_request(token), key)).await {
                Ok(_) => Ok(Acknowledged::Verified(token.clone())),
                // The first call's commit made it but its answer was not kept: the documented limit.
                Err(status) if reason(&status) == "TOKEN_ALREADY_USED" => {
                    ledger.used_on_retry += 1;
                    Ok(Acknowledged::Verified(token.clone()))
                }
                Err(status) => Err(status),
            },
            Unanswered::LoginOrCreate { key, email } => client
                .login_or_create(keyed(login_or_create_request(email), key))
                .await
                .map(|answer| Acknowledged::Email(answer.into_inner().email_id)),
        };
        match answer {
            Ok(acknowledged) => return acknowledged.record(ledger),
            Err(status) if failover_refusal(&status) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(status) => panic!("retrying {call:?} answered {status:?}"),
        }
    }
}

/// What the replicas said lately and what the load was told: printed when a wait times out.
fn diagnose(replicas: &[BinaryServer], ledger: &Mutex<Ledger>) -> String {
    let mut said = String::new();
    if let Ok(ledger) = ledger.lock() {
        said += &format!(
            "{} writes acknowledged, {} unanswered\n",
            ledger.acknowledged.len(),
            ledger.unanswered.len()
        );
    }
    for replica in replicas {
        said += &tail(&replica.log(), 15);
    }
    // The cluster's own logs, when it is still there (Patroni's and PostgreSQL's, per node).
    let cluster = replicas
        .first()
        .map(|replica| replica.dir.join("cluster-dir"))
        .and_then(|link| std::fs::read_to_string(link).ok());
    for node in 1..=3 {
        let Some(dir) = cluster
            .as_ref()
            .map(|dir| Path::new(dir.trim()).join(format!("n{node}")))
        else {
            continue;
        };
        let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
        let log: Vec<&str> = log.lines().filter(|line| !line.contains("reset by peer")).collect();
        said += &format!("node {node}:\n{}", tail(&log.join("\n"), 30));
        let rest_port = std::fs::read_to_string(dir.join("rest_port")).unwrap_or_default();
        let state = std::process::Command::new("curl")
            .args(["-s", "--max-time", "2"])
            .arg(format!("http://127.0.0.1:{}/cluster", rest_port.trim()))
            .output()
            .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
            .unwrap_or_default();
        said += &format!("node {node} says: {state}\n");
        let pg_port = std::fs::read_to_string(dir.join("pg_port")).unwrap_or_default();
        let sql = "SELECT pg_is_in_recovery(), current_setting('synchronous_standby_names'); \
                   SELECT application_name, state, sync_state FROM pg_stat_replication; \
                   SELECT wait_event_type, wait_event, state, left(query, 50), count(*) FROM pg_stat_activity \
                   WHERE datname = 'latchkey' GROUP BY 1, 2, 3, 4";
        let activity = std::process::Command::new("su")
            .args(["postgres", "-s", "/bin/sh", "-c"])
            .arg(format!(
                "psql -h '{}' -p {} -d latchkey -c \"{sql}\"",
                dir.display(),
                pg_port.trim()
            ))
            .output()
            .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
            .unwrap_or_default();
        said += &format!("node {node} activity:\n{activity}\n");
    }
    said
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n") + "\n---\n"
}

/// Polls `condition` every 100 ms until it holds; after `bound`, fails with `diagnose`'s report.
async fn within<T>(
    what: &str,
    bound: Duration,
    replicas: &[BinaryServer],
    ledger: &Mutex<Ledger>,
    mut condition: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(value) = condition().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            diagnose(replicas, ledger)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_primary_under_load_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let cluster_dir = tempfile::Builder::new().prefix("latchkey-patroni").tempdir().unwrap();
    let booted = Instant::now();
    let (cluster, url) = Cluster::start(cluster_dir.path().join("cluster"));
    // Where `diagnose` finds the cluster's logs.
    std::fs::write(dir.path().join("cluster-dir"), cluster.dir.display().to_string()).unwrap();
    println!("the cluster booted in {:?}", booted.elapsed());
    let mail_dir = dir.path().join("mail");
    let mail_dir_setting = mail_dir.display().to_string();
    let replicas: Vec<BinaryServer> = ["a", "b"]
        .iter()
        .map(|name| {
            let data_dir = format!("data-{name}");
            let env = [
                ("LATCHKEY_STORE__BACKEND", "postgres"),
                ("LATCHKEY_STORE__POSTGRES__URL", url.as_str()),
                ("LATCHKEY_STORE__POSTGRES__STATEMENT_TIMEOUT_SECONDS", "2"),
                ("LATCHKEY_STORE__POSTGRES__CONNECT_TIMEOUT_SECONDS", "2"),
                ("LATCHKEY_DATA_DIR", data_dir.as_str()),
                ("LATCHKEY_MAIL__FILE_DIR", mail_dir_setting.as_str()),
                // An email claimed by a claim whose acknowledgement a failover lost goes out again
                // once the claim runs out: soon, so that the suite need not wait long for it.
                ("LATCHKEY_MAIL__LEASE_SECONDS", "10"),
            ];
            BinaryServer::start(dir.path(), &[], &env)
        })
        .collect();
    let mut channels = Vec::new();
    for replica in &replicas {
        channels.push(connect(replica.addr).await);
    }

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for (r, channel) in channels.iter().enumerate() {
        for w in 0..WORKERS_PER_REPLICA {
            workers.push(tokio::spawn(worker(
                format!("r{r}w{w}"),
                PasswordlessClient::new(channel.clone()),
                ledger.clone(),
                stop.clone(),
            )));
        }
    }

    let mut kills = Vec::new();
    for failover in 0..FAILOVERS {
        // Each kill lands on a cluster that can fail over (a synchronous standby in place) and a
        // load that is running.
        let writes_before = ledger.lock().unwrap().acknowledged.len();
        let primary = within(
            "a primary with a synchronous standby, and writes acknowledged",
            WAIT,
            &replicas,
            &ledger,
            async || {
                let primary = cluster.node_answering("/primary").await?;
                cluster.node_answering("/sync").await?;
                (ledger.lock().unwrap().acknowledged.len() >= writes_before + WRITES_BETWEEN).then_some(primary)
            },
        )
        .await;
        let killed = Instant::now();
        cluster.kill_postmaster(primary);
        kills.push(killed);
        let new_primary = within("a new primary", WAIT, &replicas, &ledger, async || {
            cluster.node_answering("/primary").await.filter(|node| *node != primary)
        })
        .await;
        for channel in &channels {
            within("health to turn back to SERVING", WAIT, &replicas, &ledger, async || {
                (health(channel.clone()).await == Some(ServingStatus::Serving)).then_some(())
            })
            .await;
        }
        println!(
            "failover {}: node {primary} killed, node {new_primary} primary after {:?}",
            failover + 1,
            killed.elapsed()
        );
    }
    let writes_before = ledger.lock().unwrap().acknowledged.len();
    within(
        "writes acknowledged after the last failover",
        WAIT,
        &replicas,
        &ledger,
        async || (ledger.lock().unwrap().acknowledged.len() >= writes_before + WRITES_BETWEEN).then_some(()),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }

    let mut ledger = Arc::try_unwrap(ledger).ok().unwrap().into_inner().unwrap();
    // The write gap of a failover: the longest stretch without an acknowledged write, from the
    // last one before the kill until the next kill. (Backends of a killed postmaster may still
    // commit for a moment, so the first acknowledgement after the kill does not end the gap.)
    let mut acknowledged: Vec<Instant> = ledger.acknowledged.iter().map(|(_, at)| *at).collect();
    acknowledged.sort();
    for (n, killed) in kills.iter().enumerate() {
        let until = kills.get(n + 1).copied().unwrap_or_else(Instant::now);
        let last_before = acknowledged
            .iter()
            .copied()
            .filter(|at| at < killed)
            .max()
            .unwrap_or(*killed);
        let mut times: Vec<Instant> = vec![last_before];
        times.extend(acknowledged.iter().copied().filter(|at| at >= killed && *at < until));
        let gap = times
            .windows(2)
            .map(|pair| pair[1] - pair[0])
            .max()
            .expect("a write acknowledged after the kill");
        println!("failover {}: write gap {gap:?}", n + 1);
    }
    let unanswered = std::mem::take(&mut ledger.unanswered);
    println!(
        "{} writes acknowledged, {} answered UNAVAILABLE",
        ledger.acknowledged.len(),
        unanswered.len()
    );
    let mut client = PasswordlessClient::new(channels[0].clone());
    for call in unanswered {
        converge(&mut client, call, &mut ledger).await;
    }

    // Every acknowledged link verifies exactly once; every acknowledged verification stands.
    for token in &ledger.issued {
        client
            .verify_token(verify_request(token))
            .await
            .unwrap_or_else(|status| panic!("an acknowledged link does not verify: {status:?}"));
    }
    for token in ledger.issued.iter().chain(&ledger.verified) {
        let again = client.verify_token(verify_request(token)).await;
        assert_error(again, Code::FailedPrecondition, "TOKEN_ALREADY_USED");
    }
    // Every acknowledged email is delivered (the file transport writes `<email_id>.eml`).
    let undelivered = || -> Vec<&String> {
        let ids = ledger.emails.iter();
        ids.filter(|id| !mail_dir.join(format!("{id}.eml")).exists()).collect()
    };
    let waited = Instant::now();
    while !undelivered().is_empty() && waited.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let missing = undelivered();
    if !missing.is_empty() {
        let mut statuses = Vec::new();
        for id in missing.iter().take(5) {
            statuses.push(common::mail::email_status(replicas[0].addr, id).await);
        }
        panic!(
            "{} of {} acknowledged emails not delivered, e.g. {statuses:?}\n{}",
            missing.len(),
            ledger.emails.len(),
            diagnose(&replicas, &Mutex::new(Ledger::default()))
        );
    }
    assert!(!eml_files(&mail_dir).is_empty());
    for replica in &replicas {
        assert!(
            !replica.log().contains("latchkey-test-password"),
            "the database password is in a replica's log"
        );
    }
    println!(
        "{} links verified once, {} verifications stood ({} retried ones found their link used), {} emails delivered",
        ledger.issued.len(),
        ledger.verified.len(),
        ledger.used_on_retry,
        ledger.emails.len()
    );
    drop(cluster);
}
