//! A NATS server of the lab's own, inside a namespace (the control plane's), as CF's
//! route-emitter would publish to; stopped when dropped.

use std::process::{Child, Command, Stdio};

use crate::lab::{Netns, eventually};

pub struct NatsServer {
    child: Child,
    ns: String,
}

impl NatsServer {
    /// `nats-server` on 127.0.0.1:4222 inside `ns`; returns once it accepts connections.
    pub fn start(ns: &Netns) -> NatsServer {
        let binary = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("this test needs nats-server: run `bash scripts/setup` or `apt-get install nats-server`");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.0, binary, "-a", "127.0.0.1", "-p", "4222"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        let server = NatsServer { child, ns: ns.path() };
        let path = server.ns.clone();
        eventually("nats-server accepts connections", || {
            let path = path.clone();
            std::thread::spawn(move || {
                crate::lab::enter(&path);
                std::net::TcpStream::connect(("127.0.0.1", 4222)).is_ok()
            })
            .join()
            .unwrap_or(false)
        });
        server
    }

    /// Publishes `payload` on `subject` from inside the server's namespace and waits until
    /// the server has it.
    pub fn publish(&self, subject: &str, payload: &str) {
        let (path, subject, payload) = (self.ns.clone(), subject.to_string(), payload.to_string());
        std::thread::spawn(move || {
            crate::lab::enter(&path);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let client = async_nats::connect("127.0.0.1:4222").await.expect("connect to the lab's NATS");
                client.publish(subject, payload.into()).await.expect("publish");
                client.flush().await.expect("flush");
            })
        })
        .join()
        .unwrap();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
