//! The real `policy-server` binary as a child process, for tests and benchmarks that need
//! it whole (its own fds, memory and log): its addresses are read from its own JSON log
//! lines (`log_format = "json"`), so nothing connects before it listens. Killed on drop.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

pub struct ServerProcess {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    /// `http://<external API>`.
    pub api: String,
    /// `https://<cells' API>`, when the configuration serves it.
    pub internal: Option<String>,
    /// `http://<metrics listener>/metrics`, when the configuration serves it.
    pub metrics: Option<String>,
}

impl ServerProcess {
    /// Starts `binary --config <config>` and waits (up to two minutes) until it logs that
    /// its listeners are up.
    pub fn start(binary: &Path, config: &Path) -> ServerProcess {
        let mut child = Command::new(binary)
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<serde_json::Value>();
        let stderr = child.stderr.take().expect("piped");
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    let _ = tx.send(v);
                }
                lines.lock().expect("log lock").push(line);
            }
        });
        // Optional addresses are logged as `Some(127.0.0.1:4003)`.
        let address = |v: &serde_json::Value, key: &str| {
            let text = v[key].as_str().unwrap_or_default();
            Some(text.strip_prefix("Some(").and_then(|t| t.strip_suffix(')')).unwrap_or(text).to_string())
                .filter(|a| !a.is_empty() && a != "None")
        };
        let mut internal = None;
        loop {
            let v = rx
                .recv_timeout(Duration::from_secs(120))
                .unwrap_or_else(|_| panic!("policy-server did not start: {:?}", log.lock().expect("log lock")));
            match v["message"].as_str().unwrap_or_default() {
                "starting internal server" => internal = address(&v, "listen_address").map(|a| format!("https://{a}")),
                // Logged last, once every listener is bound.
                "starting external server" => {
                    return ServerProcess {
                        child,
                        log,
                        api: format!("http://{}", address(&v, "listen_address").expect("an API address")),
                        internal,
                        metrics: address(&v, "metrics").map(|a| format!("http://{a}/metrics")),
                    };
                }
                _ => {}
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every line the server has logged so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
