//! netagent as an operator runs it: the real binary, its own process, a configuration file,
//! inside a cell's network namespace and a private mount namespace whose `/var/vcap` is a
//! fresh tmpfs (so the default `state_dir` can be used without touching the host). The CNI
//! plugin runs in the same namespaces, as a runtime on that cell would. Mounts made after
//! the agent starts do not reach its mount namespace: create the containers' network
//! namespaces first.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cni::{Invocation, Outcome};
use crate::lab::Netns;

/// A running netagent process; killed when dropped.
pub struct AgentProcess {
    child: Child,
    cell: String,
}

impl AgentProcess {
    /// Starts `netagent --config <config>` in `cell`. `path` replaces `PATH` for netagent
    /// (e.g. to take `nft` away). Returns once its local API answers on `listen`.
    pub fn start(cell: &Netns, config: &Path, path: Option<&str>, listen: &str) -> AgentProcess {
        let binary = crate::bins::path("netagent");
        let script = format!(
            "mount --make-rprivate / && mkdir -p /var/vcap && mount -t tmpfs tmpfs /var/vcap && exec env {} {} --config {}",
            path.map(|p| format!("PATH={p}")).unwrap_or_default(),
            binary.display(),
            config.display()
        );
        let child = Command::new("ip")
            .args(["netns", "exec", &cell.0, "unshare", "--mount", "sh", "-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting netagent");
        let agent = AgentProcess { child, cell: cell.0.clone() };
        let url = format!("http://{listen}/health");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let up = cell.run({
                let url = url.clone();
                move || async move { reqwest::get(url).await.is_ok() }
            });
            if up {
                return agent;
            }
            assert!(Instant::now() < deadline, "netagent did not answer on {listen}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The launcher that enters the agent's network and mount namespaces.
    fn launcher(&self) -> Vec<String> {
        let pid = self.child.id().to_string();
        ["nsenter", "--target", &pid, "--mount", "--net"].map(str::to_string).to_vec()
    }

    /// Runs the real `c2c-cni` beside the agent.
    pub fn cni(&self, call: &Invocation) -> Outcome {
        let launcher = self.launcher();
        let launcher: Vec<&str> = launcher.iter().map(String::as_str).collect();
        crate::cni::run_with(&launcher, &crate::cni::c2c_cni(), call)
    }

    /// Whether `path` exists in the agent's mount namespace.
    pub fn exists(&self, path: &str) -> bool {
        let pid = self.child.id().to_string();
        Command::new("nsenter")
            .args(["--target", &pid, "--mount", "test", "-e", path])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// A file's content in the agent's mount namespace.
    pub fn read(&self, path: &str) -> String {
        let pid = self.child.id().to_string();
        let out = Command::new("nsenter").args(["--target", &pid, "--mount", "cat", path]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn cell(&self) -> &str {
        &self.cell
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
