//! TLS and mutual TLS on the gRPC port, with certificates from a test CA made by openssl: a TLS
//! client that trusts the CA gets in, a plaintext one does not; with `client_ca_file` only a
//! client presenting a certificate from that CA gets in.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::mail::test_certificates;
use common::*;
use latchkey::app::{self, Running};
use latchkey::config::TlsConfig;
use latchkey::domain::clock::ManualClock;
use tonic::transport::{Channel, Endpoint};

async fn start(dir: &tempfile::TempDir, tls: TlsConfig) -> Running {
    let mut config = test_config(dir);
    config.tls = tls;
    let validated = config.validate(dir.path()).expect("valid TLS config");
    app::start(validated, Arc::new(ManualClock::starting_now()))
        .await
        .expect("server starts")
}

async fn tls_channel(running: &Running, ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Channel, String> {
    common::tls_channel(running.local_addr(), ca, identity).await
}

async fn get_jwks(channel: Channel) -> Result<(), tonic::Status> {
    pb::sessions_client::SessionsClient::new(channel)
        .get_jwks(pb::GetJwksRequest {})
        .await
        .map(|_| ())
}

#[tokio::test]
async fn tls_serves_clients_that_trust_the_ca_and_refuses_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let (ca, cert, key) = test_certificates(&certs);
    let running = start(
        &dir,
        TlsConfig {
            cert_file: Some(cert),
            key_file: Some(key),
            client_ca_file: None,
        },
    )
    .await;
    let channel = tls_channel(&running, &ca, None).await.expect("a TLS handshake");
    get_jwks(channel).await.expect("a call over TLS");

    let plaintext = Endpoint::from_shared(format!("http://{}", running.local_addr())).unwrap();
    let refused = match plaintext.connect().await {
        Ok(channel) => get_jwks(channel).await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "plaintext gRPC is not served on a TLS port");
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_from_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (trusted, stranger) = (dir.path().join("trusted"), dir.path().join("stranger"));
    std::fs::create_dir(&trusted).unwrap();
    std::fs::create_dir(&stranger).unwrap();
    let (ca, cert, key) = test_certificates(&trusted);
    let (_, stranger_cert, stranger_key) = test_certificates(&stranger);
    let running = start(
        &dir,
        TlsConfig {
            cert_file: Some(cert.clone()),
            key_file: Some(key.clone()),
            client_ca_file: Some(ca.clone()),
        },
    )
    .await;
    // The server's own leaf doubles as a client certificate: it chains to the trusted CA.
    let channel = tls_channel(&running, &ca, Some((&cert, &key)))
        .await
        .expect("mTLS handshake");
    get_jwks(channel)
        .await
        .expect("a call with a trusted client certificate");

    for identity in [None, Some((stranger_cert.as_path(), stranger_key.as_path()))] {
        let refused = match tls_channel(&running, &ca, identity).await {
            Ok(channel) => get_jwks(channel).await.is_err(),
            Err(_) => true,
        };
        assert!(
            refused,
            "a client without a trusted certificate is refused ({identity:?})"
        );
    }
    running.shutdown().await.unwrap();
}

#[test]
fn tls_config_errors_name_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let check = |tls: TlsConfig| {
        let mut config = test_config(&dir);
        config.tls = tls;
        config.validate(dir.path()).unwrap_err().to_string()
    };
    let missing = dir.path().join("missing.pem");
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let cases = [
        (
            TlsConfig {
                cert_file: Some(missing.clone()),
                key_file: None,
                client_ca_file: None,
            },
            "tls.key_file",
        ),
        (
            TlsConfig {
                cert_file: None,
                key_file: None,
                client_ca_file: Some(missing.clone()),
            },
            "tls.client_ca_file",
        ),
        (
            TlsConfig {
                cert_file: Some(missing.clone()),
                key_file: Some(missing.clone()),
                client_ca_file: None,
            },
            "tls.cert_file",
        ),
        (
            TlsConfig {
                cert_file: Some(not_pem.clone()),
                key_file: Some(not_pem),
                client_ca_file: None,
            },
            "tls.cert_file",
        ),
    ];
    for (tls, key) in cases {
        let error = check(tls);
        assert!(error.contains(key), "{error}");
    }
}
