//! Primitive gob encodings: unsigned and signed integers, floats, byte strings.

use super::GobError;

pub fn put_uint(out: &mut Vec<u8>, v: u64) {
    if v < 128 {
        out.push(v as u8);
        return;
    }
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    out.push((-((8 - skip) as i8)) as u8);
    out.extend_from_slice(&bytes[skip..]);
}

pub fn put_int(out: &mut Vec<u8>, v: i64) {
    let u = if v < 0 { ((!v as u64) << 1) | 1 } else { (v as u64) << 1 };
    put_uint(out, u);
}

pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_uint(out, b.len() as u64);
    out.extend_from_slice(b);
}

pub fn put_float(out: &mut Vec<u8>, f: f64) {
    put_uint(out, f.to_bits().swap_bytes());
}

/// A cursor over one message.
pub struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data, pos: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    pub fn byte(&mut self) -> Result<u8, GobError> {
        let b = *self.data.get(self.pos).ok_or(GobError::Eof)?;
        self.pos += 1;
        Ok(b)
    }

    pub fn take(&mut self, n: u64) -> Result<&'a [u8], GobError> {
        let n = usize::try_from(n).map_err(|_| GobError::Eof)?;
        let end = self.pos.checked_add(n).ok_or(GobError::Eof)?;
        let slice = self.data.get(self.pos..end).ok_or(GobError::Eof)?;
        self.pos = end;
        Ok(slice)
    }

    pub fn uint(&mut self) -> Result<u64, GobError> {
        let first = self.byte()?;
        if first < 128 {
            return Ok(u64::from(first));
        }
        let n = 256 - usize::from(first);
        if n == 0 || n > 8 {
            return Err(GobError::Corrupt(format!("invalid uint length byte {first:#x}")));
        }
        let mut v: u64 = 0;
        for b in self.take(n as u64)? {
            v = (v << 8) | u64::from(*b);
        }
        Ok(v)
    }

    pub fn int(&mut self) -> Result<i64, GobError> {
        let u = self.uint()?;
        Ok(if u & 1 == 1 { !((u >> 1) as i64) } else { (u >> 1) as i64 })
    }

    pub fn float(&mut self) -> Result<f64, GobError> {
        Ok(f64::from_bits(self.uint()?.swap_bytes()))
    }

    /// A length-prefixed byte string, bounded by what is left in the message.
    pub fn bytes(&mut self) -> Result<&'a [u8], GobError> {
        let n = self.uint()?;
        self.take(n)
    }

    pub fn string(&mut self) -> Result<String, GobError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| GobError::Corrupt("string is not UTF-8".into()))
    }

    /// A count of items, which cannot exceed the bytes left (every item takes one at least).
    pub fn count(&mut self) -> Result<usize, GobError> {
        let n = self.uint()?;
        let left = (self.data.len() - self.pos) as u64;
        if n > left {
            return Err(GobError::Corrupt(format!("count {n} larger than the {left} bytes left")));
        }
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uint(v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        put_uint(&mut out, v);
        out
    }

    fn int(v: i64) -> Vec<u8> {
        let mut out = Vec::new();
        put_int(&mut out, v);
        out
    }

    #[test]
    fn integers_match_the_spec_examples() {
        assert_eq!(uint(0), [0x00]);
        assert_eq!(uint(7), [0x07]);
        assert_eq!(uint(256), [0xFE, 0x01, 0x00]);
        assert_eq!(int(3), [0x06]);
        assert_eq!(int(22), [0x2C]);
        assert_eq!(int(65), [0xFF, 0x82]);
        assert_eq!(int(-65), [0xFF, 0x81]);
        assert_eq!(int(-129), [0xFE, 0x01, 0x01]);
        let mut f = Vec::new();
        put_float(&mut f, 17.0);
        assert_eq!(f, [0xFE, 0x31, 0x40]);
    }

    #[test]
    fn integers_round_trip() {
        for v in [0i64, 1, -1, 63, 64, -64, 127, 128, 255, 256, i64::MAX, i64::MIN, 123_456_789] {
            assert_eq!(Reader::new(&int(v)).int().unwrap(), v);
        }
        for v in [0u64, 127, 128, 65535, u64::MAX] {
            assert_eq!(Reader::new(&uint(v)).uint().unwrap(), v);
        }
        let mut f = Vec::new();
        put_float(&mut f, -2.5);
        assert_eq!(Reader::new(&f).float().unwrap(), -2.5);
    }

    #[test]
    fn truncated_and_bad_input_is_an_error() {
        assert_eq!(Reader::new(&[]).uint(), Err(GobError::Eof));
        assert_eq!(Reader::new(&[0xFE, 0x01]).uint(), Err(GobError::Eof));
        assert!(Reader::new(&[0x80]).uint().is_err());
        assert!(Reader::new(&[0xF7, 0, 0, 0, 0, 0, 0, 0, 0, 0]).uint().is_err());
        assert_eq!(Reader::new(&[0x05, b'a']).bytes(), Err(GobError::Eof));
        assert!(Reader::new(&[0xFF, 0xFF]).count().is_err());
    }
}
