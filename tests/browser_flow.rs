//! The hosted sign-in pages end to end in headless Chromium (Debian's `chromium`, driven by npm
//! `playwright-core`) against the real binary, with a relying party on npm `openid-client`:
//! `tests/browser/flow.mjs` runs the cross-device flow, prompt=none, single sign-on into a
//! confidential client, a wrong secret, logout, the same-device flow after a mail scanner, and the
//! flow without JavaScript. `scripts/setup-clients` installs the browser and the packages; this
//! suite fails, rather than skips, when they are missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::process::{BinaryServer, command};
use latchkey::crypto::api_key_digest;

const SECOND_SECRET: &str = "second-client-secret-for-the-browser-suite";

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chromium() -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("chromium"))
        .find(|candidate| candidate.is_file());
    found.expect("chromium is not installed: run scripts/setup-clients (apt-get install chromium)")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(dir: &Path, port: u16, rp: u16) -> PathBuf {
    let file = dir.join("latchkey.toml");
    let text = format!(
        r#"profile = "development"
issuer = "http://127.0.0.1:{port}"

[sign_in]
product_name = "Acme"

[[oauth.clients]]
client_id = "dev"
name = "Development client"
redirect_uris = ["http://127.0.0.1:{rp}/oauth/callback"]
scopes = ["openid", "email", "profile"]
post_logout_redirect_uris = ["http://127.0.0.1:{rp}/"]

[[oauth.clients]]
client_id = "second"
name = "Second application"
redirect_uris = ["http://127.0.0.1:{rp}/second/callback"]
scopes = ["openid", "email", "profile"]
client_secret_sha256 = "{}"
"#,
        api_key_digest(SECOND_SECRET)
    );
    std::fs::write(&file, text).unwrap();
    file
}

#[test]
fn the_sign_in_pages_work_in_a_real_browser_with_a_certified_relying_party() {
    let browser_dir = repository().join("tests/browser");
    for package in ["playwright-core", "openid-client"] {
        assert!(
            browser_dir
                .join("node_modules")
                .join(package)
                .join("package.json")
                .is_file(),
            "tests/browser/node_modules/{package} is missing: run scripts/setup-clients"
        );
    }
    let chromium = chromium();
    let dir = tempfile::tempdir().unwrap();
    let (port, rp) = (free_port(), free_port());
    let mut start = command(dir.path());
    start.args([
        "serve",
        "--config",
        config(dir.path(), port, rp).to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
        "data",
    ]);
    let server = BinaryServer::spawn(start, dir.path());
    let url = format!("http://127.0.0.1:{port}");
    let output = Command::new("node")
        .arg(browser_dir.join("flow.mjs"))
        .current_dir(&browser_dir)
        .env("LATCHKEY_URL", &url)
        .env("RP_PORT", rp.to_string())
        .env("MAIL_DIR", dir.path().join("data/mail"))
        .env("CHROMIUM", &chromium)
        .env("SECOND_SECRET", SECOND_SECRET)
        .envs(std::env::var_os("SIGN_IN_SCREENSHOTS").map(|dir| ("SCREENSHOTS", dir)))
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the browser flow failed:\n{stdout}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        server.log()
    );
    let last = stdout.lines().last().expect("the flow prints what it saw");
    let seen: serde_json::Value = serde_json::from_str(last).unwrap();
    let secrets = seen["secrets"].as_array().unwrap();
    assert!(secrets.len() >= 10, "emails, link tokens and codes: {secrets:?}");
    let log = server.log();
    for secret in secrets {
        let secret = secret.as_str().unwrap();
        assert!(!log.contains(secret), "the server log holds {secret:?}:\n{log}");
    }
}
