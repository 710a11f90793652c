//! The decoder: reads type definitions as they arrive and values of any defined type.

use std::collections::HashMap;

use super::wire::Reader;
use super::{GobError, Value};

const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone)]
enum WireType {
    Struct {
        fields: Vec<(String, i64)>,
    },
    Slice {
        elem: i64,
    },
    Array {
        elem: i64,
        len: u64,
    },
    Map {
        key: i64,
        elem: i64,
    },
    /// GobEncoder, BinaryMarshaler, TextMarshaler: the value is a byte string.
    Opaque,
}

/// One direction of one connection: the types defined on it so far.
#[derive(Debug, Default)]
pub struct Decoder {
    types: HashMap<i64, WireType>,
}

/// Calls `field` for each (field number, reader) of a struct value until its end marker.
fn struct_fields<F>(r: &mut Reader<'_>, mut field: F) -> Result<(), GobError>
where
    F: FnMut(&mut Reader<'_>, usize) -> Result<(), GobError>,
{
    let mut number: i64 = -1;
    loop {
        let delta = r.uint()?;
        if delta == 0 {
            return Ok(());
        }
        number = number
            .checked_add(i64::try_from(delta).map_err(|_| GobError::Corrupt("field delta too large".into()))?)
            .ok_or_else(|| GobError::Corrupt("field number overflow".into()))?;
        field(r, usize::try_from(number).map_err(|_| GobError::Corrupt("bad field number".into()))?)?;
    }
}

/// Reads a `CommonType` and returns its name (the id in it is ignored: definitions are keyed
/// by the id of their message, which Go does not always repeat here).
fn common_type(r: &mut Reader<'_>) -> Result<String, GobError> {
    let mut name = String::new();
    struct_fields(r, |r, n| match n {
        0 => {
            name = r.string()?;
            Ok(())
        }
        1 => r.int().map(|_| ()),
        _ => Err(GobError::Corrupt(format!("CommonType has no field {n}"))),
    })?;
    Ok(name)
}

fn wire_type(r: &mut Reader<'_>) -> Result<WireType, GobError> {
    let mut found = None;
    struct_fields(r, |r, n| {
        let t = match n {
            0 => {
                let (mut elem, mut len) = (0, 0);
                struct_fields(r, |r, f| match f {
                    0 => common_type(r).map(|_| ()),
                    1 => r.int().map(|v| elem = v),
                    2 => r.int().map(|v| len = v.max(0) as u64),
                    _ => Err(GobError::Corrupt(format!("arrayType has no field {f}"))),
                })?;
                WireType::Array { elem, len }
            }
            1 => {
                let mut elem = 0;
                struct_fields(r, |r, f| match f {
                    0 => common_type(r).map(|_| ()),
                    1 => r.int().map(|v| elem = v),
                    _ => Err(GobError::Corrupt(format!("sliceType has no field {f}"))),
                })?;
                WireType::Slice { elem }
            }
            2 => {
                let mut fields = Vec::new();
                struct_fields(r, |r, f| match f {
                    0 => common_type(r).map(|_| ()),
                    1 => {
                        for _ in 0..r.count()? {
                            let (mut name, mut id) = (String::new(), 0);
                            struct_fields(r, |r, g| match g {
                                0 => r.string().map(|s| name = s),
                                1 => r.int().map(|v| id = v),
                                _ => Err(GobError::Corrupt(format!("fieldType has no field {g}"))),
                            })?;
                            fields.push((name, id));
                        }
                        Ok(())
                    }
                    _ => Err(GobError::Corrupt(format!("structType has no field {f}"))),
                })?;
                WireType::Struct { fields }
            }
            3 => {
                let (mut key, mut elem) = (0, 0);
                struct_fields(r, |r, f| match f {
                    0 => common_type(r).map(|_| ()),
                    1 => r.int().map(|v| key = v),
                    2 => r.int().map(|v| elem = v),
                    _ => Err(GobError::Corrupt(format!("mapType has no field {f}"))),
                })?;
                WireType::Map { key, elem }
            }
            4..=6 => {
                struct_fields(r, |r, f| match f {
                    0 => common_type(r).map(|_| ()),
                    _ => Err(GobError::Corrupt(format!("gobEncoderType has no field {f}"))),
                })?;
                WireType::Opaque
            }
            _ => return Err(GobError::Corrupt(format!("wireType has no field {n}"))),
        };
        if found.replace(t).is_some() {
            return Err(GobError::Corrupt("wireType with more than one kind".into()));
        }
        Ok(())
    })?;
    found.ok_or_else(|| GobError::Corrupt("empty wireType".into()))
}

impl Decoder {
    pub fn new() -> Self {
        Decoder::default()
    }

    fn define(&mut self, r: &mut Reader<'_>, id: i64) -> Result<(), GobError> {
        if id < 64 {
            return Err(GobError::Corrupt(format!("type id {id} is reserved")));
        }
        if self.types.contains_key(&id) {
            return Err(GobError::Corrupt("duplicate type received".into()));
        }
        let t = wire_type(r)?;
        self.types.insert(id, t);
        Ok(())
    }

    /// Decodes one message (without its length prefix). A type definition returns `None`;
    /// a value returns it.
    pub fn message(&mut self, body: &[u8]) -> Result<Option<Value>, GobError> {
        let mut r = Reader::new(body);
        let id = r.int()?;
        if id < 0 {
            let id = id.checked_neg().ok_or_else(|| GobError::Corrupt("bad type id".into()))?;
            self.define(&mut r, id)?;
            if !r.is_empty() {
                return Err(GobError::Corrupt("extra data in buffer".into()));
            }
            return Ok(None);
        }
        let value = self.top_level(&mut r, id)?;
        if !r.is_empty() {
            return Err(GobError::Corrupt("extra data in buffer".into()));
        }
        Ok(Some(value))
    }

    fn top_level(&mut self, r: &mut Reader<'_>, id: i64) -> Result<Value, GobError> {
        if matches!(self.types.get(&id), Some(WireType::Struct { .. })) {
            return self.value(r, id, 0);
        }
        if r.uint()? != 0 {
            return Err(GobError::Corrupt("decode: corrupted data: non-zero delta for singleton".into()));
        }
        self.value(r, id, 0)
    }

    fn value(&mut self, r: &mut Reader<'_>, id: i64, depth: usize) -> Result<Value, GobError> {
        if depth > MAX_DEPTH {
            return Err(GobError::TooDeep);
        }
        Ok(match id {
            1 => match r.uint()? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                other => return Err(GobError::Corrupt(format!("invalid bool {other}"))),
            },
            2 => Value::Int(r.int()?),
            3 => Value::Uint(r.uint()?),
            4 => Value::Float(r.float()?),
            5 => Value::Bytes(r.bytes()?.to_vec()),
            6 => Value::String(r.string()?),
            7 => Value::Complex(r.float()?, r.float()?),
            8 => self.interface(r, depth)?,
            _ => {
                let t = self.types.get(&id).cloned().ok_or(GobError::UnknownType(id))?;
                match t {
                    WireType::Struct { fields } => {
                        let mut out = Vec::new();
                        struct_fields(r, |r, n| {
                            let (name, fid) = fields
                                .get(n)
                                .ok_or_else(|| GobError::Corrupt(format!("field {n} beyond the type's fields")))?;
                            let v = self.value(r, *fid, depth + 1)?;
                            out.push((name.clone(), v));
                            Ok(())
                        })?;
                        Value::Struct(out)
                    }
                    WireType::Slice { elem } => {
                        let n = r.count()?;
                        let mut items = Vec::with_capacity(n.min(1024));
                        for _ in 0..n {
                            items.push(self.value(r, elem, depth + 1)?);
                        }
                        Value::Slice(items)
                    }
                    WireType::Array { elem, len } => {
                        let n = r.count()?;
                        if n as u64 != len {
                            return Err(GobError::Corrupt(format!("array of {n} elements, type says {len}")));
                        }
                        let mut items = Vec::with_capacity(n.min(1024));
                        for _ in 0..n {
                            items.push(self.value(r, elem, depth + 1)?);
                        }
                        Value::Array(items)
                    }
                    WireType::Map { key, elem } => {
                        let n = r.count()?;
                        let mut pairs = Vec::with_capacity(n.min(1024));
                        for _ in 0..n {
                            let k = self.value(r, key, depth + 1)?;
                            let v = self.value(r, elem, depth + 1)?;
                            pairs.push((k, v));
                        }
                        Value::Map(pairs)
                    }
                    WireType::Opaque => Value::Opaque(r.bytes()?.to_vec()),
                }
            }
        })
    }

    /// name, then type definitions (each followed by the length of what comes next), the
    /// concrete type id, the value's byte count and the value.
    fn interface(&mut self, r: &mut Reader<'_>, depth: usize) -> Result<Value, GobError> {
        let name = r.string()?;
        if name.is_empty() {
            return Ok(Value::NilInterface);
        }
        let id = loop {
            let id = r.int()?;
            if id >= 0 {
                break id;
            }
            let id = id.checked_neg().ok_or_else(|| GobError::Corrupt("bad type id".into()))?;
            self.define(r, id)?;
            r.uint()?;
        };
        let bytes = r.bytes()?;
        let mut inner = Reader::new(bytes);
        let v = if matches!(self.types.get(&id), Some(WireType::Struct { .. })) {
            self.value(&mut inner, id, depth + 1)?
        } else {
            if inner.uint()? != 0 {
                return Err(GobError::Corrupt("interface value without singleton marker".into()));
            }
            self.value(&mut inner, id, depth + 1)?
        };
        Ok(Value::Interface(name, Box::new(v)))
    }
}
