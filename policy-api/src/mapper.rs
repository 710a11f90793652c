//! Request bodies to policies and policies to response bodies, for API versions v0 and v1,
//! with upstream's validation rules, their order and their exact messages.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::gojson::{self, DecodeError, Field};
use crate::policy::{Policy, Protocol, TaggedPolicy};

/// The API version segment of an external path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiVersion {
    V0,
    V1,
}

impl ApiVersion {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "v0" => Some(ApiVersion::V0),
            "v1" => Some(ApiVersion::V1),
            _ => None,
        }
    }
}

/// Why a body was refused; rendered as `mapper: unmarshal json: ...` or
/// `mapper: validate policies: ...`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapperError {
    #[error("mapper: unmarshal json: {0}")]
    Unmarshal(DecodeError),
    #[error("mapper: validate policies: {0}")]
    Validate(String),
}

impl From<DecodeError> for MapperError {
    fn from(e: DecodeError) -> Self {
        MapperError::Unmarshal(e)
    }
}

fn invalid(msg: impl Into<String>) -> MapperError {
    MapperError::Validate(msg.into())
}

/// Raw fields of one policy, as Go would have decoded them (zero values for missing fields).
struct RawPolicy {
    source_id: String,
    source_tag: String,
    destination_id: String,
    destination_tag: String,
    protocol: String,
    start: i64,
    end: i64,
    port: i64,
}

fn decode_raw(bytes: &[u8], version: ApiVersion) -> Result<Vec<RawPolicy>, MapperError> {
    let value = gojson::parse(bytes)?;
    let empty = Map::new();
    let top = gojson::top_object(&value, "api.PoliciesPayload")?.unwrap_or(&empty);
    let list = gojson::array(
        gojson::get(top, "policies"),
        &Field { go_struct: "PoliciesPayload", path: "policies".into() },
        "[]api.Policy",
    )?;
    let mut out = Vec::with_capacity(list.len());
    for item in list {
        let at = |s: &'static str, p: &str| Field { go_struct: s, path: format!("policies.{p}") };
        let policy = match item {
            Value::Null => &empty,
            Value::Object(m) => m,
            other => {
                return Err(DecodeError(format!(
                    "json: cannot unmarshal {} into Go struct field PoliciesPayload.policies of type api.Policy",
                    kind(other)
                ))
                .into());
            }
        };
        let source =
            gojson::object(gojson::get(policy, "source"), &at("Policy", "source"), "api.Source")?.unwrap_or(&empty);
        let destination =
            gojson::object(gojson::get(policy, "destination"), &at("Policy", "destination"), "api.Destination")?
                .unwrap_or(&empty);
        let (start, end, port) = match version {
            ApiVersion::V1 => {
                let ports = gojson::object(
                    gojson::get(destination, "ports"),
                    &at("Destination", "destination.ports"),
                    "api.Ports",
                )?
                .unwrap_or(&empty);
                let start = gojson::int(gojson::get(ports, "start"), &at("Ports", "destination.ports.start"))?;
                let end = gojson::int(gojson::get(ports, "end"), &at("Ports", "destination.ports.end"))?;
                (start, end, 0)
            }
            ApiVersion::V0 => {
                let port = gojson::int(gojson::get(destination, "port"), &at("Destination", "destination.port"))?;
                (port, port, port)
            }
        };
        out.push(RawPolicy {
            source_id: gojson::string(gojson::get(source, "id"), &at("Source", "source.id"))?,
            source_tag: gojson::string(gojson::get(source, "tag"), &at("Source", "source.tag"))?,
            destination_id: gojson::string(gojson::get(destination, "id"), &at("Destination", "destination.id"))?,
            destination_tag: gojson::string(gojson::get(destination, "tag"), &at("Destination", "destination.tag"))?,
            protocol: gojson::string(gojson::get(destination, "protocol"), &at("Destination", "destination.protocol"))?,
            start,
            end,
            port,
        });
    }
    Ok(out)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Deviation from upstream, which stores any id: an id that would split or spill in a
/// query, a filter or a log is refused (see [`crate::ids`]).
fn check_ids(raw: &RawPolicy) -> Result<(), MapperError> {
    for (which, id) in [("source", &raw.source_id), ("destination", &raw.destination_id)] {
        if let Some(why) = crate::ids::problem(id) {
            return Err(invalid(format!("invalid {which} id: {why}")));
        }
    }
    Ok(())
}

const PROTOCOL_MESSAGE: &str = "invalid destination protocol, specify either udp or tcp";

fn validate_v1(raw: &RawPolicy) -> Result<Policy, MapperError> {
    if raw.source_id.is_empty() {
        return Err(invalid("missing source id"));
    }
    if raw.destination_id.is_empty() {
        return Err(invalid("missing destination id"));
    }
    check_ids(raw)?;
    let protocol = Protocol::parse(&raw.protocol).ok_or_else(|| invalid(PROTOCOL_MESSAGE))?;
    let (start, end) = (raw.start, raw.end);
    if start > end {
        return Err(invalid(format!("invalid port range {start}-{end}, start must be less than or equal to end")));
    }
    if start < 0 {
        return Err(invalid(format!("invalid start port {start}, must be in range 1-65535")));
    }
    if start == 0 {
        return Err(invalid("missing start port"));
    }
    if end > 65535 {
        return Err(invalid(format!("invalid end port {end}, must be in range 1-65535")));
    }
    if !raw.source_tag.is_empty() || !raw.destination_tag.is_empty() {
        return Err(invalid("tags may not be specified"));
    }
    // Both bounds are within 1..=65535 here.
    Ok(Policy::new(&raw.source_id, &raw.destination_id, protocol, start as u16, end as u16))
}

fn validate_v0(raw: &RawPolicy) -> Result<Policy, MapperError> {
    if raw.source_id.is_empty() {
        return Err(invalid("missing source id"));
    }
    if raw.destination_id.is_empty() {
        return Err(invalid("missing destination id"));
    }
    check_ids(raw)?;
    let protocol = Protocol::parse(&raw.protocol).ok_or_else(|| invalid(PROTOCOL_MESSAGE))?;
    let port = raw.port;
    if port < 0 {
        return Err(invalid(format!("invalid port {port}, must be in range 1-65535")));
    }
    if port == 0 {
        return Err(invalid("missing port"));
    }
    // Deviation: upstream stores ports above 65535 from v0 requests, which no cell can
    // enforce; we refuse them with the same wording as the lower bound.
    if port > 65535 {
        return Err(invalid(format!("invalid port {port}, must be in range 1-65535")));
    }
    if !raw.source_tag.is_empty() || !raw.destination_tag.is_empty() {
        return Err(invalid("tags may not be specified"));
    }
    Ok(Policy::new(&raw.source_id, &raw.destination_id, protocol, port as u16, port as u16))
}

/// Decodes and validates a create or delete body. Policies are checked in order; the first
/// failure wins.
pub fn policies_from_body(bytes: &[u8], version: ApiVersion) -> Result<Vec<Policy>, MapperError> {
    let raw = decode_raw(bytes, version)?;
    if raw.is_empty() {
        return Err(invalid("missing policies"));
    }
    raw.iter()
        .map(|r| match version {
            ApiVersion::V1 => validate_v1(r),
            ApiVersion::V0 => validate_v0(r),
        })
        .collect()
}

#[derive(Serialize)]
struct SourceJson<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<&'a str>,
}

#[derive(Serialize)]
struct PortsJson {
    start: u16,
    end: u16,
}

#[derive(Serialize)]
struct DestinationV1Json<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<&'a str>,
    protocol: &'static str,
    ports: PortsJson,
}

#[derive(Serialize)]
struct DestinationV0Json<'a> {
    id: &'a str,
    protocol: &'static str,
    port: u16,
}

#[derive(Serialize)]
struct PolicyJson<'a, D> {
    source: SourceJson<'a>,
    destination: D,
}

#[derive(Serialize)]
struct ListJson<P> {
    total_policies: usize,
    policies: Vec<P>,
}

fn v1_json<'a>(p: &'a Policy, tags: Option<(&'a str, &'a str)>) -> PolicyJson<'a, DestinationV1Json<'a>> {
    PolicyJson {
        source: SourceJson { id: &p.source, tag: tags.map(|t| t.0) },
        destination: DestinationV1Json {
            id: &p.destination,
            tag: tags.map(|t| t.1),
            protocol: p.protocol.as_str(),
            ports: PortsJson { start: p.start, end: p.end },
        },
    }
}

/// `{"total_policies":N,"policies":[...]}` in the v1 shape, without tags (external API).
pub fn list_v1<'a>(policies: impl IntoIterator<Item = &'a Policy>) -> Vec<u8> {
    let policies: Vec<_> = policies.into_iter().map(|p| v1_json(p, None)).collect();
    serde_json::to_vec(&ListJson { total_policies: policies.len(), policies }).expect("serialisable")
}

/// The v1 shape with both tags (internal API).
pub fn list_v1_tagged<'a>(policies: impl IntoIterator<Item = &'a TaggedPolicy>) -> Vec<u8> {
    let policies: Vec<_> =
        policies.into_iter().map(|t| v1_json(&t.policy, Some((&t.source_tag, &t.destination_tag)))).collect();
    serde_json::to_vec(&ListJson { total_policies: policies.len(), policies }).expect("serialisable")
}

/// The v0 shape: port ranges are left out and not counted.
pub fn list_v0<'a>(policies: impl IntoIterator<Item = &'a Policy>) -> Vec<u8> {
    let policies: Vec<_> = policies
        .into_iter()
        .filter(|p| p.start == p.end)
        .map(|p| PolicyJson {
            source: SourceJson { id: &p.source, tag: None },
            destination: DestinationV0Json { id: &p.destination, protocol: p.protocol.as_str(), port: p.start },
        })
        .collect();
    serde_json::to_vec(&ListJson { total_policies: policies.len(), policies }).expect("serialisable")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1(body: &str) -> Result<Vec<Policy>, String> {
        policies_from_body(body.as_bytes(), ApiVersion::V1).map_err(|e| e.to_string())
    }

    fn v0(body: &str) -> Result<Vec<Policy>, String> {
        policies_from_body(body.as_bytes(), ApiVersion::V0).map_err(|e| e.to_string())
    }

    fn one_v1(src: &str, dst: &str, proto: &str, ports: &str) -> String {
        format!(
            r#"{{"policies":[{{"source":{{"id":"{src}"}},"destination":{{"id":"{dst}","protocol":"{proto}","ports":{ports}}}}}]}}"#
        )
    }

    #[test]
    fn v1_valid() {
        let got = v1(&one_v1("a", "b", "tcp", r#"{"start":8080,"end":8090}"#)).unwrap();
        assert_eq!(got, vec![Policy::new("a", "b", Protocol::Tcp, 8080, 8090)]);
    }

    #[test]
    fn v1_validation_table_in_order() {
        let cases: &[(&str, &str)] = &[
            (r#"{}"#, "missing policies"),
            (r#"{"policies":null}"#, "missing policies"),
            (r#"{"policies":[]}"#, "missing policies"),
            (&one_v1("", "b", "tcp", r#"{"start":1,"end":1}"#), "missing source id"),
            (&one_v1("", "", "icmp", r#"{"start":0,"end":0}"#), "missing source id"),
            (&one_v1("a", "", "tcp", r#"{"start":1,"end":1}"#), "missing destination id"),
            (
                &one_v1("a,x1", "b", "icmp", r#"{"start":1,"end":1}"#),
                "invalid source id: must not contain commas, whitespace or control characters",
            ),
            (
                &one_v1("a", "b\\u0000", "tcp", r#"{"start":1,"end":1}"#),
                "invalid destination id: must not contain commas, whitespace or control characters",
            ),
            (
                &one_v1("a", "b c", "tcp", r#"{"start":1,"end":1}"#),
                "invalid destination id: must not contain commas, whitespace or control characters",
            ),
            (&one_v1("a", "b", "icmp", r#"{"start":1,"end":1}"#), PROTOCOL_MESSAGE),
            (&one_v1("a", "b", "TCP", r#"{"start":1,"end":1}"#), PROTOCOL_MESSAGE),
            (&one_v1("a", "b", "all", r#"{"start":1,"end":1}"#), PROTOCOL_MESSAGE),
            (
                &one_v1("a", "b", "tcp", r#"{"start":90,"end":80}"#),
                "invalid port range 90-80, start must be less than or equal to end",
            ),
            (
                &one_v1("a", "b", "tcp", r#"{"start":5}"#),
                "invalid port range 5-0, start must be less than or equal to end",
            ),
            (&one_v1("a", "b", "tcp", r#"{"start":-5,"end":10}"#), "invalid start port -5, must be in range 1-65535"),
            (&one_v1("a", "b", "tcp", r#"{"start":0,"end":10}"#), "missing start port"),
            (&one_v1("a", "b", "tcp", r#"null"#), "missing start port"),
            (
                &one_v1("a", "b", "tcp", r#"{"start":1,"end":65536}"#),
                "invalid end port 65536, must be in range 1-65535",
            ),
            (
                r#"{"policies":[{"source":{"id":"a","tag":"01"},"destination":{"id":"b","protocol":"tcp","ports":{"start":1,"end":1}}}]}"#,
                "tags may not be specified",
            ),
            (
                r#"{"policies":[{"source":{"id":"a"},"destination":{"id":"b","tag":"01","protocol":"tcp","ports":{"start":1,"end":1}}}]}"#,
                "tags may not be specified",
            ),
        ];
        for (body, msg) in cases {
            assert_eq!(v1(body), Err(format!("mapper: validate policies: {msg}")), "body {body}");
        }
    }

    #[test]
    fn v1_rejects_v0_shaped_bodies() {
        let body = r#"{"policies":[{"source":{"id":"a"},"destination":{"id":"b","protocol":"tcp","port":8080}}]}"#;
        assert_eq!(v1(body), Err("mapper: validate policies: missing start port".into()));
    }

    #[test]
    fn first_failing_policy_wins() {
        let body = r#"{"policies":[
            {"source":{"id":"a"},"destination":{"id":"b","protocol":"tcp","ports":{"start":1,"end":1}}},
            {"source":{"id":"a"},"destination":{"id":"","protocol":"bad","ports":{"start":1,"end":1}}},
            {"source":{"id":""},"destination":{"id":"b","protocol":"tcp","ports":{"start":1,"end":1}}}]}"#;
        assert_eq!(v1(body), Err("mapper: validate policies: missing destination id".into()));
    }

    #[test]
    fn keys_are_case_insensitive_and_unknown_keys_ignored() {
        let body = r#"{"Policies":[{"SOURCE":{"Id":"a","extra":1},"Destination":{"ID":"b","Protocol":"udp","Ports":{"Start":53,"END":53}},"x":true}]}"#;
        assert_eq!(v1(body).unwrap(), vec![Policy::new("a", "b", Protocol::Udp, 53, 53)]);
    }

    #[test]
    fn wrong_types_are_unmarshal_errors() {
        let err = v1(&one_v1("a", "b", "tcp", r#"{"start":"80","end":80}"#)).unwrap_err();
        assert_eq!(
            err,
            "mapper: unmarshal json: json: cannot unmarshal string into Go struct field Ports.policies.destination.ports.start of type int"
        );
        let err = v1(&one_v1("a", "b", "tcp", r#"{"start":80.5,"end":80}"#)).unwrap_err();
        assert!(err.contains("cannot unmarshal number 80.5"), "{err}");
        assert_eq!(v1("").unwrap_err(), "mapper: unmarshal json: unexpected end of JSON input");
        assert!(v1("[1]").unwrap_err().starts_with("mapper: unmarshal json: json: cannot unmarshal array"));
        assert!(v1(r#"{"policies":{}}"#).unwrap_err().contains("of type []api.Policy"));
        assert!(v1(r#"{"policies":[5]}"#).unwrap_err().contains("cannot unmarshal number"));
    }

    #[test]
    fn v0_validation_table() {
        let p = |src: &str, dst: &str, proto: &str, port: &str| {
            format!(
                r#"{{"policies":[{{"source":{{"id":"{src}"}},"destination":{{"id":"{dst}","protocol":"{proto}","port":{port}}}}}]}}"#
            )
        };
        let cases: Vec<(String, &str)> = vec![
            ("{}".into(), "missing policies"),
            (p("", "b", "tcp", "1"), "missing source id"),
            (p("a", "", "tcp", "1"), "missing destination id"),
            (p("a", "b", "icmp", "1"), PROTOCOL_MESSAGE),
            (p("a", "b", "tcp", "-1"), "invalid port -1, must be in range 1-65535"),
            (p("a", "b", "tcp", "0"), "missing port"),
            (p("a", "b", "tcp", "70000"), "invalid port 70000, must be in range 1-65535"),
            (
                r#"{"policies":[{"source":{"id":"a"},"destination":{"id":"b","protocol":"tcp","ports":{"start":1,"end":1}}}]}"#.into(),
                "missing port",
            ),
            (
                r#"{"policies":[{"source":{"id":"a","tag":"1"},"destination":{"id":"b","protocol":"tcp","port":1}}]}"#.into(),
                "tags may not be specified",
            ),
        ];
        for (body, msg) in cases {
            assert_eq!(v0(&body), Err(format!("mapper: validate policies: {msg}")), "body {body}");
        }
        assert_eq!(v0(&p("a", "b", "tcp", "1234")).unwrap(), vec![Policy::new("a", "b", Protocol::Tcp, 1234, 1234)]);
    }

    #[test]
    fn listings_render_like_upstream() {
        let ps = vec![
            Policy::new("app-a", "app-b", Protocol::Tcp, 8080, 8090),
            Policy::new("app-c", "app-c", Protocol::Udp, 53, 53),
        ];
        assert_eq!(
            String::from_utf8(list_v1(&ps)).unwrap(),
            r#"{"total_policies":2,"policies":[{"source":{"id":"app-a"},"destination":{"id":"app-b","protocol":"tcp","ports":{"start":8080,"end":8090}}},{"source":{"id":"app-c"},"destination":{"id":"app-c","protocol":"udp","ports":{"start":53,"end":53}}}]}"#
        );
        assert_eq!(
            String::from_utf8(list_v0(&ps)).unwrap(),
            r#"{"total_policies":1,"policies":[{"source":{"id":"app-c"},"destination":{"id":"app-c","protocol":"udp","port":53}}]}"#
        );
        assert_eq!(String::from_utf8(list_v1(&[])).unwrap(), r#"{"total_policies":0,"policies":[]}"#);
        let tagged =
            vec![TaggedPolicy { policy: ps[0].clone(), source_tag: "0001".into(), destination_tag: "0002".into() }];
        assert_eq!(
            String::from_utf8(list_v1_tagged(&tagged)).unwrap(),
            r#"{"total_policies":1,"policies":[{"source":{"id":"app-a","tag":"0001"},"destination":{"id":"app-b","tag":"0002","protocol":"tcp","ports":{"start":8080,"end":8090}}}]}"#
        );
    }
}
