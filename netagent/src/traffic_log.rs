//! Traffic logs, as upstream's `iptables_c2c_logging` / `iptables_asg_logging` with its
//! iptables-logger, but structured: the kernel hands logged packets to netagent over nflog
//! (the rules' `log group` / `NFLOG` with a prefix naming the rule), and netagent writes one
//! JSON line per packet with the addresses, protocol, ports, verdict, the rule that matched,
//! and for each end the container and app behind it (a remote c2c source by its tag).
//!
//! Reading packets is the effect (`NfLog`); turning one into a line is pure (`entry`).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::nflog::{ConfigCmd, ConfigMode, ConfigNla, PacketNla, ULogMessage, config_request};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
use serde_json::{Value, json};

use crate::containers::{Container, ContainerStore};

/// One logged packet as the kernel gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// The rule's prefix (`c2c-accept`, `egress-deny`, ...).
    pub prefix: String,
    pub mark: u32,
    /// The packet from its IPv4 header on.
    pub payload: Vec<u8>,
}

/// What the IPv4 header and the start of the transport header say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headers {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    /// TCP and UDP ports, or ICMP type and code.
    pub a: Option<u16>,
    pub b: Option<u16>,
}

/// Reads the headers; None for anything that is not a well-formed IPv4 packet.
pub fn headers(p: &[u8]) -> Option<Headers> {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    if ihl < 20 || p.len() < ihl {
        return None;
    }
    let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
    let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    let protocol = p[9];
    let l4 = &p[ihl..];
    // A fragment other than the first carries no transport header.
    let first_fragment = u16::from_be_bytes([p[6], p[7]]) & 0x1fff == 0;
    let (a, b) = match protocol {
        6 | 17 if first_fragment && l4.len() >= 4 => {
            (Some(u16::from_be_bytes([l4[0], l4[1]])), Some(u16::from_be_bytes([l4[2], l4[3]])))
        }
        1 if first_fragment && l4.len() >= 2 => (Some(u16::from(l4[0])), Some(u16::from(l4[1]))),
        _ => (None, None),
    };
    Some(Headers { src, dst, protocol, a, b })
}

fn protocol_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        other => other.to_string(),
    }
}

fn container_json(c: &Container) -> Value {
    let meta = |k: &str| c.metadata.as_ref().and_then(|m| m.get(k)).cloned().unwrap_or(Value::Null);
    json!({
        "container_handle": c.handle,
        "app_guid": meta("policy_group_id"),
        "space_guid": meta("space_id"),
        "organization_guid": meta("org_id"),
    })
}

/// The log line for a packet: `containers` by address, `app_of_tag` for a c2c source on
/// another cell. None for a packet that cannot be read.
pub fn entry(
    logged: &Logged,
    containers: &BTreeMap<Ipv4Addr, Container>,
    app_of_tag: impl Fn(u16) -> Option<String>,
    time: f64,
) -> Option<Value> {
    let h = headers(&logged.payload)?;
    let verdict = if logged.prefix.ends_with("accept") { "accept" } else { "deny" };
    let c2c = logged.prefix.starts_with("c2c");
    let mut line = json!({
        "time": time,
        "rule": logged.prefix,
        "verdict": verdict,
        "direction": if c2c { "c2c" } else { "egress" },
        "protocol": protocol_name(h.protocol),
        "src_ip": h.src.to_string(),
        "dst_ip": h.dst.to_string(),
    });
    let fields = line.as_object_mut().expect("an object");
    match h.protocol {
        1 => {
            fields.insert("icmp_type".into(), json!(h.a));
            fields.insert("icmp_code".into(), json!(h.b));
        }
        _ => {
            fields.insert("src_port".into(), json!(h.a));
            fields.insert("dst_port".into(), json!(h.b));
        }
    }
    let source = match containers.get(&h.src) {
        Some(c) => container_json(c),
        // A c2c packet from another cell carries its app's tag as its mark.
        None if c2c && logged.mark != 0 => {
            let tag = u16::try_from(logged.mark).ok();
            json!({"tag": tag.map(|t| format!("{t:04X}")), "app_guid": tag.and_then(&app_of_tag)})
        }
        None => Value::Null,
    };
    fields.insert("source".into(), source);
    fields.insert("destination".into(), containers.get(&h.dst).map(container_json).unwrap_or(Value::Null));
    Some(line)
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot open nflog (is the nfnetlink_log module loaded? are we root?): {0}")]
    Socket(std::io::Error),
    #[error("nflog refused to bind group {0}: {1}")]
    Bind(u16, String),
}

/// An nflog socket bound to one group, in the network namespace of the thread that
/// opened it.
pub struct NfLog {
    socket: Socket,
}

impl NfLog {
    pub fn open(group: u16) -> Result<NfLog, LogError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(LogError::Socket)?;
        socket.bind_auto().map_err(LogError::Socket)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(LogError::Socket)?;
        let fd = std::os::fd::AsFd::as_fd(&socket);
        nix::sys::socket::setsockopt(
            &fd,
            nix::sys::socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(1, 0),
        )
        .map_err(|e| LogError::Socket(e.into()))?;
        // Headers are all a line needs: 128 bytes of each packet.
        let nlas = vec![ConfigNla::Cmd(ConfigCmd::Bind), ConfigNla::Mode(ConfigMode::new_packet(128))];
        let mut msg = config_request(NetfilterProtoFamily::IPv4, group, nlas);
        msg.finalize();
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut buf);
        socket.send(&buf, 0).map_err(LogError::Socket)?;
        let log = NfLog { socket };
        // The ack (or the reason it was refused).
        let mut reply = vec![0u8; 8192];
        let n = log.socket.recv(&mut &mut reply[..], 0).map_err(LogError::Socket)?;
        if let Ok(m) = NetlinkMessage::<NetfilterMessage>::deserialize(&reply[..n])
            && let NetlinkPayload::Error(e) = m.payload
            && let Some(code) = e.code
        {
            return Err(LogError::Bind(group, std::io::Error::from_raw_os_error(-code.get()).to_string()));
        }
        Ok(log)
    }

    /// The packets of the next datagram; empty after a quiet second.
    pub fn next(&self) -> Result<Vec<Logged>, std::io::Error> {
        let mut buf = vec![0u8; 1 << 16];
        let n = match self.socket.recv(&mut &mut buf[..], 0) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Ok(Vec::new());
            }
            // The kernel dropped messages we did not read in time: carry on with the next.
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOBUFS as i32) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        let mut offset = 0;
        while offset < n {
            let Ok(m) = NetlinkMessage::<NetfilterMessage>::deserialize(&buf[offset..n]) else { break };
            let len = m.header.length as usize;
            if len == 0 {
                break;
            }
            offset += (len + 3) & !3;
            if let NetlinkPayload::InnerMessage(NetfilterMessage {
                inner: NetfilterMessageInner::ULog(ULogMessage::Packet(nlas)),
                ..
            }) = m.payload
            {
                let mut logged = Logged { prefix: String::new(), mark: 0, payload: Vec::new() };
                for nla in nlas {
                    match nla {
                        PacketNla::Prefix(p) => logged.prefix = p.to_string_lossy().into_owned(),
                        PacketNla::Mark(m) => logged.mark = m,
                        PacketNla::Payload(p) => logged.payload = p,
                        _ => {}
                    }
                }
                out.push(logged);
            }
        }
        Ok(out)
    }
}

/// Where lines go: appended to `file`, containers looked up in the store (read again only
/// when it changed).
pub struct Writer {
    file: PathBuf,
    store: ContainerStore,
    version: Option<u64>,
    containers: BTreeMap<Ipv4Addr, Container>,
}

impl Writer {
    pub fn new(file: PathBuf, store: ContainerStore) -> Writer {
        Writer { file, store, version: None, containers: BTreeMap::new() }
    }

    fn refresh(&mut self) {
        let version = self.store.version();
        if self.version == Some(version) {
            return;
        }
        if let Ok(all) = self.store.all() {
            self.containers = all.into_values().filter_map(|c| Some((c.ip.parse().ok()?, c))).collect();
            self.version = Some(version);
        }
    }

    /// Appends a line per readable packet; returns how many.
    pub fn write(&mut self, packets: &[Logged], app_of_tag: impl Fn(u16) -> Option<String>) -> std::io::Result<usize> {
        if packets.is_empty() {
            return Ok(0);
        }
        self.refresh();
        if let Some(dir) = self.file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = std::io::BufWriter::new(std::fs::OpenOptions::new().create(true).append(true).open(&self.file)?);
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        let mut lines = 0;
        for p in packets {
            if let Some(line) = entry(p, &self.containers, &app_of_tag, now) {
                writeln!(f, "{line}")?;
                lines += 1;
            }
        }
        f.flush()?;
        Ok(lines)
    }
}

/// Reads the group on a thread of its own until `stopped`; tags are resolved through
/// `sync`'s policies.
pub fn spawn(
    config: &crate::config::TrafficLogs,
    store: ContainerStore,
    sync: Arc<crate::sync::PolicySync>,
    telemetry: Arc<crate::telemetry::Telemetry>,
    stopped: Arc<std::sync::atomic::AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, LogError> {
    let nflog = NfLog::open(config.nflog_group)?;
    let mut writer = Writer::new(config.file.clone(), store);
    let name = format!("{}-log", std::thread::current().name().unwrap_or("netagent"));
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let mut warned = false;
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                match nflog.next() {
                    Ok(packets) => match writer.write(&packets, |t| sync.app_of_tag(t)) {
                        Ok(lines) => telemetry.traffic_log_lines.increment(lines as u64),
                        Err(e) => {
                            if !std::mem::replace(&mut warned, true) {
                                tracing::error!(error = %e, "cannot write the traffic log");
                            }
                        }
                    },
                    Err(e) => {
                        tracing::error!(error = %e, "reading nflog failed; traffic logs stop");
                        return;
                    }
                }
                std::thread::sleep(Duration::ZERO);
            }
        })
        .map_err(LogError::Socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(src: [u8; 4], dst: [u8; 4], protocol: u8, l4: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, protocol, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(l4);
        p
    }

    fn store() -> BTreeMap<Ipv4Addr, Container> {
        let mut meta = serde_json::Map::new();
        meta.insert("policy_group_id".into(), json!("app-b"));
        meta.insert("space_id".into(), json!("space-1"));
        let c =
            Container { handle: "h-b".into(), ip: "10.255.1.3".into(), metadata: Some(meta), ..Container::default() };
        BTreeMap::from([(Ipv4Addr::new(10, 255, 1, 3), c)])
    }

    #[test]
    fn a_c2c_accept_names_both_apps() {
        let logged = Logged {
            prefix: "c2c-accept".into(),
            mark: 1,
            payload: packet([10, 255, 2, 2], [10, 255, 1, 3], 6, &[0x9c, 0x40, 0x1f, 0x90, 0, 0, 0, 0]),
        };
        let line = entry(&logged, &store(), |t| (t == 1).then(|| "app-a".to_string()), 1.5).unwrap();
        assert_eq!(line["verdict"], "accept");
        assert_eq!((line["src_port"].clone(), line["dst_port"].clone()), (json!(40000), json!(8080)));
        assert_eq!(line["source"], json!({"tag": "0001", "app_guid": "app-a"}));
        assert_eq!(line["destination"]["app_guid"], "app-b");
        assert_eq!(line["destination"]["container_handle"], "h-b");
        assert_eq!(line["protocol"], "tcp");
    }

    #[test]
    fn an_egress_deny_and_icmp() {
        let logged = Logged {
            prefix: "egress-deny".into(),
            mark: 0,
            payload: packet([10, 255, 1, 3], [192, 0, 2, 1], 1, &[8, 0, 0, 0]),
        };
        let line = entry(&logged, &store(), |_| None, 0.0).unwrap();
        assert_eq!((line["verdict"].as_str(), line["direction"].as_str()), (Some("deny"), Some("egress")));
        assert_eq!((line["icmp_type"].clone(), line["icmp_code"].clone()), (json!(8), json!(0)));
        assert_eq!(line["source"]["app_guid"], "app-b");
        assert_eq!(line["destination"], Value::Null);
    }

    proptest::proptest! {
        /// Whatever the kernel hands over (it copies at most 128 bytes of any packet).
        #[test]
        fn any_bytes_give_a_line_or_none_never_a_panic(payload in proptest::collection::vec(proptest::num::u8::ANY, 0..160), mark in 0u32..70_000) {
            let logged = Logged { prefix: "c2c-deny".into(), mark, payload };
            let _ = entry(&logged, &store(), |_| Some("app".into()), 0.0);
        }
    }

    #[test]
    fn unreadable_packets_give_no_line_and_never_panic() {
        for bad in [vec![], vec![0x45; 19], vec![0x65; 40], vec![0x4f; 20], packet([1, 1, 1, 1], [2, 2, 2, 2], 6, &[1])]
        {
            let logged = Logged { prefix: "c2c-deny".into(), mark: 0, payload: bad.clone() };
            let line = entry(&logged, &BTreeMap::new(), |_| None, 0.0);
            if let Some(line) = line {
                assert_eq!(line["src_port"], Value::Null, "a short transport header gives no ports: {bad:?}");
            }
        }
        let mut fragment = packet([1, 1, 1, 1], [2, 2, 2, 2], 6, &[0, 80, 0, 80]);
        fragment[7] = 1;
        assert_eq!(headers(&fragment).unwrap().a, None, "a later fragment has no ports");
    }
}
