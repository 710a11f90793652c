//! The DNS responder containers ask (upstream: BOSH DNS with bosh-dns-adapter at
//! 169.254.0.2). Internal names are answered from the discovery table; other names go to
//! the cell's resolvers or are refused. hickory does the wire format and the serving; the
//! answer itself is [`Answer::of`], a pure function of the table and the question.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{Catalog, MessageResponseBuilder};
use rand::seq::SliceRandom;

use super::table::{Lookup, Table};
use super::{DiscoveryConfig, Forward};

/// The table the follower keeps current, shared with the responder.
pub type SharedTable = Arc<RwLock<Arc<Table>>>;

/// What a question gets.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// A records (in the table's order; shuffled when sent).
    Addresses(Vec<Ipv4Addr>),
    /// The name exists but has no record of the asked type.
    NoData,
    NxDomain,
    /// Not ours: forward or refuse.
    Elsewhere,
}

impl Answer {
    pub fn of(table: &Table, name: &str, kind: RecordType) -> Answer {
        match table.lookup(name) {
            Lookup::Found(ips) if kind == RecordType::A || kind == RecordType::ANY => Answer::Addresses(ips.to_vec()),
            Lookup::Found(_) | Lookup::Apex => Answer::NoData,
            Lookup::Unknown => Answer::NxDomain,
            Lookup::External => Answer::Elsewhere,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResponderError {
    #[error(
        "cannot read {path}: {source}; set discovery.forward = \"refuse\" or point discovery.resolv_conf_file at the cell's resolvers"
    )]
    ResolvConf { path: String, source: std::io::Error },
    #[error("{path} names no usable nameserver: {reason}")]
    Nameservers { path: String, reason: String },
    #[error("cannot listen for DNS on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
}

pub struct Responder {
    table: SharedTable,
    ttl: u32,
    forward: Option<Catalog>,
}

impl Responder {
    pub fn new(config: &DiscoveryConfig, table: SharedTable) -> Result<Responder, ResponderError> {
        let forward = match config.forward {
            Forward::Refuse => None,
            Forward::ResolvConf => Some(forwarder(config)?),
        };
        Ok(Responder { table, ttl: config.ttl_secs, forward })
    }

    /// Serves on `config.listen:port`, UDP and TCP, until the future is dropped.
    pub async fn serve(self, config: &DiscoveryConfig) -> Result<hickory_server::Server<Responder>, ResponderError> {
        let addr = SocketAddr::from((config.listen, config.port));
        let listen = |source| ResponderError::Listen { addr, source };
        let udp = tokio::net::UdpSocket::bind(addr).await.map_err(listen)?;
        let tcp = tokio::net::TcpListener::bind(addr).await.map_err(listen)?;
        Ok(self.serve_on(udp, tcp))
    }

    /// Serves on sockets bound by the caller.
    pub fn serve_on(
        self,
        udp: tokio::net::UdpSocket,
        tcp: tokio::net::TcpListener,
    ) -> hickory_server::Server<Responder> {
        let mut server = hickory_server::Server::new(self);
        server.register_socket(udp);
        // A TCP client gets 5 s per message; answers are at most 64 KiB, as DNS over TCP allows.
        server.register_listener(tcp, Duration::from_secs(5), 65_535);
        server
    }
}

/// A forwarding catalog for the root, to the resolvers of the cell's resolv.conf (without
/// the responder itself, which would loop).
fn forwarder(config: &DiscoveryConfig) -> Result<Catalog, ResponderError> {
    use hickory_server::store::forwarder::{ForwardConfig, ForwardZoneHandler};
    let path = config.resolv_conf_file.display().to_string();
    let text = std::fs::read(&config.resolv_conf_file)
        .map_err(|source| ResponderError::ResolvConf { path: path.clone(), source })?;
    let (resolv, _) = hickory_resolver::system_conf::parse_resolv_conf(text)
        .map_err(|e| ResponderError::Nameservers { path: path.clone(), reason: e.to_string() })?;
    let own = IpAddr::V4(config.listen);
    let name_servers: Vec<_> = resolv.name_servers().iter().filter(|ns| ns.ip != own).cloned().collect();
    if name_servers.is_empty() {
        return Err(ResponderError::Nameservers { path, reason: "none besides the responder itself".into() });
    }
    let handler = ForwardZoneHandler::builder_tokio(ForwardConfig { name_servers, options: None })
        .build()
        .map_err(|reason| ResponderError::Nameservers { path, reason })?;
    let mut catalog = Catalog::new();
    catalog.upsert(Name::root().into(), vec![Arc::new(handler)]);
    Ok(catalog)
}

#[async_trait::async_trait]
impl RequestHandler for Responder {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, mut response: R) -> ResponseInfo {
        let builder = || MessageResponseBuilder::from_message_request(request);
        let refuse = |code| builder().error_msg(&request.metadata, code);
        let info = match request.request_info() {
            Ok(info) if request.metadata.op_code == OpCode::Query => info,
            Ok(_) => return send(&mut response, refuse(ResponseCode::NotImp), request).await,
            Err(_) => return send(&mut response, refuse(ResponseCode::FormErr), request).await,
        };
        let name: Name = info.query.name().into();
        let answer = {
            let table = self.table.read().unwrap_or_else(|e| e.into_inner()).clone();
            Answer::of(&table, &name.to_ascii(), info.query.query_type())
        };
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        metadata.recursion_available = self.forward.is_some();
        match answer {
            Answer::Elsewhere => match &self.forward {
                Some(catalog) => catalog.handle_request::<R, T>(request, response).await,
                None => send(&mut response, refuse(ResponseCode::Refused), request).await,
            },
            Answer::NxDomain => {
                metadata.response_code = ResponseCode::NXDomain;
                send(&mut response, builder().build_no_records(metadata), request).await
            }
            Answer::NoData => send(&mut response, builder().build_no_records(metadata), request).await,
            Answer::Addresses(mut ips) => {
                // Clients that take the first address spread over the instances, as upstream's.
                ips.shuffle(&mut rand::rng());
                let records: Vec<Record> =
                    ips.into_iter().map(|ip| Record::from_rdata(name.clone(), self.ttl, RData::A(A(ip)))).collect();
                let msg = builder().build(metadata, records.iter(), [], [], []);
                send(&mut response, msg, request).await
            }
        }
    }
}

async fn send<'a, R: ResponseHandler>(
    response: &mut R,
    msg: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
    request: &Request,
) -> ResponseInfo {
    match response.send_response(msg).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, peer = %request.src(), "could not send a DNS answer");
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = ResponseCode::ServFail;
            hickory_proto::op::Header { metadata, counts: Default::default() }.into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        let ips = ["10.255.1.2".to_string()];
        let t = Table::new(&["apps.internal.".into()], [("a.apps.internal", &ips[..])]);
        let a = vec![Ipv4Addr::new(10, 255, 1, 2)];
        assert_eq!(Answer::of(&t, "a.apps.internal.", RecordType::A), Answer::Addresses(a));
        assert_eq!(Answer::of(&t, "a.apps.internal.", RecordType::AAAA), Answer::NoData);
        assert_eq!(Answer::of(&t, "apps.internal.", RecordType::A), Answer::NoData);
        assert_eq!(Answer::of(&t, "b.apps.internal.", RecordType::A), Answer::NxDomain);
        assert_eq!(Answer::of(&t, "b.apps.internal.", RecordType::TXT), Answer::NxDomain);
        assert_eq!(Answer::of(&t, "example.com.", RecordType::A), Answer::Elsewhere);
    }
}
