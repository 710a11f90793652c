//! Real traffic between namespaces: echo servers that say when they are bound, clients that
//! report whether an exchange completed, and a long-lived connection to send lines over.
//! Every server is bound before its constructor returns, so a client that starts after it
//! never races the bind.

use std::io::{BufRead, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::lab::Netns;

/// How long a client waits for a connection or an answer: a denied flow costs this much.
const CLIENT_TIMEOUT: Duration = Duration::from_millis(1000);
/// A server that nothing ever reaches gives up after this long, so a failing test ends.
const SERVER_BACKSTOP: Duration = Duration::from_secs(30);

/// A server thread, told to stop and joined when dropped.
struct Serving {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Binds inside `ns` on a new thread, reports the bind (or its error) before serving, and
/// serves with `serve` until it returns or `stop` is set.
fn serve_in<S: Send + 'static>(
    ns: &Netns,
    bind: impl FnOnce() -> std::io::Result<S> + Send + 'static,
    serve: impl FnOnce(S, &AtomicBool) + Send + 'static,
) -> Serving {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let (ready_tx, ready_rx) = mpsc::channel();
    let thread = ns.spawn(move || match bind() {
        Ok(s) => {
            ready_tx.send(Ok(())).unwrap();
            serve(s, &flag);
        }
        Err(e) => ready_tx.send(Err(e)).unwrap(),
    });
    match ready_rx.recv() {
        Ok(Ok(())) => Serving { stop, thread: Some(thread) },
        Ok(Err(e)) => panic!("binding a probe server in {}: {e}", ns.0),
        Err(_) => panic!("the probe server thread in {} died before binding", ns.0),
    }
}

/// A TCP echo and a UDP echo on `ip:port` inside a namespace, each answering one exchange.
/// Dropping it stops it.
pub struct EchoServer {
    _serving: Serving,
}

impl EchoServer {
    pub fn start(ns: &Netns, ip: Ipv4Addr, port: u16) -> EchoServer {
        let bind = move || -> std::io::Result<(TcpListener, UdpSocket)> {
            let tcp = TcpListener::bind((ip, port))?;
            tcp.set_nonblocking(true)?;
            let udp = UdpSocket::bind((ip, port))?;
            udp.set_read_timeout(Some(Duration::from_millis(20)))?;
            Ok((tcp, udp))
        };
        let serving = serve_in(ns, bind, |(tcp, udp), stop| {
            let started = Instant::now();
            let (mut tcp_done, mut udp_done) = (false, false);
            let finished = |tcp_done: bool, udp_done: bool| tcp_done && udp_done;
            while !stop.load(Ordering::Relaxed) && !finished(tcp_done, udp_done) && started.elapsed() < SERVER_BACKSTOP
            {
                if !tcp_done && let Ok((mut conn, _)) = tcp.accept() {
                    let _ = conn.set_nonblocking(false);
                    let _ = conn.set_read_timeout(Some(CLIENT_TIMEOUT * 2));
                    let mut buf = [0u8; 5];
                    if conn.read_exact(&mut buf).is_ok() {
                        let _ = conn.write_all(&buf);
                    }
                    tcp_done = true;
                }
                let mut buf = [0u8; 64];
                if !udp_done && let Ok((n, from)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(&buf[..n], from);
                    udp_done = true;
                }
            }
        });
        EchoServer { _serving: serving }
    }
}

/// From inside `ns`: a TCP exchange and a UDP exchange with `ip:port`; whether each
/// completed.
pub fn talk(ns: &Netns, ip: Ipv4Addr, port: u16) -> (bool, bool) {
    ns.spawn(move || {
        let tcp = TcpStream::connect_timeout(&(ip, port).into(), CLIENT_TIMEOUT).ok().and_then(|mut s| {
            s.set_read_timeout(Some(CLIENT_TIMEOUT)).ok()?;
            s.write_all(b"hello").ok()?;
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).ok()?;
            Some(&buf == b"hello")
        });
        let udp = UdpSocket::bind(("0.0.0.0", 0)).ok().and_then(|s| {
            s.set_read_timeout(Some(CLIENT_TIMEOUT)).ok()?;
            s.send_to(b"ping", (ip, port)).ok()?;
            let mut buf = [0u8; 16];
            let (n, _) = s.recv_from(&mut buf).ok()?;
            Some(&buf[..n] == b"ping")
        });
        (tcp == Some(true), udp == Some(true))
    })
    .join()
    .unwrap()
}

/// [`talk`] from `from` to an echo server started for it in `to`.
pub fn exchange(from: &Netns, to: &Netns, ip: Ipv4Addr, port: u16) -> (bool, bool) {
    let _server = EchoServer::start(to, ip, port);
    talk(from, ip, port)
}

/// A TCP listener inside a namespace accepting (and closing) connections until dropped.
pub struct TcpServer {
    _serving: Serving,
}

impl TcpServer {
    pub fn start(ns: &Netns, ip: Ipv4Addr, port: u16) -> TcpServer {
        TcpServer { _serving: accept_in(ns, ip, port, |_, _| {}) }
    }
}

/// Accepts connections on `ip:port` inside a namespace until dropped, handing each (blocking)
/// with its peer's address to `on_connection`; returns once it listens.
fn accept_in(
    ns: &Netns,
    ip: Ipv4Addr,
    port: u16,
    on_connection: impl Fn(TcpStream, std::net::SocketAddr) + Send + 'static,
) -> Serving {
    let bind = move || {
        let l = TcpListener::bind((ip, port))?;
        l.set_nonblocking(true)?;
        Ok(l)
    };
    serve_in(ns, bind, move |listener, stop| {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((conn, peer)) => {
                    let _ = conn.set_nonblocking(false);
                    on_connection(conn, peer);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    })
}

/// Whether a TCP connection from inside `ns` to `ip:port` is established within `timeout`.
pub fn connects(ns: &Netns, ip: Ipv4Addr, port: u16, timeout: Duration) -> bool {
    ns.spawn(move || TcpStream::connect_timeout(&(ip, port).into(), timeout).is_ok()).join().unwrap_or(false)
}

/// One long-lived TCP connection between two namespaces whose server echoes lines: for
/// checking that an established flow survives something (an agent's restart).
pub struct LineConnection {
    client: TcpStream,
    reader: std::io::BufReader<TcpStream>,
    server: Option<Serving>,
}

impl LineConnection {
    pub fn open(from: &Netns, to: &Netns, ip: Ipv4Addr, port: u16) -> LineConnection {
        let bind = move || TcpListener::bind((ip, port));
        let server = serve_in(to, bind, |listener, _| {
            let Ok((conn, _)) = listener.accept() else { return };
            let Ok(read_half) = conn.try_clone() else { return };
            let mut reader = std::io::BufReader::new(read_half);
            let mut writer = conn;
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                let _ = writer.write_all(line.as_bytes());
                line.clear();
            }
        });
        let client = from
            .spawn(move || TcpStream::connect_timeout(&(ip, port).into(), Duration::from_secs(5)))
            .join()
            .unwrap()
            .expect("the long-lived connection is established");
        client.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let reader = std::io::BufReader::new(client.try_clone().unwrap());
        LineConnection { client, reader, server: Some(server) }
    }

    /// Sends a line and whether the same line came back.
    pub fn round_trip(&mut self, text: &str) -> bool {
        let msg = format!("{text}\n");
        let mut line = String::new();
        self.client.write_all(msg.as_bytes()).is_ok() && self.reader.read_line(&mut line).is_ok() && line == msg
    }
}

impl Drop for LineConnection {
    fn drop(&mut self) {
        let _ = self.client.shutdown(std::net::Shutdown::Both);
        drop(self.server.take());
    }
}

/// A TCP server inside a namespace that tells each client the address it saw the client
/// come from (to tell masqueraded traffic from the rest), until dropped.
pub struct PeerServer {
    _serving: Serving,
}

impl PeerServer {
    pub fn start(ns: &Netns, ip: Ipv4Addr, port: u16) -> PeerServer {
        let tell = |mut conn: TcpStream, peer: std::net::SocketAddr| {
            let _ = conn.write_all(peer.ip().to_string().as_bytes());
        };
        PeerServer { _serving: accept_in(ns, ip, port, tell) }
    }
}

/// From inside `ns`: connects to a [`PeerServer`] at `ip:port` and returns the address it
/// saw, or None when no connection (or no answer) came about.
pub fn seen_as(ns: &Netns, ip: Ipv4Addr, port: u16) -> Option<String> {
    ns.spawn(move || {
        let mut s = TcpStream::connect_timeout(&(ip, port).into(), CLIENT_TIMEOUT).ok()?;
        s.set_read_timeout(Some(CLIENT_TIMEOUT)).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    })
    .join()
    .unwrap()
}
