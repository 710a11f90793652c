//! The captured byte dumps of `../shared/spec/cli-plugin.md` §2.5–2.6 as test vectors.

use super::*;

/// Bytes from a dump: hex pairs and "quoted ASCII", separated by spaces.
pub(crate) fn bytes(dump: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = dump.trim();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('"') {
            let end = after.find('"').expect("closing quote");
            out.extend_from_slice(&after.as_bytes()[..end]);
            rest = after[end + 1..].trim_start();
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            out.push(u8::from_str_radix(&rest[..end], 16).expect("hex byte"));
            rest = rest[end..].trim_start();
        }
    }
    out
}

/// Splits a stream into message bodies.
pub(crate) fn messages(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut r = wire::Reader::new(stream);
    let mut out = Vec::new();
    while !r.is_empty() {
        out.push(r.bytes().unwrap().to_vec());
    }
    out
}

fn decode_all(stream: &[u8]) -> Vec<Value> {
    let mut d = Decoder::new();
    messages(stream).iter().filter_map(|m| d.message(m).unwrap()).collect()
}

pub(crate) fn request_type() -> Type {
    Type::strukt("Request", &[("ServiceMethod", Type::String), ("Seq", Type::Uint)])
}

#[test]
fn go_doc_point_example() {
    let point = Type::strukt("Point", &[("X", Type::Int), ("Y", Type::Int)]);
    let mut e = Encoder::new();
    let got =
        e.encode(&point, &Value::Struct(vec![("X".into(), Value::Int(22)), ("Y".into(), Value::Int(33))])).unwrap();
    assert_eq!(
        got,
        bytes(
            r#"1f ff 81 03 01 01 05 "Point" 01 ff 82 00 01 02 01 01 "X" 01 04 00 01 01 "Y" 01 04 00 00 00 07 ff 82 01 2c 01 42 00"#
        )
    );
    assert_eq!(Encoder::new().encode(&Type::Int, &Value::Int(3)).unwrap(), bytes("03 04 00 06"));
}

#[test]
fn vector_a_request_is_byte_exact() {
    let mut e = Encoder::new();
    let mut got = e
        .encode(
            &request_type(),
            &Value::Struct(vec![("ServiceMethod".into(), Value::string("CliRpcCmd.IsMinCliVersion"))]),
        )
        .unwrap();
    got.extend(e.encode(&Type::String, &Value::string("6.7.0")).unwrap());
    let want = bytes(
        r#"2f ff 81 03 01 01 07 "Request" 01 ff 82 00 01 02 01 0d "ServiceMethod" 01 0c 00 01 03 "Seq" 01 06 00 00 00
           1e ff 82 01 19 "CliRpcCmd.IsMinCliVersion" 00
           08 0c 00 05 "6.7.0""#,
    );
    assert_eq!(got, want);
    assert_eq!(got.len(), 88);
}

#[test]
fn vector_a_response_decodes() {
    let stream = bytes(
        r#"3a ff 81 03 01 01 08 "Response" 01 ff 82 00 01 03 01 0d "ServiceMethod" 01 0c 00 01 03 "Seq" 01 06 00 01 05 "Error" 01 0c 00 00 00
           1e ff 82 01 19 "CliRpcCmd.IsMinCliVersion" 00
           03 02 00 01"#,
    );
    assert_eq!(stream.len(), 94);
    let values = decode_all(&stream);
    assert_eq!(values[0].str_field("ServiceMethod"), "CliRpcCmd.IsMinCliVersion");
    assert_eq!(values[0].field("Seq"), None, "zero Seq is not sent");
    assert_eq!(values[1], Value::Bool(true));
}

#[test]
fn vector_b_and_c_token_and_error_replies() {
    let response_def = r#"3a ff 81 03 01 01 08 "Response" 01 ff 82 00 01 03 01 0d "ServiceMethod" 01 0c 00 01 03 "Seq" 01 06 00 01 05 "Error" 01 0c 00 00 00"#;
    let ok = bytes(&format!(r#"{response_def} 1a ff 82 01 15 "CliRpcCmd.AccessToken" 00 0d 0c 00 0a "bearer eyJ""#));
    let values = decode_all(&ok);
    assert_eq!(values[1], Value::string("bearer eyJ"));
    let err = bytes(&format!(
        r#"{response_def} 20 ff 82 01 15 "CliRpcCmd.AccessToken" 02 04 "boom" 00 0a ff 8f 03 01 02 ff 90 00 00 00 03 ff 90 00"#
    ));
    let values = decode_all(&err);
    assert_eq!(values[0].str_field("Error"), "boom");
    assert_eq!(values[1], Value::Struct(vec![]), "the empty-struct body of an error");
}

#[test]
fn vector_d_string_slices() {
    let mut e = Encoder::new();
    e.encode(&request_type(), &Value::Struct(vec![])).unwrap();
    // Ids 66.. here; the spec's capture had 72 — ids are per stream, only the shape matters.
    let got = e.encode(&Type::slice("", Type::String), &Value::Slice(vec![Value::string("apps")])).unwrap();
    assert_eq!(got, bytes(r#"0c ff 83 02 01 02 ff 84 00 01 0c 00 00 09 ff 84 00 01 04 "apps""#));
    let reply = bytes(
        r#"0c ff 8d 02 01 02 ff 8e 00 01 0c 00 00 48 ff 8e 00 03 2b "Getting apps in org o / space s as admin..." 00 16 "name   requested state""#,
    );
    let values = decode_all(&reply);
    assert_eq!(
        values[0].as_strings().unwrap(),
        vec!["Getting apps in org o / space s as admin...", "", "name   requested state"]
    );
}

/// The cf CLI's `PluginMetadata`, as the plugin sends it.
pub(crate) fn metadata_type() -> Type {
    crate::metadata::Metadata::gob_type()
}

#[test]
fn vector_f_plugin_metadata_value_is_byte_exact() {
    let v = |m: i64, n: i64, b: i64| {
        Value::Struct(vec![
            ("Major".into(), Value::Int(m)),
            ("Minor".into(), Value::Int(n)),
            ("Build".into(), Value::Int(b)),
        ])
    };
    let metadata = Value::Struct(vec![
        ("Name".into(), Value::string("np")),
        ("Version".into(), v(1, 2, 3)),
        (
            "Commands".into(),
            Value::Slice(vec![Value::Struct(vec![
                ("Name".into(), Value::string("np-list")),
                ("HelpText".into(), Value::string("List")),
                (
                    "UsageDetails".into(),
                    Value::Struct(vec![
                        ("Usage".into(), Value::string("cf np-list")),
                        ("Options".into(), Value::Map(vec![(Value::string("source"), Value::string("Source app"))])),
                    ]),
                ),
            ])]),
        ),
    ]);
    let mut e = Encoder::new();
    e.encode(&request_type(), &Value::Struct(vec![])).unwrap();
    let got = e.encode(&metadata_type(), &metadata).unwrap();
    let value_message = messages(&got).pop().unwrap();
    let want = bytes(
        r#"ff 84 01 02 "np" 01 01 02 01 04 01 06 00 01 00 01 00 01 01 01 07 "np-list" 02 04 "List" 01 01 0a "cf np-list" 01 01 06 "source" 0a "Source app" 00 00 00"#,
    );
    assert_eq!(value_message, want);
    assert_eq!(want.len(), 0x47);
    // And it decodes back to what was sent (zero fields left out).
    let decoded = decode_all(&got);
    assert_eq!(decoded[0].str_field("Name"), "np");
    let cmds = decoded[0].field("Commands").unwrap();
    let Value::Slice(cmds) = cmds else { panic!("slice") };
    assert_eq!(cmds[0].str_field("HelpText"), "List");
}

#[test]
fn vector_h_gob_encoders_and_interfaces() {
    let stream = bytes(
        r#"1d ff 81 03 01 01 01 "X" 01 ff 82 00 01 02 01 01 "T" 01 ff 84 00 01 01 "E" 01 ff 86 00 00 00
           0a ff 83 05 01 02 ff 88 00 00 00
           27 ff 85 04 01 01 17 "map[string]interface {}" 01 ff 86 00 01 0c 01 10 00 00
           24 ff 82 01 0f 01 00 00 00 0e d5 9f 54 a5 00 00 00 00 ff ff 01 01 01 "a" 06 "string" 0c 03 00 01 "b" 00"#,
    );
    let values = decode_all(&stream);
    let x = &values[0];
    assert_eq!(x.field("T"), Some(&Value::Opaque(bytes("01 00 00 00 0e d5 9f 54 a5 00 00 00 00 ff ff"))));
    assert_eq!(
        x.field("E"),
        Some(&Value::Map(vec![(Value::string("a"), Value::Interface("string".into(), Box::new(Value::string("b"))))]))
    );
}

#[test]
fn malformed_streams_are_errors() {
    let mut d = Decoder::new();
    assert!(d.message(&bytes("ff 81 03")).is_err(), "truncated definition");
    assert!(d.message(&bytes("ff 82 00")).is_err(), "value of an unknown type");
    assert!(d.message(&bytes("27 03 01")).is_err(), "definition with a reserved id");
    assert!(d.message(&bytes("0c 01 06")).is_err(), "non-zero singleton delta");
    assert!(d.message(&bytes("03 00 09")).is_err(), "invalid bool");
    let def = bytes(r#"ff 81 03 01 01 01 "X" 01 ff 82 00 01 01 01 01 "A" 01 04 00 00 00"#);
    assert_eq!(d.message(&def).unwrap(), None);
    assert!(d.message(&def).is_err(), "duplicate type");
    assert!(d.message(&bytes("ff 82 05 02 00")).is_err(), "field beyond the struct");
}
