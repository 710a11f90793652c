//! The encoder: values of a known [`Type`], with the type definitions a stream has not sent.

use std::collections::HashMap;

use super::wire::{put_bytes, put_float, put_int, put_uint};
use super::{GobError, Type, Value};

/// One direction of one connection: remembers which types it has defined.
#[derive(Debug)]
pub struct Encoder {
    next_id: i64,
    ids: HashMap<Type, i64>,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder::new()
    }
}

fn message(out: &mut Vec<u8>, body: &[u8]) {
    put_uint(out, body.len() as u64);
    out.extend_from_slice(body);
}

fn common_type(out: &mut Vec<u8>, name: &str, id: i64) {
    if name.is_empty() {
        put_uint(out, 2);
    } else {
        put_uint(out, 1);
        put_bytes(out, name.as_bytes());
        put_uint(out, 1);
    }
    put_int(out, id);
    put_uint(out, 0);
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::Bool(b) => !b,
        Value::Int(i) => *i == 0,
        Value::Uint(u) => *u == 0,
        Value::Float(f) => *f == 0.0,
        Value::String(s) => s.is_empty(),
        Value::Bytes(b) => b.is_empty(),
        Value::Slice(s) => s.is_empty(),
        Value::Map(m) => m.is_empty(),
        Value::NilInterface => true,
        _ => false,
    }
}

impl Encoder {
    /// Ids from 65, as a fresh Go process allocates them (any id ≥ 64 is accepted).
    pub fn new() -> Self {
        Encoder { next_id: 65, ids: HashMap::new() }
    }

    fn id_of(&self, ty: &Type) -> Option<i64> {
        ty.builtin_id().or_else(|| self.ids.get(ty).copied())
    }

    /// Allocates ids for `ty` and its parts, appending definitions of new ones to `defs`,
    /// top-level first (as Go does; decoders accept forward references).
    fn define(&mut self, ty: &Type, defs: &mut Vec<Vec<u8>>) -> i64 {
        if let Some(id) = self.id_of(ty) {
            return id;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.ids.insert(ty.clone(), id);
        let slot = defs.len();
        defs.push(Vec::new());
        let mut body = Vec::new();
        put_int(&mut body, -id);
        match ty {
            Type::Struct { name, fields } => {
                let field_ids: Vec<(String, i64)> =
                    fields.iter().map(|(n, t)| (n.clone(), self.define(t, defs))).collect();
                put_uint(&mut body, 3); // wireType.StructT
                put_uint(&mut body, 1); // structType.CommonType
                common_type(&mut body, name, id);
                put_uint(&mut body, 1); // structType.Field
                put_uint(&mut body, field_ids.len() as u64);
                for (n, fid) in field_ids {
                    put_uint(&mut body, 1);
                    put_bytes(&mut body, n.as_bytes());
                    put_uint(&mut body, 1);
                    put_int(&mut body, fid);
                    put_uint(&mut body, 0);
                }
                put_uint(&mut body, 0);
            }
            Type::Slice { name, elem } => {
                let elem_id = self.define(elem, defs);
                put_uint(&mut body, 2); // wireType.SliceT
                put_uint(&mut body, 1);
                common_type(&mut body, name, id);
                put_uint(&mut body, 1);
                put_int(&mut body, elem_id);
                put_uint(&mut body, 0);
            }
            Type::Map { name, key, elem } => {
                let key_id = self.define(key, defs);
                let elem_id = self.define(elem, defs);
                put_uint(&mut body, 4); // wireType.MapT
                put_uint(&mut body, 1);
                common_type(&mut body, name, id);
                put_uint(&mut body, 1);
                put_int(&mut body, key_id);
                put_uint(&mut body, 1);
                put_int(&mut body, elem_id);
                put_uint(&mut body, 0);
            }
            _ => unreachable!("basic types have predefined ids"),
        }
        put_uint(&mut body, 0); // end of wireType
        defs[slot] = body;
        id
    }

    /// The bytes of one `Encode` call: definitions this stream has not sent, then the value.
    pub fn encode(&mut self, ty: &Type, value: &Value) -> Result<Vec<u8>, GobError> {
        let mut defs = Vec::new();
        let id = self.define(ty, &mut defs);
        let mut out = Vec::new();
        for d in defs {
            message(&mut out, &d);
        }
        let mut body = Vec::new();
        put_int(&mut body, id);
        if !matches!(ty, Type::Struct { .. }) {
            put_uint(&mut body, 0);
        }
        self.value(&mut body, ty, value)?;
        message(&mut out, &body);
        Ok(out)
    }

    fn value(&self, out: &mut Vec<u8>, ty: &Type, v: &Value) -> Result<(), GobError> {
        let mismatch = || GobError::Mismatch(format!("{v:?} is not a {ty:?}"));
        match (ty, v) {
            (Type::Bool, Value::Bool(b)) => put_uint(out, u64::from(*b)),
            (Type::Int, Value::Int(i)) => put_int(out, *i),
            (Type::Uint, Value::Uint(u)) => put_uint(out, *u),
            (Type::Float, Value::Float(f)) => put_float(out, *f),
            (Type::String, Value::String(s)) => put_bytes(out, s.as_bytes()),
            (Type::Bytes, Value::Bytes(b)) => put_bytes(out, b),
            (Type::Slice { elem, .. }, Value::Slice(items)) => {
                put_uint(out, items.len() as u64);
                for item in items {
                    self.value(out, elem, item)?;
                }
            }
            (Type::Map { key, elem, .. }, Value::Map(pairs)) => {
                put_uint(out, pairs.len() as u64);
                for (k, e) in pairs {
                    self.value(out, key, k)?;
                    self.value(out, elem, e)?;
                }
            }
            (Type::Struct { fields, .. }, Value::Struct(values)) => {
                let mut last: i64 = -1;
                for (i, (name, fty)) in fields.iter().enumerate() {
                    let given = values.iter().find(|(n, _)| n == name).map(|(_, v)| v);
                    let empty = Value::Struct(Vec::new());
                    let value = match (given, fty) {
                        // Nested structs are always sent, even when zero (as Go does).
                        (None, Type::Struct { .. }) => &empty,
                        (None, _) => continue,
                        (Some(v), Type::Struct { .. }) => v,
                        (Some(v), _) if is_zero(v) => continue,
                        (Some(v), _) => v,
                    };
                    put_uint(out, (i as i64 - last) as u64);
                    last = i as i64;
                    self.value(out, fty, value)?;
                }
                put_uint(out, 0);
            }
            _ => return Err(mismatch()),
        }
        Ok(())
    }
}
