//! The real `latchkey` binary as a child process: started on an ephemeral port, its JSON log
//! captured, stopped with SIGTERM or SIGKILL.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

pub struct BinaryServer {
    child: Child,
    pub addr: SocketAddr,
    /// The HTTP port, when it is on.
    pub http_addr: Option<SocketAddr>,
    pub dir: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// How long a start may take before the test gives up (a bound, not a synchronisation sleep).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// `latchkey` followed by these serves on ephemeral ports with its store in `data`.
pub const SERVE_ARGS: [&str; 7] = [
    "serve",
    "--listen",
    "127.0.0.1:0",
    "--metrics-listen",
    "127.0.0.1:0",
    "--data-dir",
    "data",
];

pub fn command(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_latchkey"));
    command
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env("LATCHKEY_LOG__FORMAT", "json")
        .envs(super::store::binary_env(dir))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

impl BinaryServer {
    /// `latchkey serve --listen 127.0.0.1:0 --data-dir data` in `dir`, plus `args` and `env`.
    pub fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = command(dir);
        command.args(SERVE_ARGS).args(args);
        for (key, value) in env {
            command.env(key, value);
        }
        Self::spawn(command, dir)
    }

    pub fn spawn(command: Command, dir: &Path) -> Self {
        Self::spawn_watching(command, dir, "latchkey is serving", mpsc::channel().0)
    }

    /// As `spawn`, and tells `seen` once when a line of the log contains `needle` (which may come
    /// before the server serves: the test can then act while the start waits for it).
    pub fn spawn_watching(mut command: Command, dir: &Path, needle: &'static str, seen: mpsc::Sender<()>) -> Self {
        let mut child = command.spawn().expect("the binary starts");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready, ready_rx) = mpsc::channel();
        let lines = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains(needle) {
                    let _ = seen.send(());
                }
                if line.contains("latchkey is serving") {
                    let parsed: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
                    let listen = parsed["fields"]["listen"]
                        .as_str()
                        .unwrap()
                        .parse::<SocketAddr>()
                        .unwrap();
                    let http = parsed["fields"]["http"]
                        .as_str()
                        .and_then(|a| a.parse::<SocketAddr>().ok());
                    let _ = ready.send((listen, http));
                }
                lines.lock().unwrap().push(line);
            }
        });
        let (addr, http_addr) = match ready_rx.recv_timeout(START_TIMEOUT) {
            Ok(addresses) => addresses,
            Err(_) => {
                let _ = child.kill();
                panic!("the server did not start; its log:\n{}", log.lock().unwrap().join("\n"));
            }
        };
        Self {
            child,
            addr,
            http_addr,
            dir: dir.to_path_buf(),
            log,
            reader: Some(reader),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGKILL: no drain, no final flush.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Waits for the process to exit and for its log to be read to the end.
    pub fn wait(&mut self) -> ExitStatus {
        let status = self.child.wait().unwrap();
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        status
    }

    /// Waits at most `bound` for the process to exit (checking every 20 ms); None if it is still
    /// running then.
    pub fn wait_within(&mut self, bound: Duration) -> Option<ExitStatus> {
        let deadline = std::time::Instant::now() + bound;
        while std::time::Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return Some(self.wait());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for BinaryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
