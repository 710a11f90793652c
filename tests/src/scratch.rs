//! Scratch directories for a test's certificates, databases and cell state.

use std::path::{Path, PathBuf};

/// A directory removed when dropped; unique per process and per call.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// On Ctrl-C or SIGTERM: removes what this process built (its namespaces, and the
/// [`TempDir`]s it made with any of `prefixes`), then exits with 130.
pub fn clean_up_on_signal(prefixes: &[&str]) {
    let pid = std::process::id();
    let starts: Vec<String> = prefixes.iter().map(|p| format!("{p}-{pid}-")).collect();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        });
        eprintln!("\ninterrupted: cleaning up");
        crate::lab::remove_namespaces();
        for entry in std::fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
            if starts.iter().any(|s| entry.file_name().to_string_lossy().starts_with(s.as_str())) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        std::process::exit(130);
    });
}
