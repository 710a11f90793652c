//! Go's `encoding/gob`, the subset the cf CLI plugin protocol uses, written by hand because
//! no maintained crate covers it (`../shared/spec/cli-plugin.md` §2.9–2.10 compares them):
//! an encoder for typed values with per-stream type definitions, and a decoder that reads
//! type definitions as they arrive (keyed by the id in the message), matches struct fields by
//! name, and returns a dynamic [`Value`]. Malformed input is an error, never a panic.

mod decode;
mod encode;
mod wire;

pub use decode::Decoder;
pub use encode::Encoder;

/// A gob type, as the encoder describes what it sends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Type {
    Bool,
    Int,
    Uint,
    Float,
    Bytes,
    String,
    /// A named struct; fields in declaration order.
    Struct {
        name: String,
        fields: Vec<(String, Type)>,
    },
    Slice {
        name: String,
        elem: Box<Type>,
    },
    Map {
        name: String,
        key: Box<Type>,
        elem: Box<Type>,
    },
}

impl Type {
    pub fn slice(name: &str, elem: Type) -> Type {
        Type::Slice { name: name.to_string(), elem: Box::new(elem) }
    }

    pub fn map(name: &str, key: Type, elem: Type) -> Type {
        Type::Map { name: name.to_string(), key: Box::new(key), elem: Box::new(elem) }
    }

    pub fn strukt(name: &str, fields: &[(&str, Type)]) -> Type {
        Type::Struct {
            name: name.to_string(),
            fields: fields.iter().map(|(n, t)| (n.to_string(), t.clone())).collect(),
        }
    }

    /// The predefined id of a basic type.
    pub(crate) fn builtin_id(&self) -> Option<i64> {
        match self {
            Type::Bool => Some(1),
            Type::Int => Some(2),
            Type::Uint => Some(3),
            Type::Float => Some(4),
            Type::Bytes => Some(5),
            Type::String => Some(6),
            _ => None,
        }
    }
}

/// A decoded (or to-be-encoded) gob value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Complex(f64, f64),
    Bytes(Vec<u8>),
    String(String),
    /// Fields present on the wire (or to send), by name.
    Struct(Vec<(String, Value)>),
    Slice(Vec<Value>),
    Array(Vec<Value>),
    Map(Vec<(Value, Value)>),
    /// A non-nil interface value: the registered type name and the value.
    Interface(String, Box<Value>),
    NilInterface,
    /// The bytes of a GobEncoder / BinaryMarshaler / TextMarshaler value (e.g. `time.Time`).
    Opaque(Vec<u8>),
}

impl Value {
    pub fn string(s: &str) -> Value {
        Value::String(s.to_string())
    }

    /// A struct field by name; missing fields are Go zero values, so callers use defaults.
    pub fn field(&self, name: &str) -> Option<&Value> {
        match self {
            Value::Struct(fields) => fields.iter().find(|(n, _)| n == name).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_strings(&self) -> Option<Vec<String>> {
        match self {
            Value::Slice(items) => items.iter().map(|v| v.as_str().map(str::to_string)).collect(),
            _ => None,
        }
    }

    /// A string field, `""` when absent (Go's zero value).
    pub fn str_field(&self, name: &str) -> String {
        self.field(name).and_then(Value::as_str).unwrap_or("").to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GobError {
    #[error("gob: unexpected end of data")]
    Eof,
    #[error("gob: {0}")]
    Corrupt(String),
    #[error("gob: unknown type id {0}")]
    UnknownType(i64),
    #[error("gob: message of {0} bytes is larger than allowed")]
    TooLarge(u64),
    #[error("gob: value nested too deeply")]
    TooDeep,
    #[error("gob: value does not match its type: {0}")]
    Mismatch(String),
}

#[cfg(test)]
mod vectors;

#[cfg(test)]
mod fuzz {
    //! Property tests: any bytes decode to a value or an error, never a panic; values of the
    //! plugin's types survive a round trip. Failing cases proptest finds are kept in
    //! `proptest-regressions/` and replayed on every run.

    use proptest::prelude::*;

    use super::vectors::{messages, metadata_type};
    use super::*;

    /// The checked-in corpus (`fuzz-corpus/*.dump`), each file a whole stream.
    fn corpus() -> Vec<Vec<u8>> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz-corpus");
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .expect("fuzz-corpus directory")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "dump"))
            .collect();
        files.sort();
        files.iter().map(|p| vectors::bytes(&std::fs::read_to_string(p).unwrap())).collect()
    }

    #[test]
    fn corpus_streams_decode() {
        let corpus = corpus();
        assert!(corpus.len() >= 5);
        for stream in corpus {
            let mut d = Decoder::new();
            for m in messages(&stream) {
                d.message(&m).expect("corpus streams are valid");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut d = Decoder::new();
            let _ = d.message(&data);
            // Also as a stream of several messages, the way the RPC layer feeds them.
            let mut r = wire::Reader::new(&data);
            while let Ok(m) = r.bytes() {
                if d.message(m).is_err() {
                    break;
                }
            }
        }

        #[test]
        fn mutated_corpus_streams_never_panic(file in 0usize..64, flip in 0usize..400, byte in any::<u8>()) {
            let corpus = corpus();
            let mut msgs = messages(&corpus[file % corpus.len()]);
            let total: usize = msgs.iter().map(Vec::len).sum();
            let mut at = flip % total;
            for m in msgs.iter_mut() {
                if at < m.len() {
                    m[at] = byte;
                    break;
                }
                at -= m.len();
            }
            let mut d = Decoder::new();
            for m in &msgs {
                if d.message(m).is_err() {
                    break;
                }
            }
        }

        #[test]
        fn metadata_round_trips(name in "[a-z-]{1,20}", help in ".{0,40}", major in 0i64..100, opts in proptest::collection::btree_map("[a-z]{1,8}", ".{0,20}", 0..4)) {
            let options: Vec<(Value, Value)> = opts.iter().map(|(k, v)| (Value::string(k), Value::string(v))).collect();
            let metadata = Value::Struct(vec![
                ("Name".into(), Value::string(&name)),
                ("Version".into(), Value::Struct(vec![("Major".into(), Value::Int(major))])),
                ("Commands".into(), Value::Slice(vec![Value::Struct(vec![
                    ("Name".into(), Value::string(&name)),
                    ("HelpText".into(), Value::string(&help)),
                    ("UsageDetails".into(), Value::Struct(vec![("Options".into(), Value::Map(options.clone()))])),
                ])])),
            ]);
            let bytes = Encoder::new().encode(&metadata_type(), &metadata).unwrap();
            let mut d = Decoder::new();
            let decoded: Vec<Value> = messages(&bytes).iter().filter_map(|m| d.message(m).unwrap()).collect();
            prop_assert_eq!(decoded.len(), 1);
            prop_assert_eq!(decoded[0].str_field("Name"), name);
            let Value::Slice(cmds) = decoded[0].field("Commands").unwrap() else { panic!("slice") };
            prop_assert_eq!(cmds[0].str_field("HelpText"), help);
            let got_opts = cmds[0].field("UsageDetails").and_then(|u| u.field("Options")).cloned();
            if options.is_empty() {
                prop_assert_eq!(got_opts, None);
            } else {
                prop_assert_eq!(got_opts, Some(Value::Map(options)));
            }
        }
    }
}
