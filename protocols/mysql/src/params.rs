//! The bound parameters of a `COM_STMT_EXECUTE`, decoded to text for the audit trail.
//!
//! This module owns one pure function family: given the payload of a `COM_STMT_EXECUTE`
//! packet, the parameter count the server announced in its `COM_STMT_PREPARE_OK`, and
//! the parameter types remembered from an earlier execution of the same statement, it
//! returns each parameter as text an auditor can read (`None` for SQL NULL) together
//! with the types to remember for the next execution ([`ParamTypes`]). It never touches
//! a socket or a policy; the relay decides what to do with the text.
//!
//! Decoding follows what the *server* does with the bytes, not what a lenient client
//! library would accept, and fails closed ([`ParamsError`]) wherever the two could
//! disagree, so the values in the audit trail are the values the statement ran with.
//!
//! # Layout
//!
//! ```text
//! int<1>  0x17 COM_STMT_EXECUTE
//! int<4>  statement id
//! int<1>  flags (cursor type; not looked at here)
//! int<4>  iteration count (must be 1)
//! if param_count > 0:
//!   NULL bitmap, (param_count + 7) / 8 bytes, bit i = parameter i is NULL
//!   int<1>  new-params-bound flag (0 or 1)
//!   if 1: param_count × (int<1> type, int<1> flags: 0x80 = unsigned)
//!   the binary-protocol values of the parameters that are neither NULL nor long data
//! ```
//!
//! Not handled, on purpose:
//!
//! * `CLIENT_QUERY_ATTRIBUTES` (MySQL 8.0.23+): with that capability the packet may carry
//!   a length-encoded `parameter_count` after the iteration count (when the flags have
//!   `PARAMETER_COUNT_AVAILABLE`, 0x08) and a length-encoded name after every type. The
//!   gateway never announces `CLIENT_QUERY_ATTRIBUTES` to either side, and a server
//!   without it ignores the 0x08 flag, so this module assumes neither field is present.
//!   A client that sent them anyway ends in an error here, never a wrong decode,
//!   because trailing bytes are refused.
//! * MariaDB's `COM_STMT_BULK_EXECUTE` (0xfa) and its parameter indicator bytes: the
//!   gateway refuses that command, and this module only accepts 0x17.
//!
//! # `COM_STMT_SEND_LONG_DATA`
//!
//! A parameter whose value was streamed with `COM_STMT_SEND_LONG_DATA` since the
//! statement's last execution (or `COM_STMT_RESET`) has *no bytes at all* in the
//! execute packet, and nothing in the packet says so — only the server's per-statement
//! state does. Decoding such a packet as if no long data had been sent shifts every
//! later value, and a crafted packet can decode without error into values other than
//! the ones the server uses. [`decode_execute_params`] is therefore only correct when
//! no long data is pending for the statement; when some is, the caller must use
//! [`decode_execute_params_with_long_data`] with the data it forwarded (or refuse).
//!
//! # Where the server and `mysql_common` differ
//!
//! `mysql_common` (0.37) provides the packet pieces used here: [`ColumnType`], the
//! NULL bitmap ([`NullBitmap`]), checked little-endian readers ([`ParseBuf`]) and the
//! binary value decoder (`ValueDeserializer<BinValue>`), which the tests' client
//! (`ComStmtExecuteRequestBuilder`) mirrors. Its decoder is written for rows the
//! *server* sends and is more lenient than the server's parameter parser, so it is
//! only used behind the checks below, which are hand-written for that reason:
//!
//! * length-encoded string lengths: `mysql_common` reads a `0xfb` or `0xff` first byte
//!   as length 0; MySQL reads `0xfb` as 251 and refuses `0xff`, MariaDB reads both as
//!   an 8-byte length. Both are refused here (see `lenenc_bytes`).
//! * `MYSQL_TYPE_INT24` and `MYSQL_TYPE_YEAR`: `mysql_common` reads 4 and 2 bytes; the
//!   server's parameter parser has no case for them and reads a length-encoded string.
//!   Client libraries never send them as parameter types; they are refused, as are the
//!   server-internal types (`NEWDATE`, `TIMESTAMP2`, ...), `VECTOR`, and unknown bytes
//!   (on which `mysql_common` would panic).
//! * `MYSQL_TYPE_NULL` with its NULL-bitmap bit clear: `mysql_common` reads no bytes;
//!   the server reads a length-encoded string. Clients always set the bit; refused.
//! * Temporal lengths: `mysql_common` accepts any length byte; only 0/4/7/11 (dates)
//!   and 0/8/12 (`TIME`) are accepted here. A `TIME` sign byte other than 0/1 is read
//!   as negative by the server and positive by `mysql_common`; refused.
//! * Flag bytes other than 0x00/0x80: the server reads type and flags as one 16-bit
//!   code, so other bits make an unknown type it parses as a string; refused.
//! * Trailing bytes after the last value, and an iteration count other than 1, which
//!   no client sends; refused.

use std::borrow::Cow;

use mysql_common::constants::{ColumnFlags, ColumnType};
use mysql_common::io::ParseBuf;
use mysql_common::packets::NullBitmap;
use mysql_common::value::{BinValue, ClientSide, Value, ValueDeserializer};

use crate::command::COM_STMT_EXECUTE;

/// A prepared statement has at most this many parameters (`COM_STMT_PREPARE_OK`
/// carries the count in two bytes).
pub const MAX_PARAMS: usize = u16::MAX as usize;

/// The flag-byte bit that marks an integer parameter as unsigned.
const UNSIGNED: u8 = 0x80;

/// Errors from decoding a `COM_STMT_EXECUTE`. Every variant means "do not forward this
/// execution": the gateway could not tell what values the server would run it with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    #[error("not a COM_STMT_EXECUTE packet (command byte {0:#04x})")]
    NotExecute(u8),
    #[error("COM_STMT_EXECUTE packet ends inside the {0}")]
    Truncated(&'static str),
    #[error("COM_STMT_EXECUTE packet ends inside the value of parameter {index}")]
    ValueTruncated { index: usize },
    #[error("COM_STMT_EXECUTE iteration count is {0}, not 1")]
    IterationCount(u32),
    #[error("{0} parameters is more than a prepared statement can have ({MAX_PARAMS})")]
    TooManyParams(usize),
    #[error("COM_STMT_EXECUTE new-params-bound flag is {0:#04x}, not 0 or 1")]
    BoundFlag(u8),
    #[error("the execution reuses earlier parameter types, but none are known for this statement")]
    NoPreviousTypes,
    #[error("the statement has {expected} parameters, but {got} parameter types are remembered")]
    CountMismatch { expected: usize, got: usize },
    #[error("parameter {index} has type byte {type_byte:#04x}, which the gateway does not decode")]
    UnsupportedType { index: usize, type_byte: u8 },
    #[error("parameter {index} has flag byte {flags:#04x}; only 0x80 (unsigned) is defined")]
    ParamFlags { index: usize, flags: u8 },
    #[error("parameter {index} has type NULL but its NULL-bitmap bit is clear")]
    NullTypeNotNull { index: usize },
    #[error("parameter {index} has a length prefix starting with {byte:#04x}, which is not a valid length")]
    BadLengthPrefix { index: usize, byte: u8 },
    #[error("parameter {index} claims {len} bytes, but only {remaining} remain in the packet")]
    LengthPastEnd {
        index: usize,
        len: u64,
        remaining: usize,
    },
    #[error("parameter {index}: {what} value length {len} is not one the binary protocol uses")]
    TemporalLength {
        index: usize,
        what: &'static str,
        len: u8,
    },
    #[error("parameter {index}: TIME sign byte is {byte:#04x}, not 0 or 1")]
    TimeSign { index: usize, byte: u8 },
    #[error("{0} bytes follow the last parameter value")]
    TrailingBytes(usize),
    #[error(
        "long data is listed for parameter {index}, but the statement has {param_count} parameters"
    )]
    LongDataIndex { index: usize, param_count: usize },
    #[error("long data is listed twice for parameter {index}")]
    LongDataTwice { index: usize },
    #[error("parameter {index} was sent as long data but has type byte {type_byte:#04x}, not a string or BLOB type")]
    LongDataType { index: usize, type_byte: u8 },
    #[error("parameter {index} was sent as long data but is also marked NULL")]
    LongDataNull { index: usize },
}

/// The type of one parameter as the client bound it: a column type and, for integers,
/// signedness. Only types this module can decode exist as `ParamType`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamType {
    column_type: ColumnType,
    unsigned: bool,
}

impl ParamType {
    pub fn column_type(&self) -> ColumnType {
        self.column_type
    }

    /// The 0x80 flag: integer values are unsigned. Ignored for other types.
    pub fn unsigned(&self) -> bool {
        self.unsigned
    }

    /// Reads one (type, flags) pair of the packet, refusing what the gateway does not
    /// decode exactly as the server does.
    fn from_wire(index: usize, type_byte: u8, flags: u8) -> Result<Self, ParamsError> {
        if flags & !UNSIGNED != 0 {
            return Err(ParamsError::ParamFlags { index, flags });
        }
        let unsupported = ParamsError::UnsupportedType { index, type_byte };
        let column_type = ColumnType::try_from(type_byte).map_err(|_| unsupported.clone())?;
        if kind(column_type).is_none() {
            return Err(unsupported);
        }
        Ok(ParamType {
            column_type,
            unsigned: flags & UNSIGNED != 0,
        })
    }
}

/// What the gateway remembers per prepared statement between executions: the types
/// sent with the last execution that bound new types, one per parameter (so also the
/// parameter count from the server's `COM_STMT_PREPARE_OK`).
///
/// Store the value [`decode_execute_params`] returns only if the execution is then
/// forwarded: the server keeps the types of executions it received, and a refused
/// packet never reaches it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParamTypes(Vec<ParamType>);

impl ParamTypes {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_slice(&self) -> &[ParamType] {
        &self.0
    }
}

/// How a parameter type's value is encoded and rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// TINY, SHORT, LONG, LONGLONG: fixed-width little-endian integer, decimal text.
    Int,
    /// FLOAT, DOUBLE: IEEE little-endian, Rust's shortest round-trip text.
    Float,
    /// DATE: length byte 0/4/7/11, rendered `YYYY-MM-DD` (the server drops any time).
    Date,
    /// DATETIME, TIMESTAMP: length byte 0/4/7/11, `YYYY-MM-DD[ HH:MM:SS[.ffffff]]`.
    DateTime,
    /// TIME: length byte 0/8/12, `[-][D ]HH:MM:SS[.ffffff]`.
    Time,
    /// Length-encoded text: the string if it is UTF-8, else `\x` + hex.
    Text,
    /// Length-encoded binary: always `\x` + hex.
    Binary,
    /// NULL: no value bytes; only valid with the NULL-bitmap bit set.
    Null,
}

/// The decodable parameter types; `None` for the rest.
fn kind(column_type: ColumnType) -> Option<Kind> {
    use ColumnType::*;
    Some(match column_type {
        MYSQL_TYPE_TINY | MYSQL_TYPE_SHORT | MYSQL_TYPE_LONG | MYSQL_TYPE_LONGLONG => Kind::Int,
        MYSQL_TYPE_FLOAT | MYSQL_TYPE_DOUBLE => Kind::Float,
        MYSQL_TYPE_DATE => Kind::Date,
        MYSQL_TYPE_DATETIME | MYSQL_TYPE_TIMESTAMP => Kind::DateTime,
        MYSQL_TYPE_TIME => Kind::Time,
        MYSQL_TYPE_DECIMAL
        | MYSQL_TYPE_NEWDECIMAL
        | MYSQL_TYPE_VARCHAR
        | MYSQL_TYPE_VAR_STRING
        | MYSQL_TYPE_STRING
        | MYSQL_TYPE_ENUM
        | MYSQL_TYPE_SET
        | MYSQL_TYPE_JSON => Kind::Text,
        MYSQL_TYPE_TINY_BLOB
        | MYSQL_TYPE_BLOB
        | MYSQL_TYPE_MEDIUM_BLOB
        | MYSQL_TYPE_LONG_BLOB
        | MYSQL_TYPE_GEOMETRY
        | MYSQL_TYPE_BIT => Kind::Binary,
        MYSQL_TYPE_NULL => Kind::Null,
        // INT24 and YEAR: the server parses them as strings, mysql_common as integers.
        // The rest are server-internal, replication-only, or new (VECTOR).
        MYSQL_TYPE_INT24
        | MYSQL_TYPE_YEAR
        | MYSQL_TYPE_NEWDATE
        | MYSQL_TYPE_TIMESTAMP2
        | MYSQL_TYPE_DATETIME2
        | MYSQL_TYPE_TIME2
        | MYSQL_TYPE_TYPED_ARRAY
        | MYSQL_TYPE_VECTOR
        | MYSQL_TYPE_UNKNOWN => return None,
    })
}

/// Decodes the parameters of a `COM_STMT_EXECUTE` packet for the audit trail.
///
/// * `body`: the whole command payload, starting with the 0x17 command byte.
/// * `param_count`: the parameter count from the server's `COM_STMT_PREPARE_OK`.
/// * `previous`: the types returned by the last successful decode of an execution of
///   this statement, used when the client does not bind new types.
///
/// Returns one entry per parameter (`None` is SQL NULL) and the types to remember.
/// Assumes no `COM_STMT_SEND_LONG_DATA` is pending for the statement (see the module
/// documentation); otherwise use [`decode_execute_params_with_long_data`].
pub fn decode_execute_params(
    body: &[u8],
    param_count: usize,
    previous: Option<&ParamTypes>,
) -> Result<(Vec<Option<String>>, ParamTypes), ParamsError> {
    decode_execute_params_with_long_data(body, param_count, previous, &[])
}

/// [`decode_execute_params`] for a statement with parameters streamed by
/// `COM_STMT_SEND_LONG_DATA` since its last execution or `COM_STMT_RESET`.
///
/// `long_data` lists each such parameter once, by index, with all the data the relay
/// forwarded for it, concatenated in order. Those parameters have no bytes in the
/// execute packet; their text is rendered from `long_data` by their bound type.
pub fn decode_execute_params_with_long_data(
    body: &[u8],
    param_count: usize,
    previous: Option<&ParamTypes>,
    long_data: &[(usize, &[u8])],
) -> Result<(Vec<Option<String>>, ParamTypes), ParamsError> {
    if param_count > MAX_PARAMS {
        return Err(ParamsError::TooManyParams(param_count));
    }
    if let Some(previous) = previous {
        if previous.len() != param_count {
            return Err(ParamsError::CountMismatch {
                expected: param_count,
                got: previous.len(),
            });
        }
    }
    // Long data by parameter index (empty when there is none).
    let mut streamed: Vec<Option<&[u8]>> = Vec::new();
    if !long_data.is_empty() {
        streamed.resize(param_count, None);
    }
    for &(index, data) in long_data {
        match streamed.get_mut(index) {
            None => return Err(ParamsError::LongDataIndex { index, param_count }),
            Some(Some(_)) => return Err(ParamsError::LongDataTwice { index }),
            Some(slot) => *slot = Some(data),
        }
    }

    let mut buf = ParseBuf(body);
    let command = buf
        .checked_eat_u8()
        .ok_or(ParamsError::Truncated("command byte"))?;
    if command != COM_STMT_EXECUTE {
        return Err(ParamsError::NotExecute(command));
    }
    buf.checked_eat_u32_le()
        .ok_or(ParamsError::Truncated("statement id"))?;
    buf.checked_eat_u8()
        .ok_or(ParamsError::Truncated("flags"))?;
    let iterations = buf
        .checked_eat_u32_le()
        .ok_or(ParamsError::Truncated("iteration count"))?;
    if iterations != 1 {
        return Err(ParamsError::IterationCount(iterations));
    }

    if param_count == 0 {
        // Nothing else is sent (without CLIENT_QUERY_ATTRIBUTES, see the module doc).
        return match buf.len() {
            0 => Ok((Vec::new(), ParamTypes::default())),
            n => Err(ParamsError::TrailingBytes(n)),
        };
    }

    // mysql_common reads exactly (param_count + 7) / 8 bytes, or fails.
    let bitmap: NullBitmap<ClientSide, Cow<'_, [u8]>> = buf
        .parse(param_count)
        .map_err(|_| ParamsError::Truncated("NULL bitmap"))?;

    let types = match buf
        .checked_eat_u8()
        .ok_or(ParamsError::Truncated("new-params-bound flag"))?
    {
        1 => {
            // Bounded by MAX_PARAMS, checked above; each type is checked to be present.
            let mut types = Vec::with_capacity(param_count);
            for index in 0..param_count {
                let (Some(type_byte), Some(flags)) = (buf.checked_eat_u8(), buf.checked_eat_u8())
                else {
                    return Err(ParamsError::Truncated("parameter types"));
                };
                types.push(ParamType::from_wire(index, type_byte, flags)?);
            }
            ParamTypes(types)
        }
        0 => previous.cloned().ok_or(ParamsError::NoPreviousTypes)?,
        other => return Err(ParamsError::BoundFlag(other)),
    };

    let mut values = Vec::with_capacity(param_count);
    for (index, ty) in types.0.iter().enumerate() {
        let null = bitmap.is_null(index);
        values.push(match (null, streamed.get(index).copied().flatten()) {
            // MySQL 8 lets the NULL bit win, MariaDB and MySQL 5.7 the long data.
            (true, Some(_)) => return Err(ParamsError::LongDataNull { index }),
            (true, None) => None,
            (false, Some(data)) => Some(long_data_text(index, *ty, data)?),
            (false, None) => Some(value_text(index, *ty, &mut buf)?),
        });
    }
    if !buf.is_empty() {
        return Err(ParamsError::TrailingBytes(buf.len()));
    }
    Ok((values, types))
}

/// Renders data sent with `COM_STMT_SEND_LONG_DATA`. The server accepts long data only
/// for the types `TINY_BLOB` (249) through `STRING` (254) and refuses the execution
/// otherwise.
fn long_data_text(index: usize, ty: ParamType, data: &[u8]) -> Result<String, ParamsError> {
    let type_byte = ty.column_type as u8;
    if !(ColumnType::MYSQL_TYPE_TINY_BLOB as u8..=ColumnType::MYSQL_TYPE_STRING as u8)
        .contains(&type_byte)
    {
        return Err(ParamsError::LongDataType { index, type_byte });
    }
    Ok(match kind(ty.column_type) {
        Some(Kind::Text) => text_or_hex(data),
        _ => hex(data),
    })
}

/// Decodes and renders one non-NULL value from the head of `buf`.
fn value_text(index: usize, ty: ParamType, buf: &mut ParseBuf<'_>) -> Result<String, ParamsError> {
    let kind = kind(ty.column_type).ok_or(ParamsError::UnsupportedType {
        index,
        type_byte: ty.column_type as u8,
    })?;
    match kind {
        Kind::Null => return Err(ParamsError::NullTypeNotNull { index }),
        Kind::Text => return Ok(text_or_hex(lenenc_bytes(index, buf)?)),
        Kind::Binary => return Ok(hex(lenenc_bytes(index, buf)?)),
        Kind::Date | Kind::DateTime => check_temporal(index, buf, "date", &[0, 4, 7, 11])?,
        Kind::Time => {
            check_temporal(index, buf, "TIME", &[0, 8, 12])?;
            if let Some(&byte) = buf.0.get(1) {
                if buf.0.first() != Some(&0) && byte > 1 {
                    return Err(ParamsError::TimeSign { index, byte });
                }
            }
        }
        Kind::Int | Kind::Float => {}
    }
    // Integers, floats and temporal values: mysql_common's binary decoder, now that
    // the type is one it handles like the server does and any length byte is checked.
    let flags = if ty.unsigned {
        ColumnFlags::UNSIGNED_FLAG
    } else {
        ColumnFlags::empty()
    };
    let value = buf
        .parse::<ValueDeserializer<BinValue>>((ty.column_type, flags))
        .map_err(|_| ParamsError::ValueTruncated { index })?
        .0;
    Ok(match (kind, value) {
        (_, Value::Int(v)) => v.to_string(),
        (_, Value::UInt(v)) => v.to_string(),
        (_, Value::Float(v)) => v.to_string(),
        (_, Value::Double(v)) => v.to_string(),
        (Kind::Date, Value::Date(y, mo, d, ..)) => format!("{y:04}-{mo:02}-{d:02}"),
        (_, Value::Date(y, mo, d, h, mi, s, us)) => {
            let mut out = format!("{y:04}-{mo:02}-{d:02}");
            if (h, mi, s, us) != (0, 0, 0, 0) {
                out.push_str(&format!(" {h:02}:{mi:02}:{s:02}"));
                if us != 0 {
                    out.push_str(&format!(".{us:06}"));
                }
            }
            out
        }
        (_, Value::Time(negative, days, h, mi, s, us)) => {
            let mut out = String::new();
            if negative {
                out.push('-');
            }
            if days != 0 {
                out.push_str(&format!("{days} "));
            }
            out.push_str(&format!("{h:02}:{mi:02}:{s:02}"));
            if us != 0 {
                out.push_str(&format!(".{us:06}"));
            }
            out
        }
        // Not produced for the types above; refuse rather than guess.
        (_, Value::NULL | Value::Bytes(_)) => {
            return Err(ParamsError::UnsupportedType {
                index,
                type_byte: ty.column_type as u8,
            })
        }
    })
}

/// Checks the length byte of a temporal value before mysql_common (which accepts any
/// length and pads or ignores) reads it.
fn check_temporal(
    index: usize,
    buf: &ParseBuf<'_>,
    what: &'static str,
    allowed: &[u8],
) -> Result<(), ParamsError> {
    let len = *buf.0.first().ok_or(ParamsError::ValueTruncated { index })?;
    if allowed.contains(&len) {
        Ok(())
    } else {
        Err(ParamsError::TemporalLength { index, what, len })
    }
}

/// Reads a length-encoded string strictly. Hand-written because mysql_common's
/// `checked_eat_lenenc_str` reads a `0xfb` or `0xff` first byte as length 0, where the
/// server reads something else (see the module doc); those are refused here, as is an
/// 8-byte length with its high half set (MySQL reads only the low 4 bytes). The length
/// is compared with what remains before anything is taken, so a hostile length costs
/// nothing.
fn lenenc_bytes<'a>(index: usize, buf: &mut ParseBuf<'a>) -> Result<&'a [u8], ParamsError> {
    let first = *buf.0.first().ok_or(ParamsError::ValueTruncated { index })?;
    if first == 0xfb || first == 0xff {
        return Err(ParamsError::BadLengthPrefix { index, byte: first });
    }
    let (len, used) = crate::lenenc_int(buf.0).ok_or(ParamsError::ValueTruncated { index })?;
    if len > u64::from(u32::MAX) {
        return Err(ParamsError::LengthPastEnd {
            index,
            len,
            remaining: buf.len().saturating_sub(used),
        });
    }
    if !buf.checked_skip(used) {
        return Err(ParamsError::ValueTruncated { index });
    }
    let remaining = buf.len();
    usize::try_from(len)
        .ok()
        .and_then(|n| buf.checked_eat(n))
        .ok_or(ParamsError::LengthPastEnd {
            index,
            len,
            remaining,
        })
}

/// The string if it is UTF-8, else its bytes in hex.
fn text_or_hex(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => hex(bytes),
    }
}

/// `\x` followed by the bytes in lowercase hex.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 + 2 * bytes.len());
    out.push_str("\\x");
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mysql_common::packets::ComStmtExecuteRequestBuilder;
    use mysql_common::proto::MySerialize;

    /// A COM_STMT_EXECUTE payload as mysql_common's client side builds it.
    fn packet(params: &[Value]) -> Vec<u8> {
        let (request, as_long_data) = ComStmtExecuteRequestBuilder::new(7).build(params);
        assert!(!as_long_data);
        let mut out = Vec::new();
        request.serialize(&mut out);
        out
    }

    /// Decodes a packet built from `params` with fresh types.
    fn decode(params: &[Value]) -> Vec<Option<String>> {
        let body = packet(params);
        let (values, types) = decode_execute_params(&body, params.len(), None).unwrap();
        assert_eq!(types.len(), params.len());
        values
    }

    fn s(text: &str) -> Option<String> {
        Some(text.to_owned())
    }

    /// A packet with hand-chosen (type, flags) pairs and raw value bytes.
    fn raw_packet(null_bitmap: &[u8], types: &[(u8, u8)], values: &[u8]) -> Vec<u8> {
        let mut out = vec![COM_STMT_EXECUTE, 7, 0, 0, 0, 0, 1, 0, 0, 0];
        out.extend_from_slice(null_bitmap);
        out.push(1);
        for (t, f) in types {
            out.extend_from_slice(&[*t, *f]);
        }
        out.extend_from_slice(values);
        out
    }

    /// The same execution with the new-params-bound flag 0 and no types.
    fn without_types(body: &[u8], param_count: usize) -> Vec<u8> {
        let flag_at = 10 + param_count.div_ceil(8);
        assert_eq!(body[flag_at], 1);
        let mut out = body[..flag_at].to_vec();
        out.push(0);
        out.extend_from_slice(&body[flag_at + 1 + 2 * param_count..]);
        out
    }

    /// A packet using every kind of value, NULLs included.
    fn rich_params() -> Vec<Value> {
        vec![
            Value::Int(-5),
            Value::NULL,
            Value::UInt(u64::MAX),
            Value::Float(1.5),
            Value::Double(-0.1),
            Value::Bytes("ünï ✓".as_bytes().to_vec()),
            Value::Bytes(vec![0xff, 0xfe]),
            Value::Date(2024, 2, 29, 23, 59, 58, 123_456),
            Value::Time(true, 2, 3, 4, 5, 6),
            Value::Bytes(vec![b'x'; 300]),
            Value::NULL,
        ]
    }

    #[test]
    fn integers_signed_unsigned_negative() {
        assert_eq!(
            decode(&[
                Value::Int(42),
                Value::Int(-7),
                Value::Int(0),
                Value::Int(i64::MIN),
                Value::Int(i64::MAX),
                Value::UInt(u64::MAX),
            ]),
            vec![
                s("42"),
                s("-7"),
                s("0"),
                s("-9223372036854775808"),
                s("9223372036854775807"),
                s("18446744073709551615"),
            ]
        );
        // Narrow integers as libmysqlclient binds them; the 0x80 flag decides the sign.
        let body = raw_packet(
            &[0],
            &[
                (1, 0),
                (1, 0x80),
                (2, 0),
                (2, 0x80),
                (3, 0),
                (3, 0x80),
                (8, 0x80),
            ],
            &[
                0xff, // TINY -1
                0xff, // TINY unsigned 255
                0x00, 0x80, // SHORT -32768
                0xff, 0xff, // SHORT unsigned 65535
                0xfe, 0xff, 0xff, 0xff, // LONG -2
                0xff, 0xff, 0xff, 0xff, // LONG unsigned 4294967295
                0x05, 0, 0, 0, 0, 0, 0, 0, // LONGLONG unsigned 5
            ],
        );
        let (values, types) = decode_execute_params(&body, 7, None).unwrap();
        assert_eq!(
            values,
            vec![
                s("-1"),
                s("255"),
                s("-32768"),
                s("65535"),
                s("-2"),
                s("4294967295"),
                s("5")
            ]
        );
        assert!(types.as_slice()[1].unsigned());
        assert_eq!(
            types.as_slice()[2].column_type(),
            ColumnType::MYSQL_TYPE_SHORT
        );
    }

    #[test]
    fn floats_use_shortest_text() {
        assert_eq!(
            decode(&[
                Value::Float(1.5),
                Value::Float(0.1),
                Value::Double(0.1),
                Value::Double(-2.5e-7),
                Value::Double(1e21),
                Value::Double(f64::INFINITY),
            ]),
            vec![
                s("1.5"),
                s("0.1"),
                s("0.1"),
                s("-0.00000025"),
                s("1000000000000000000000"),
                s("inf"),
            ]
        );
    }

    #[test]
    fn strings_with_unicode_and_bytes_that_are_not_utf8() {
        assert_eq!(
            decode(&[
                Value::Bytes("héllo wörld ✓ 日本語 🦀".as_bytes().to_vec()),
                Value::Bytes(Vec::new()),
                Value::Bytes(vec![0xff, 0x00, 0xab]),
                Value::Bytes(vec![b'a'; 70_000]),
            ]),
            vec![
                s("héllo wörld ✓ 日本語 🦀"),
                s(""),
                s("\\xff00ab"),
                Some("a".repeat(70_000)),
            ]
        );
        // BLOB-ish types are hex even when UTF-8; text types are text.
        let body = raw_packet(
            &[0],
            &[
                (0xfc, 0),
                (0xff, 0),
                (0x10, 0),
                (0xf6, 0),
                (0xf5, 0),
                (0xf7, 0),
            ],
            b"\x03abc\x01\x00\x01\x05\x051.250\x02{}\x03red",
        );
        let (values, _) = decode_execute_params(&body, 6, None).unwrap();
        assert_eq!(
            values,
            vec![
                s("\\x616263"),
                s("\\x00"),
                s("\\x05"),
                s("1.250"),
                s("{}"),
                s("red")
            ]
        );
    }

    #[test]
    fn nulls_in_various_positions() {
        assert_eq!(
            decode(&[
                Value::NULL,
                Value::Int(1),
                Value::NULL,
                Value::Bytes(b"x".to_vec()),
                Value::NULL,
            ]),
            vec![None, s("1"), None, s("x"), None]
        );
        assert_eq!(decode(&[Value::NULL]), vec![None]);
        // The bitmap wins over any type: a NULL-bit LONGLONG has no bytes.
        let body = raw_packet(&[0b01], &[(8, 0)], &[]);
        assert_eq!(decode_execute_params(&body, 1, None).unwrap().0, vec![None]);
    }

    #[test]
    fn dates_datetimes_and_times() {
        assert_eq!(
            decode(&[
                Value::Date(2024, 2, 29, 0, 0, 0, 0),
                Value::Date(2024, 2, 29, 13, 5, 9, 0),
                Value::Date(1999, 12, 31, 23, 59, 59, 7),
                Value::Date(0, 0, 0, 0, 0, 0, 0),
                Value::Time(false, 0, 1, 2, 3, 0),
                Value::Time(true, 3, 4, 5, 6, 123_456),
                Value::Time(false, 0, 0, 0, 0, 0),
                Value::Time(true, 0, 0, 0, 1, 500_000),
            ]),
            vec![
                s("2024-02-29"),
                s("2024-02-29 13:05:09"),
                s("1999-12-31 23:59:59.000007"),
                s("0000-00-00"),
                s("01:02:03"),
                s("-3 04:05:06.123456"),
                s("00:00:00"),
                s("-00:00:01.500000"),
            ]
        );
        // DATE keeps only the date (the server drops a time part); TIMESTAMP is a DATETIME.
        let body = raw_packet(
            &[0],
            &[(10, 0), (7, 0)],
            &[7, 0xe8, 0x07, 1, 2, 3, 4, 5, 4, 0xe8, 0x07, 1, 2],
        );
        let (values, _) = decode_execute_params(&body, 2, None).unwrap();
        assert_eq!(values, vec![s("2024-01-02"), s("2024-01-02")]);
    }

    #[test]
    fn more_than_eight_params_use_a_two_byte_bitmap() {
        let mut params: Vec<Value> = (0..11).map(Value::Int).collect();
        params[0] = Value::NULL;
        params[8] = Value::NULL;
        params[10] = Value::NULL;
        let body = packet(&params);
        assert_eq!(&body[10..12], &[0b0000_0001, 0b0000_0101]);
        let expected: Vec<Option<String>> = (0..11)
            .map(|i| (![0, 8, 10].contains(&i)).then(|| i.to_string()))
            .collect();
        assert_eq!(decode(&params), expected);
    }

    #[test]
    fn a_later_execution_without_new_types_uses_the_previous_ones() {
        let first = [
            Value::UInt(u64::MAX),
            Value::Bytes(b"a".to_vec()),
            Value::NULL,
        ];
        let (_, types) = decode_execute_params(&packet(&first), 3, None).unwrap();

        // Same types, new values, types not re-sent: the unsigned flag still applies.
        let second = [
            Value::UInt(u64::MAX - 1),
            Value::Bytes(b"b".to_vec()),
            Value::NULL,
        ];
        let body = without_types(&packet(&second), 3);
        let (values, again) = decode_execute_params(&body, 3, Some(&types)).unwrap();
        assert_eq!(values, vec![s("18446744073709551614"), s("b"), None]);
        assert_eq!(again, types);

        assert_eq!(
            decode_execute_params(&body, 3, None),
            Err(ParamsError::NoPreviousTypes)
        );
        assert_eq!(
            decode_execute_params(&body, 4, Some(&types)),
            Err(ParamsError::CountMismatch {
                expected: 4,
                got: 3
            })
        );
    }

    #[test]
    fn every_truncation_of_a_real_packet_is_an_error() {
        let params = rich_params();
        let body = packet(&params);
        let (values, types) = decode_execute_params(&body, params.len(), None).unwrap();
        assert_eq!(values[0], s("-5"));
        assert_eq!(values[7], s("2024-02-29 23:59:58.123456"));
        assert_eq!(values[8], s("-2 03:04:05.000006"));
        for end in 0..body.len() {
            assert!(
                decode_execute_params(&body[..end], params.len(), None).is_err(),
                "prefix of {end} bytes decoded"
            );
        }
        let reused = without_types(&body, params.len());
        assert!(decode_execute_params(&reused, params.len(), Some(&types)).is_ok());
        for end in 0..reused.len() {
            assert!(decode_execute_params(&reused[..end], params.len(), Some(&types)).is_err());
        }
        // One byte too many is refused too.
        let mut longer = body.clone();
        longer.push(0);
        assert_eq!(
            decode_execute_params(&longer, params.len(), None),
            Err(ParamsError::TrailingBytes(1))
        );
    }

    #[test]
    fn hostile_length_prefixes_fail_fast() {
        // 0xfe + 8-byte length near u64::MAX, a few bytes of "data".
        let mut values = vec![0xfe];
        values.extend_from_slice(&u64::MAX.to_le_bytes());
        values.extend_from_slice(b"abc");
        let body = raw_packet(&[0], &[(0xfd, 0)], &values);
        assert!(matches!(
            decode_execute_params(&body, 1, None),
            Err(ParamsError::LengthPastEnd { index: 0, .. })
        ));
        // High half set: MySQL would read only the low 4 bytes (5).
        let mut values = vec![0xfe];
        values.extend_from_slice(&(0x1_0000_0005u64).to_le_bytes());
        values.extend_from_slice(b"abcde");
        let body = raw_packet(&[0], &[(0xfc, 0)], &values);
        assert!(matches!(
            decode_execute_params(&body, 1, None),
            Err(ParamsError::LengthPastEnd { .. })
        ));
        // 3-byte length past the end.
        let body = raw_packet(&[0], &[(0xfe, 0)], &[0xfd, 0xff, 0xff, 0xff, b'a']);
        assert_eq!(
            decode_execute_params(&body, 1, None),
            Err(ParamsError::LengthPastEnd {
                index: 0,
                len: 0xff_ffff,
                remaining: 1
            })
        );
        // 0xfb and 0xff are not lengths (mysql_common would read them as 0).
        for byte in [0xfb, 0xff] {
            let body = raw_packet(&[0], &[(0xfd, 0)], &[byte, b'a']);
            assert_eq!(
                decode_execute_params(&body, 1, None),
                Err(ParamsError::BadLengthPrefix { index: 0, byte })
            );
        }
    }

    #[test]
    fn malformed_headers_and_types_are_refused() {
        let ok = raw_packet(&[0], &[(8, 0)], &[1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(decode_execute_params(&ok, 1, None).unwrap().0, vec![s("1")]);

        let mut wrong_command = ok.clone();
        wrong_command[0] = 0x03;
        assert_eq!(
            decode_execute_params(&wrong_command, 1, None),
            Err(ParamsError::NotExecute(0x03))
        );
        let mut iterations = ok.clone();
        iterations[6] = 2;
        assert_eq!(
            decode_execute_params(&iterations, 1, None),
            Err(ParamsError::IterationCount(2))
        );
        let mut bound = ok.clone();
        bound[11] = 2;
        assert_eq!(
            decode_execute_params(&bound, 1, None),
            Err(ParamsError::BoundFlag(2))
        );
        assert_eq!(
            decode_execute_params(&ok, MAX_PARAMS + 1, None),
            Err(ParamsError::TooManyParams(MAX_PARAMS + 1))
        );
        // A count larger than the packet: the bitmap or the types run out, no panic.
        assert!(decode_execute_params(&ok, 9, None).is_err());
        assert!(decode_execute_params(&ok, MAX_PARAMS, None).is_err());
        // A count smaller than the packet: trailing bytes.
        assert!(decode_execute_params(&ok, 0, None).is_err());

        // INT24, YEAR, NEWDATE, TIMESTAMP2, TYPED_ARRAY, VECTOR, UNKNOWN, 0x15, 0xf4.
        for type_byte in [0x09, 0x0d, 0x0e, 0x11, 0x14, 0xf2, 0xf3, 0x15, 0xf4] {
            let body = raw_packet(&[0], &[(type_byte, 0)], &[1, b'1']);
            assert_eq!(
                decode_execute_params(&body, 1, None),
                Err(ParamsError::UnsupportedType {
                    index: 0,
                    type_byte
                })
            );
        }
        let body = raw_packet(&[0], &[(8, 0x81)], &[0; 8]);
        assert_eq!(
            decode_execute_params(&body, 1, None),
            Err(ParamsError::ParamFlags {
                index: 0,
                flags: 0x81
            })
        );
        // Type NULL without the NULL bit: the server would read a string here.
        let body = raw_packet(&[0], &[(6, 0)], &[1, b'x']);
        assert_eq!(
            decode_execute_params(&body, 1, None),
            Err(ParamsError::NullTypeNotNull { index: 0 })
        );
        // Temporal lengths and the TIME sign byte.
        let body = raw_packet(&[0], &[(12, 0)], &[5, 0xe8, 0x07, 1, 2, 3]);
        assert_eq!(
            decode_execute_params(&body, 1, None),
            Err(ParamsError::TemporalLength {
                index: 0,
                what: "date",
                len: 5
            })
        );
        let body = raw_packet(&[0], &[(11, 0)], &[9, 0, 0, 0, 0, 0, 1, 2, 3, 4]);
        assert!(matches!(
            decode_execute_params(&body, 1, None),
            Err(ParamsError::TemporalLength { len: 9, .. })
        ));
        let body = raw_packet(&[0], &[(11, 0)], &[8, 2, 0, 0, 0, 0, 1, 2, 3]);
        assert_eq!(
            decode_execute_params(&body, 1, None),
            Err(ParamsError::TimeSign { index: 0, byte: 2 })
        );
    }

    #[test]
    fn zero_parameters() {
        let body = packet(&[]);
        assert_eq!(body.len(), 10);
        assert_eq!(
            decode_execute_params(&body, 0, None),
            Ok((Vec::new(), ParamTypes::default()))
        );
        let mut longer = body.clone();
        longer.push(0);
        assert_eq!(
            decode_execute_params(&longer, 0, None),
            Err(ParamsError::TrailingBytes(1))
        );
    }

    #[test]
    fn long_data_parameters_have_no_bytes_in_the_packet() {
        // BLOB streamed, VAR_STRING streamed, LONGLONG in the packet.
        let body = raw_packet(
            &[0],
            &[(0xfc, 0), (0xfd, 0), (8, 0)],
            &[5, 0, 0, 0, 0, 0, 0, 0],
        );
        let long: [(usize, &[u8]); 2] = [(1, "ü".as_bytes()), (0, b"\x00\x01")];
        let (values, _) = decode_execute_params_with_long_data(&body, 3, None, &long).unwrap();
        assert_eq!(values, vec![s("\\x0001"), s("ü"), s("5")]);

        // Without knowing about the long data, this packet does not decode.
        assert!(decode_execute_params(&body, 3, None).is_err());

        let streamed_int: [(usize, &[u8]); 1] = [(2, b"")];
        assert_eq!(
            decode_execute_params_with_long_data(&body, 3, None, &streamed_int),
            Err(ParamsError::LongDataType {
                index: 2,
                type_byte: 8
            })
        );
        let out_of_range: [(usize, &[u8]); 1] = [(3, b"")];
        assert_eq!(
            decode_execute_params_with_long_data(&body, 3, None, &out_of_range),
            Err(ParamsError::LongDataIndex {
                index: 3,
                param_count: 3
            })
        );
        let twice: [(usize, &[u8]); 2] = [(0, b""), (0, b"")];
        assert_eq!(
            decode_execute_params_with_long_data(&body, 3, None, &twice),
            Err(ParamsError::LongDataTwice { index: 0 })
        );
        let body = raw_packet(&[0b001], &[(0xfc, 0), (8, 0)], &[5, 0, 0, 0, 0, 0, 0, 0]);
        let null_and_long: [(usize, &[u8]); 1] = [(0, b"")];
        assert_eq!(
            decode_execute_params_with_long_data(&body, 2, None, &null_and_long),
            Err(ParamsError::LongDataNull { index: 0 })
        );
    }

    /// A small xorshift generator: deterministic, no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn random_and_mutated_packets_never_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let params = rich_params();
        let real = packet(&params);
        let (_, types) = decode_execute_params(&real, params.len(), None).unwrap();
        for round in 0..20_000 {
            let body: Vec<u8> = if round % 2 == 0 {
                // Random bytes behind a plausible header, so the decoder gets past it.
                let len = rng.below(64);
                let mut body = vec![COM_STMT_EXECUTE, 1, 0, 0, 0, 0, 1, 0, 0, 0];
                body.extend((0..len).map(|_| rng.next() as u8));
                if rng.below(8) == 0 {
                    body.truncate(rng.below(body.len() + 1));
                }
                body
            } else {
                // A real packet with a few bytes changed.
                let mut body = real.clone();
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(body.len());
                    body[at] = rng.next() as u8;
                }
                body
            };
            let count = if round % 2 == 0 {
                rng.below(20)
            } else {
                params.len()
            };
            let previous = (count == types.len() && rng.below(2) == 0).then_some(&types);
            let _ = decode_execute_params(&body, count, previous);
        }
    }
}
