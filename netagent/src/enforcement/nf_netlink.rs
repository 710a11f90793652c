//! Talking to nf_tables over netlink, in process, for the three things the nftables backend
//! does on every change: read the ruleset generation, count what a table holds, and commit
//! a batch of set-element changes as one transaction.
//!
//! Why not `nft` for these: every `nft` run loads its cache, and a table whose rules refer
//! to a 10,000-element set costs it 60–110 ms to list (measured; see docs/benchmarks.md),
//! where the kernel answers the same questions over netlink in well under a millisecond.
//! Building whole tables (chains and rule expressions) stays with `nft -f`, which is rare
//! (first install and drift repair) and where its syntax is the clearest statement of the
//! rules. Messages are encoded with `netlink-packet-netfilter`; replies are read as plain
//! netlink attributes, so a kernel newer than the crate never fails a count.

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NlaBuffer, NlasIterator,
};
use netlink_packet_netfilter::nftables::ListAttribute;
use netlink_packet_netfilter::nftables::{
    DataAttribute, GenMessage, NfTablesMessage, RuleAttribute, RuleMessage, SetElementAttribute, SetElementList,
    SetElementMessage,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

/// `NFNL_SUBSYS_NFTABLES`: the subsystem a batch is addressed to.
const SUBSYS_NFTABLES: u16 = 10;
/// `NFNL_MSG_BATCH_BEGIN` and its `NFNL_BATCH_GENID` attribute: the kernel refuses the batch
/// (ERESTART) when the ruleset generation is no longer the one given.
const MSG_BATCH_BEGIN: u8 = 16;
const BATCH_GENID: u16 = 1;
/// `NFTA_DATA_VALUE`, the value inside a key or data attribute.
const DATA_VALUE: u16 = 1;
/// `NFTA_GEN_ID` in a `NFT_MSG_NEWGEN` reply.
const GEN_ID: u16 = 1;
/// `NFTA_SET_ELEM_LIST_ELEMENTS` in a `NFT_MSG_NEWSETELEM` dump reply.
const SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NLMSG_ERROR: u16 = 2;
const ENOENT: i32 = 2;
/// What the kernel answers a batch whose generation has moved on.
const ERESTART: i32 = 85;
const NLMSG_DONE: u16 = 3;
/// `NFNLGRP_NFTABLES`: the multicast group on which nf_tables announces committed changes.
const GROUP_NFTABLES: u32 = 7;
/// `NFT_MSG_NEWGEN` from the nf_tables subsystem: sent once at the end of every commit.
const MSG_NEWGEN: u16 = (SUBSYS_NFTABLES << 8) | 15;
/// Set elements per message: keeps each message far below netlink's size limits.
const ELEMENTS_PER_MESSAGE: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum NfNetlinkError {
    #[error("cannot talk to nf_tables over netlink (is the nf_tables module loaded? are we root?): {0}")]
    Socket(std::io::Error),
    #[error("nf_tables refused the change: {0}")]
    Refused(std::io::Error),
    #[error("the ruleset changed while the change was being prepared; it will be checked again")]
    GenerationMoved,
    #[error("nf_tables sent a reply that cannot be read: {0}")]
    Reply(String),
}

/// One set element: its key (and for interval sets the key where the range ends), and for
/// maps the value it maps to. Bytes exactly as the set's types lay them out in registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub key: Vec<u8>,
    pub key_end: Option<Vec<u8>>,
    pub data: Option<Vec<u8>>,
}

/// A change to one set, part of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetChange {
    pub set: &'static str,
    pub add: bool,
    pub elements: Vec<Element>,
}

/// A netlink socket to nf_tables in the network namespace of the thread that opened it.
#[derive(Debug)]
pub struct NfNetlink {
    socket: Socket,
    seq: u32,
}

fn header(flags: u16, seq: u32) -> NetlinkHeader {
    let mut h = NetlinkHeader::default();
    h.flags = flags;
    h.sequence_number = seq;
    h
}

fn nf_message(family: NetfilterProtoFamily, res_id: u16, inner: impl Into<NetfilterMessageInner>) -> NetfilterMessage {
    NetfilterMessage::new(NetfilterHeader::new(family, 0, res_id), inner)
}

fn value(bytes: &[u8]) -> DataAttribute {
    DataAttribute::Value(bytes.to_vec())
}

impl NfNetlink {
    pub fn open() -> Result<NfNetlink, NfNetlinkError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(NfNetlinkError::Socket)?;
        socket.bind_auto().map_err(NfNetlinkError::Socket)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(NfNetlinkError::Socket)?;
        // Acks echo only the header of a refused message, not the whole (large) message.
        socket.set_cap_ack(true).map_err(NfNetlinkError::Socket)?;
        // The kernel answers within the send; a reply that never comes is an error, not a
        // hang (the enforcer then opens a new socket).
        let fd = std::os::fd::AsFd::as_fd(&socket);
        nix::sys::socket::setsockopt(
            &fd,
            nix::sys::socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(5, 0),
        )
        .map_err(|e| NfNetlinkError::Socket(e.into()))?;
        Ok(NfNetlink { socket, seq: 0 })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn encode(&mut self, flags: u16, message: NetfilterMessage, out: &mut Vec<u8>) -> u32 {
        let seq = self.next_seq();
        let mut m = NetlinkMessage::new(header(flags, seq), NetlinkPayload::InnerMessage(message));
        m.finalize();
        let start = out.len();
        out.resize(start + m.buffer_len(), 0);
        m.serialize(&mut out[start..]);
        seq
    }

    fn send(&self, bytes: &[u8]) -> Result<(), NfNetlinkError> {
        // A batch is one datagram; make room for it when it is larger than the default.
        if bytes.len() > 128 * 1024 {
            let fd = std::os::fd::AsFd::as_fd(&self.socket);
            nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::SndBufForce, &(bytes.len() * 2))
                .map_err(|e| NfNetlinkError::Socket(e.into()))?;
        }
        self.socket.send(bytes, 0).map_err(NfNetlinkError::Socket)?;
        Ok(())
    }

    /// Reads replies until `done` says stop, handing every message that is not an ack,
    /// error or end of dump to `each`. An error reply ends reading with that error.
    fn receive(
        &self,
        from_seq: u32,
        mut each: impl FnMut(u16, &[u8]) -> Result<(), NfNetlinkError>,
        mut done: impl FnMut(Reply) -> bool,
    ) -> Result<(), NfNetlinkError> {
        let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
        loop {
            buf.clear();
            let (len, _) = self.socket.recv_from(&mut buf, libc_peek_trunc()).map_err(NfNetlinkError::Socket)?;
            buf.clear();
            buf.reserve(len);
            self.socket.recv_from(&mut buf, 0).map_err(NfNetlinkError::Socket)?;
            let mut at = 0;
            while at + 16 <= buf.len() {
                let msg = NetlinkBuffer::new_checked(&buf[at..]).map_err(|e| NfNetlinkError::Reply(e.to_string()))?;
                let length = msg.length() as usize;
                if length < 16 {
                    return Err(NfNetlinkError::Reply(format!("a message of {length} bytes")));
                }
                at += (length + 3) & !3;
                // Left over from an earlier request on this socket.
                if msg.sequence_number() < from_seq {
                    continue;
                }
                let reply = match msg.message_type() {
                    NLMSG_ERROR => {
                        let p = msg.payload();
                        let code = i32::from_ne_bytes(
                            p.get(..4)
                                .and_then(|b| b.try_into().ok())
                                .ok_or_else(|| NfNetlinkError::Reply("short error message".into()))?,
                        );
                        if code != 0 {
                            let err = std::io::Error::from_raw_os_error(-code);
                            if -code == ERESTART {
                                return Err(NfNetlinkError::GenerationMoved);
                            }
                            return Err(NfNetlinkError::Refused(err));
                        }
                        Reply::Ack
                    }
                    NLMSG_DONE => Reply::Done,
                    kind => {
                        each(kind, msg.payload())?;
                        Reply::Message
                    }
                };
                if done(reply) {
                    return Ok(());
                }
            }
        }
    }

    /// The ruleset generation: it moves on with every committed change to any table.
    pub fn generation(&mut self) -> Result<u32, NfNetlinkError> {
        let mut out = Vec::new();
        let msg =
            nf_message(NetfilterProtoFamily::Unspec, 0, NfTablesMessage::GetGen(GenMessage { attributes: Vec::new() }));
        let seq = self.encode(NLM_F_REQUEST, msg, &mut out);
        self.send(&out)?;
        let mut id = None;
        self.receive(
            seq,
            |_, payload| {
                id = attributes(payload).into_iter().find(|(k, _)| *k == GEN_ID).and_then(|(_, v)| be_u32(&v));
                Ok(())
            },
            |r| matches!(r, Reply::Message | Reply::Done),
        )?;
        id.ok_or_else(|| NfNetlinkError::Reply("no generation id in the reply".into()))
    }

    /// Sends a dump request and hands every reply to `each`; false when what it asks for
    /// does not exist.
    fn dump(&mut self, msg: NetfilterMessage, mut each: impl FnMut(&[u8])) -> Result<bool, NfNetlinkError> {
        let mut out = Vec::new();
        let seq = self.encode(NLM_F_REQUEST | NLM_F_DUMP, msg, &mut out);
        self.send(&out)?;
        let result = self.receive(
            seq,
            |_, payload| {
                each(payload);
                Ok(())
            },
            |r| matches!(r, Reply::Done),
        );
        match result {
            Ok(()) => Ok(true),
            Err(NfNetlinkError::Refused(e)) if e.raw_os_error() == Some(ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The number of rules in `table`'s `chain` (family ip): zero when either is missing.
    pub fn count_rules(&mut self, table: &str, chain: &str) -> Result<usize, NfNetlinkError> {
        let msg = nf_message(
            NetfilterProtoFamily::IPv4,
            0,
            NfTablesMessage::GetRule(RuleMessage {
                attributes: vec![RuleAttribute::Table(table.into()), RuleAttribute::Chain(chain.into())],
            }),
        );
        let mut n = 0;
        self.dump(msg, |_| n += 1)?;
        Ok(n)
    }

    /// The number of elements in `table`'s `set` (family ip); `None` when the set is missing.
    pub fn count_elements(&mut self, table: &str, set: &str) -> Result<Option<usize>, NfNetlinkError> {
        let msg = nf_message(
            NetfilterProtoFamily::IPv4,
            0,
            NfTablesMessage::GetSetElement(SetElementMessage {
                attributes: vec![SetElementList::Table(table.into()), SetElementList::Set(set.into())],
            }),
        );
        let mut n = 0;
        let found = self.dump(msg, |payload| {
            for (kind, v) in attributes(payload) {
                if kind == SET_ELEM_LIST_ELEMENTS {
                    n += NlasIterator::new(&v[..]).count();
                }
            }
        })?;
        Ok(found.then_some(n))
    }

    /// Commits `changes` to `table` (family ip) as one transaction, in order; with
    /// `generation`, only if the ruleset is still at that generation.
    pub fn commit(
        &mut self,
        table: &str,
        changes: &[SetChange],
        generation: Option<u32>,
    ) -> Result<(), NfNetlinkError> {
        let mut out = Vec::new();
        let first = self.seq.wrapping_add(1);
        let begin = ControlMessage::Other {
            message_type: MSG_BATCH_BEGIN,
            attributes: generation
                .map(|g| vec![netlink_packet_core::DefaultNla::new(BATCH_GENID, g.to_be_bytes().to_vec())])
                .unwrap_or_default(),
        };
        self.encode(NLM_F_REQUEST, nf_message(NetfilterProtoFamily::Unspec, SUBSYS_NFTABLES, begin), &mut out);
        let mut acks = 0;
        for change in changes {
            for chunk in change.elements.chunks(ELEMENTS_PER_MESSAGE) {
                let elements = chunk
                    .iter()
                    .map(|e| {
                        let mut attrs = vec![SetElementAttribute::Key(value(&e.key))];
                        if let Some(end) = &e.key_end {
                            attrs.push(SetElementAttribute::KeyEnd(vec![netlink_packet_core::DefaultNla::new(
                                DATA_VALUE,
                                end.clone(),
                            )]));
                        }
                        if let Some(data) = &e.data {
                            attrs.push(SetElementAttribute::Data(value(data)));
                        }
                        ListAttribute::Element(attrs)
                    })
                    .collect();
                let body = SetElementMessage {
                    attributes: vec![
                        SetElementList::Table(table.into()),
                        SetElementList::Set(change.set.into()),
                        SetElementList::Elements(elements),
                    ],
                };
                let (inner, flags) = if change.add {
                    (NfTablesMessage::NewSetElement(body), NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK)
                } else {
                    (NfTablesMessage::DeleteSetElement(body), NLM_F_REQUEST | NLM_F_ACK)
                };
                self.encode(flags, nf_message(NetfilterProtoFamily::IPv4, 0, inner), &mut out);
                acks += 1;
            }
        }
        if acks == 0 {
            return Ok(());
        }
        self.encode(
            NLM_F_REQUEST,
            nf_message(NetfilterProtoFamily::Unspec, SUBSYS_NFTABLES, ControlMessage::BatchEnd),
            &mut out,
        );
        self.send(&out)?;
        // The kernel handles the whole batch inside the send: every ack (or the error that
        // aborted it) is already queued.
        let mut seen = 0;
        self.receive(
            first,
            |_, _| Ok(()),
            |r| {
                if matches!(r, Reply::Ack) {
                    seen += 1;
                }
                seen == acks
            },
        )
    }
}

/// Hears of every change committed to any nf_tables table in the network namespace of the
/// thread that opened it.
#[derive(Debug)]
pub struct NfMonitor {
    socket: Socket,
}

/// What the monitor heard while waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// At least one commit.
    Change,
    /// Nothing within the wait.
    Quiet,
}

impl NfMonitor {
    pub fn open() -> Result<NfMonitor, NfNetlinkError> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(NfNetlinkError::Socket)?;
        socket.bind_auto().map_err(NfNetlinkError::Socket)?;
        socket.add_membership(GROUP_NFTABLES).map_err(NfNetlinkError::Socket)?;
        Ok(NfMonitor { socket })
    }

    /// Waits up to `wait` for commits. Missed notifications (the socket overflowed) count as
    /// a change: something did happen.
    pub fn wait(&self, wait: std::time::Duration) -> Result<Heard, NfNetlinkError> {
        let fd = std::os::fd::AsFd::as_fd(&self.socket);
        let timeout = nix::sys::time::TimeVal::new(wait.as_secs() as i64, wait.subsec_micros() as i64);
        nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)
            .map_err(|e| NfNetlinkError::Socket(e.into()))?;
        let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
        loop {
            buf.clear();
            match self.socket.recv(&mut buf, 0) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => return Ok(Heard::Change),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
                    return Ok(Heard::Quiet);
                }
                Err(e) => return Err(NfNetlinkError::Socket(e)),
            }
            let mut at = 0;
            while let Ok(msg) = NetlinkBuffer::new_checked(&buf[at..]) {
                if msg.message_type() == MSG_NEWGEN {
                    return Ok(Heard::Change);
                }
                let length = msg.length() as usize;
                if length < 16 {
                    break;
                }
                at += (length + 3) & !3;
            }
        }
    }
}

enum Reply {
    Ack,
    Done,
    Message,
}

fn libc_peek_trunc() -> i32 {
    (nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_TRUNC).bits()
}

/// The top-level attributes after the 4-byte `nfgenmsg` header (kind without flags).
fn attributes(payload: &[u8]) -> Vec<(u16, Vec<u8>)> {
    NlasIterator::new(payload.get(4..).unwrap_or(&[]))
        .filter_map(|nla: Result<NlaBuffer<&[u8]>, _>| nla.ok())
        .map(|nla| (nla.kind() & 0x3fff, nla.value().to_vec()))
        .collect()
}

fn be_u32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}
