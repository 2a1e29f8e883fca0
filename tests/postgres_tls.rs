//! PostgreSQL over TLS, whatever `LATCHKEY_TEST_STORE` says: a database of the test's own that
//! serves TLS only (a plain-text client finds no pg_hba.conf entry), with a certificate for
//! `localhost` alone. With `store.postgres.ca_file` the replica connects, verifies the chain and the
//! host name (libpq's `sslmode=verify-full`) and serves; every other combination is refused at
//! start-up with a message that names the database without its password.

mod common;

use std::path::Path;

use common::mail::test_certificates_for;
use common::process::BinaryServer;
use common::store::Database;
use common::*;
use pb::passwordless_client::PasswordlessClient;

const PASSWORD: &str = "latchkey-test-password";

/// `latchkey serve` on `url` (and `ca_file`, if any) expected to stop at start-up: its stderr.
fn refused_start(dir: &Path, url: &str, ca_file: Option<&Path>) -> String {
    let mut command = common::process::command(dir);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", "data"])
        .env("LATCHKEY_STORE__BACKEND", "postgres")
        .env("LATCHKEY_STORE__POSTGRES__URL", url)
        .env("LATCHKEY_STORE__POSTGRES__CONNECT_TIMEOUT_SECONDS", "3")
        // A certificate refused now is refused later: give up at once rather than wait for it.
        .env("LATCHKEY_STORE__POSTGRES__STARTUP_WAIT_SECONDS", "0");
    if let Some(ca_file) = ca_file {
        command.env("LATCHKEY_STORE__POSTGRES__CA_FILE", ca_file);
    }
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{url} with {ca_file:?} started:\n{stderr}");
    assert!(!stderr.contains(PASSWORD), "the password is in the error:\n{stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_connection_is_tls_with_the_chain_and_host_name_verified() {
    let dir = tempfile::tempdir().unwrap();
    let certificates = tempfile::tempdir().unwrap();
    let (ca, chain, key) = test_certificates_for(certificates.path(), "DNS:localhost");
    let other_ca_dir = tempfile::tempdir().unwrap();
    let (other_ca, _, _) = test_certificates_for(other_ca_dir.path(), "DNS:localhost");
    let pg_dir = tempfile::Builder::new().prefix("latchkey-pg-tls").tempdir().unwrap();
    let (_database, url) = Database::start(
        pg_dir.path().join("cluster"),
        &[("POSTGRES_TLS_CERT", &chain), ("POSTGRES_TLS_KEY", &key)],
    );
    let by_name = url.replace("@127.0.0.1:", "@localhost:");

    // Verified TLS: the only way in, since the database refuses plain text.
    let env = [
        ("LATCHKEY_STORE__BACKEND", "postgres"),
        ("LATCHKEY_STORE__POSTGRES__URL", by_name.as_str()),
        ("LATCHKEY_STORE__POSTGRES__CA_FILE", ca.to_str().unwrap()),
    ];
    let server = BinaryServer::start(dir.path(), &[], &env);
    let mut client = PasswordlessClient::new(connect(server.addr).await);
    let issued = client
        .issue_login_link(issue_request("tls@example.com"))
        .await
        .unwrap()
        .into_inner();
    let verified = client
        .verify_token(pb::VerifyTokenRequest {
            token: token_of(&issued.link),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verified.user.unwrap().email, "tls@example.com");
    assert!(!server.log().contains(PASSWORD), "the password is in the log");
    drop(server);

    // libpq's spelling of the same thing.
    let verify_full = format!("{by_name}?sslmode=verify-full");
    let server = BinaryServer::start(
        dir.path(),
        &[],
        &[
            ("LATCHKEY_STORE__BACKEND", "postgres"),
            ("LATCHKEY_STORE__POSTGRES__URL", verify_full.as_str()),
            ("LATCHKEY_STORE__POSTGRES__CA_FILE", ca.to_str().unwrap()),
        ],
    );
    drop(server);

    // Without a CA file the client does not offer verified TLS and the database turns it away.
    let stderr = refused_start(dir.path(), &by_name, None);
    assert!(
        stderr.contains("cannot reach PostgreSQL at latchkey@localhost:"),
        "{stderr}"
    );
    // The host name is checked: the certificate is for `localhost`, not 127.0.0.1.
    let stderr = refused_start(dir.path(), &url, Some(&ca));
    assert!(
        stderr.contains("cannot reach PostgreSQL at latchkey@127.0.0.1:"),
        "{stderr}"
    );
    assert!(stderr.contains("certificate not valid for name"), "{stderr}");
    // So is the chain: a certificate signed by another CA is refused.
    let stderr = refused_start(dir.path(), &by_name, Some(&other_ca));
    assert!(stderr.contains("invalid peer certificate"), "{stderr}");
    // Asking for TLS without saying whom to trust is a configuration error, named as such.
    let stderr = refused_start(dir.path(), &verify_full, None);
    assert!(
        stderr.contains("sslmode=verify-full") && stderr.contains("ca_file"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_file_refuses_a_database_that_offers_no_tls() {
    let dir = tempfile::tempdir().unwrap();
    let certificates = tempfile::tempdir().unwrap();
    let (ca, _, _) = test_certificates_for(certificates.path(), "DNS:localhost");
    let pg_dir = tempfile::Builder::new().prefix("latchkey-pg-plain").tempdir().unwrap();
    let (_database, url) = Database::start(pg_dir.path().join("cluster"), &[]);
    // The client's default would fall back to plain text; with a CA file it must not.
    let stderr = refused_start(dir.path(), &url.replace("@127.0.0.1:", "@localhost:"), Some(&ca));
    assert!(
        stderr.contains("cannot reach PostgreSQL at latchkey@localhost:"),
        "{stderr}"
    );
}
