//! Decoding JSON with Go `encoding/json` semantics, which upstream clients rely on: object keys
//! match struct fields case-insensitively, unknown keys are ignored, `null` and missing fields
//! are zero values, and wrong types are errors worded the way Go words them.
//!
//! serde cannot express case-insensitive keys plus Go's zero-value rules, so this walks a
//! `serde_json::Value` instead (the one place where hand-written decoding is the right tool).

use serde_json::{Map, Value};

/// A decoding failure, worded as Go's decoder words it (without the `mapper: ...` prefix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

/// Parses bytes into a JSON value, with Go's messages for syntax errors.
pub fn parse(bytes: &[u8]) -> Result<Value, DecodeError> {
    serde_json::from_slice(bytes).map_err(|e| {
        if e.is_eof() {
            return DecodeError("unexpected end of JSON input".to_string());
        }
        let offset = offset_of(bytes, e.line(), e.column());
        match bytes.get(offset.saturating_sub(1)).copied() {
            Some(c) if c.is_ascii_graphic() => {
                DecodeError(format!("invalid character '{}' looking for beginning of value", c as char))
            }
            _ => DecodeError("invalid character looking for beginning of value".to_string()),
        }
    })
}

fn offset_of(bytes: &[u8], line: usize, column: usize) -> usize {
    let mut current = 1;
    let mut start = 0;
    for (i, b) in bytes.iter().enumerate() {
        if current == line {
            break;
        }
        if *b == b'\n' {
            current += 1;
            start = i + 1;
        }
    }
    start + column
}

fn json_kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => "bool".into(),
        Value::Number(n) => format!("number {n}"),
        Value::String(_) => "string".into(),
        Value::Array(_) => "array".into(),
        Value::Object(_) => "object".into(),
    }
}

/// Where a value sits, for Go's `Go struct field <Struct>.<path>` wording.
#[derive(Debug, Clone)]
pub struct Field<'a> {
    pub go_struct: &'a str,
    pub path: String,
}

fn type_error(v: &Value, at: &Field<'_>, go_type: &str) -> DecodeError {
    DecodeError(format!(
        "json: cannot unmarshal {} into Go struct field {}.{} of type {}",
        json_kind(v),
        at.go_struct,
        at.path,
        go_type
    ))
}

/// The top level must be an object.
pub fn top_object<'v>(v: &'v Value, go_type: &str) -> Result<Option<&'v Map<String, Value>>, DecodeError> {
    match v {
        Value::Object(m) => Ok(Some(m)),
        Value::Null => Ok(None),
        other => {
            Err(DecodeError(format!("json: cannot unmarshal {} into Go value of type {go_type}", json_kind(other))))
        }
    }
}

/// Looks a key up as Go does: an exact match first, then a case-insensitive one.
pub fn get<'v>(obj: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
    obj.get(key).or_else(|| obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v))
}

/// An object field; `null` or missing is `None` (Go's zero value).
pub fn object<'v>(
    v: Option<&'v Value>,
    at: &Field<'_>,
    go_type: &str,
) -> Result<Option<&'v Map<String, Value>>, DecodeError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(other) => Err(type_error(other, at, go_type)),
    }
}

/// An array field; `null` or missing is empty.
pub fn array<'v>(v: Option<&'v Value>, at: &Field<'_>, go_type: &str) -> Result<&'v [Value], DecodeError> {
    match v {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(other) => Err(type_error(other, at, go_type)),
    }
}

/// A string field; `null` or missing is `""`.
pub fn string(v: Option<&Value>, at: &Field<'_>) -> Result<String, DecodeError> {
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(type_error(other, at, "string")),
    }
}

/// A Go `int` (64-bit) field; `null` or missing is 0; fractions and overflow are errors.
pub fn int(v: Option<&Value>, at: &Field<'_>) -> Result<i64, DecodeError> {
    match v {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n.as_i64().ok_or_else(|| type_error(&Value::Number(n.clone()), at, "int")),
        Some(other) => Err(type_error(other, at, "int")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at() -> Field<'static> {
        Field { go_struct: "Ports", path: "policies.destination.ports.start".into() }
    }

    #[test]
    fn empty_input_is_unexpected_end() {
        assert_eq!(parse(b"").unwrap_err().0, "unexpected end of JSON input");
        assert_eq!(parse(b"  ").unwrap_err().0, "unexpected end of JSON input");
        assert_eq!(parse(b"{\"policies\": [").unwrap_err().0, "unexpected end of JSON input");
    }

    #[test]
    fn syntax_errors_name_the_character() {
        assert_eq!(parse(b"xyz").unwrap_err().0, "invalid character 'x' looking for beginning of value");
    }

    #[test]
    fn keys_match_case_insensitively_exact_first() {
        let v = json!({"ID": "upper", "id": "exact"});
        assert_eq!(get(v.as_object().unwrap(), "id"), Some(&json!("exact")));
        let v = json!({"Id": "mixed"});
        assert_eq!(get(v.as_object().unwrap(), "id"), Some(&json!("mixed")));
    }

    #[test]
    fn ints_reject_strings_and_fractions() {
        assert_eq!(int(Some(&json!(80)), &at()).unwrap(), 80);
        assert_eq!(int(None, &at()).unwrap(), 0);
        assert_eq!(int(Some(&Value::Null), &at()).unwrap(), 0);
        assert_eq!(
            int(Some(&json!("80")), &at()).unwrap_err().0,
            "json: cannot unmarshal string into Go struct field Ports.policies.destination.ports.start of type int"
        );
        assert_eq!(
            int(Some(&json!(80.5)), &at()).unwrap_err().0,
            "json: cannot unmarshal number 80.5 into Go struct field Ports.policies.destination.ports.start of type int"
        );
    }

    #[test]
    fn strings_reject_numbers() {
        let f = Field { go_struct: "Source", path: "policies.source.id".into() };
        assert_eq!(
            string(Some(&json!(5)), &f).unwrap_err().0,
            "json: cannot unmarshal number 5 into Go struct field Source.policies.source.id of type string"
        );
        assert_eq!(string(Some(&Value::Null), &f).unwrap(), "");
    }

    #[test]
    fn top_level_must_be_an_object() {
        assert!(top_object(&json!([]), "api.PoliciesPayload").is_err());
        assert!(top_object(&json!(null), "api.PoliciesPayload").unwrap().is_none());
    }
}
