//! `sqlgate audit export --format parquet|arrow`: trail records as typed Arrow columns.
//! This module owns the export schema ([`schema`], one row per record, one column per
//! record field plus `line_sha256`), the conversion of a record's JSON value into a row
//! of it, and the two file writers: Parquet (Snappy-compressed, row groups of
//! [`BATCH_ROWS`]) and the Arrow IPC file format. Rows are gathered in batches of
//! [`BATCH_ROWS`] and written batch by batch, so memory stays bounded on any trail.
//!
//! The conversion never fails on data: a missing field, or one of an unexpected JSON
//! type (a string where a number belongs, a time that does not parse), is null. Which
//! records to export (sessions, filters) is the caller's business
//! (`sqlgate audit export` in `src/cli.rs`).

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use arrow_array::builder::{
    ArrayBuilder, Float64Builder, ListBuilder, StringBuilder, TimestampMillisecondBuilder,
    UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use serde_json::Value;

/// Rows per batch, and per Parquet row group: large enough for good compression and
/// fast scans (DuckDB reads row groups of ~122k rows in parallel), small enough that a
/// batch of long statements stays in tens of megabytes.
pub const BATCH_ROWS: usize = 65_536;

/// The version of [`schema`], in the schema's metadata (`sqlgate.audit.schema`). It
/// changes when a column changes type or meaning; added columns keep it.
pub const SCHEMA_VERSION: &str = "1";

/// How one column is filled from a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `seq`: UInt64, not null (0 for a record written before the chain existed).
    Seq,
    /// SHA-256 (hex) of the raw line: Utf8, not null.
    LineHash,
    /// A JSON string: Utf8.
    Text,
    /// A JSON non-negative integer: UInt64.
    Count,
    /// A JSON number: Float64.
    Float,
    /// An RFC 3339 JSON string: Timestamp(Millisecond, "UTC").
    Time,
    /// A JSON array of strings (null elements allowed): List<Utf8>.
    List,
}

/// The columns, in order: name and how it is filled. [`schema`] documents them.
const COLUMNS: &[(&str, Kind)] = &[
    ("seq", Kind::Seq),
    ("prev", Kind::Text),
    ("line_sha256", Kind::LineHash),
    ("time", Kind::Time),
    ("event", Kind::Text),
    ("session_id", Kind::Text),
    ("grant_id", Kind::Text),
    ("sub", Kind::Text),
    ("groups", Kind::List),
    ("scopes", Kind::List),
    ("client_id", Kind::Text),
    ("token_id", Kind::Text),
    ("issuer", Kind::Text),
    ("connection", Kind::Text),
    ("protocol", Kind::Text),
    ("client_addr", Kind::Text),
    ("upstream", Kind::Text),
    ("decision", Kind::Text),
    ("reason", Kind::Text),
    ("flagged_by", Kind::List),
    ("kind", Kind::Text),
    ("statement", Kind::Text),
    ("statement_length", Kind::Count),
    ("statement_sha256", Kind::Text),
    ("statement_seq", Kind::Count),
    ("prepared_name", Kind::Text),
    ("portal", Kind::Text),
    ("parameters", Kind::List),
    ("parameter_count", Kind::Count),
    ("status", Kind::Text),
    ("duration_ms", Kind::Float),
    ("rows", Kind::Count),
    ("bytes", Kind::Count),
    ("error_code", Kind::Text),
    ("error_message", Kind::Text),
    ("expires_at", Kind::Time),
    ("ended_by", Kind::Text),
    ("torn_length", Kind::Count),
    ("torn_sha256", Kind::Text),
    ("lost_records", Kind::Count),
    ("pruned_through_seq", Kind::Count),
    ("pruned_through_sha256", Kind::Text),
];

/// The columns' names, sorted, with their positions in [`COLUMNS`].
fn column_index() -> &'static [(&'static str, usize)] {
    static INDEX: OnceLock<Vec<(&'static str, usize)>> = OnceLock::new();
    INDEX.get_or_init(|| {
        let mut index: Vec<(&'static str, usize)> = COLUMNS
            .iter()
            .enumerate()
            .map(|(i, &(name, _))| (name, i))
            .collect();
        index.sort_unstable();
        index
    })
}

/// Columns whose values (nearly) never repeat.
const UNIQUE_COLUMNS: &[&str] = &["prev", "line_sha256", "statement_sha256"];

fn data_type(kind: Kind) -> DataType {
    match kind {
        Kind::Seq | Kind::Count => DataType::UInt64,
        Kind::LineHash | Kind::Text => DataType::Utf8,
        Kind::Float => DataType::Float64,
        Kind::Time => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        Kind::List => DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
    }
}

/// The Arrow schema of an export: one row per trail record, in trail order. Every
/// column is nullable except `seq` and `line_sha256`; a field the record lacks, or
/// holds with an unexpected JSON type, is null. Times are Timestamp(Millisecond,
/// "UTC"); lists are List<Utf8> with nullable elements. `event` and the other
/// low-cardinality texts are plain Utf8, not dictionaries: the Arrow IPC file format
/// cannot change a dictionary between batches, and Parquet dictionary-encodes them on
/// disk anyway.
///
/// - `seq` UInt64: position in the trail, from 1 (0: a record written before the
///   hash chain existed).
/// - `prev` Utf8: SHA-256 (hex) of the previous line; 64 zeros for the first record.
/// - `line_sha256` Utf8: SHA-256 (hex) of this record's line as written, so row k's
///   `line_sha256` is row k+1's `prev` when they are consecutive in the trail.
/// - `time` Timestamp(ms, UTC): when the record was written.
/// - `event` Utf8: grant.issued, grant.denied, statement, statement.result,
///   session.ended, trail.torn, trail.gap, trail.pruned.
/// - `session_id` Utf8: the session (s-...); "-" for trail records.
/// - `grant_id` Utf8: the grant the session runs under (g-...).
/// - `sub` Utf8: the token's subject.
/// - `groups` List<Utf8>: the token's groups.
/// - `scopes` List<Utf8>: the token's scopes.
/// - `client_id` Utf8: the token's OAuth client id.
/// - `token_id` Utf8: the token's `jti`.
/// - `issuer` Utf8: the token's issuer.
/// - `connection` Utf8: the named connection asked for.
/// - `protocol` Utf8: postgres or mysql.
/// - `client_addr` Utf8: the client's address and port.
/// - `upstream` Utf8: grant.issued: the upstream the session connects to
///   (host:port/database).
/// - `decision` Utf8: allow or deny (grant or statement).
/// - `reason` Utf8: why: the grant rule that matched, the denial, why a session ended.
/// - `flagged_by` List<Utf8>: the `effect = "audit"` rules an allowed statement met.
/// - `kind` Utf8: the statement's kind (SELECT, CREATE TABLE, unparsed, ...).
/// - `statement` Utf8: the statement text, cut at `audit.max_statement_bytes`.
/// - `statement_length` UInt64: when the text was cut, the whole text's length in bytes.
/// - `statement_sha256` Utf8: when the text was cut, the whole text's SHA-256 (hex).
/// - `statement_seq` UInt64: the statement's number in its session (from 1); ties a
///   statement.result to its statement.
/// - `prepared_name` Utf8: the prepared statement's name (statement.prepared, portal.bound,
///   and a Postgres Execute).
/// - `portal` Utf8: the portal's name (portal.bound, and a Postgres Execute).
/// - `parameters` List<Utf8>: a prepared execution's bound parameters (text, or `\x`
///   and hex for binary values); a null element is an SQL NULL.
/// - `parameter_count` UInt64: how many parameters were bound (also when redacted).
/// - `status` Utf8: statement.result: ok, error, not_run or interrupted.
/// - `duration_ms` Float64: statement.result: milliseconds from forwarding the
///   statement to its last answer.
/// - `rows` UInt64: statement.result: rows returned to the client, or affected.
/// - `bytes` UInt64: statement.result: bytes of the answer sent to the client.
/// - `error_code` Utf8: the upstream's error: SQLSTATE (Postgres) or error number (MySQL).
/// - `error_message` Utf8: the upstream's error message.
/// - `expires_at` Timestamp(ms, UTC): grant.issued: when the grant expires.
/// - `ended_by` Utf8: session.ended: why, as one word (client_quit, grant_expired, ...).
/// - `torn_length` UInt64: trail.torn: the incomplete line's length in bytes.
/// - `torn_sha256` Utf8: trail.torn: the incomplete line's SHA-256 (hex).
/// - `lost_records` UInt64: trail.gap: records lost to failed writes.
/// - `pruned_through_seq` UInt64: trail.pruned: the last removed record's seq.
/// - `pruned_through_sha256` Utf8: trail.pruned: the last removed record's line hash.
///
/// The schema's metadata has `sqlgate.audit.schema` = [`SCHEMA_VERSION`].
pub fn schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let fields: Vec<Field> = COLUMNS
                .iter()
                .map(|&(name, kind)| {
                    let nullable = !matches!(kind, Kind::Seq | Kind::LineHash);
                    Field::new(name, data_type(kind), nullable)
                })
                .collect();
            let metadata = [("sqlgate.audit.schema", SCHEMA_VERSION)];
            Arc::new(Schema::new(fields).with_metadata(metadata))
        })
        .clone()
}

/// The file formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Apache Parquet, Snappy-compressed, with the Arrow schema embedded.
    Parquet,
    /// The Arrow IPC file format ("Feather v2"), uncompressed.
    Arrow,
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Arrow(#[from] ArrowError),
    #[error("{0}")]
    Parquet(#[from] parquet::errors::ParquetError),
}

/// One column being filled.
enum Column {
    U64(UInt64Builder),
    Text(StringBuilder),
    Float(Float64Builder),
    Time(TimestampMillisecondBuilder),
    List(ListBuilder<StringBuilder>),
}

impl Column {
    fn new(kind: Kind) -> Self {
        match kind {
            Kind::Seq | Kind::Count => Column::U64(UInt64Builder::with_capacity(BATCH_ROWS)),
            Kind::LineHash | Kind::Text => Column::Text(StringBuilder::new()),
            Kind::Float => Column::Float(Float64Builder::with_capacity(BATCH_ROWS)),
            Kind::Time => Column::Time(
                TimestampMillisecondBuilder::with_capacity(BATCH_ROWS).with_timezone("UTC"),
            ),
            Kind::List => Column::List(
                ListBuilder::new(StringBuilder::new())
                    .with_field(Field::new_list_field(DataType::Utf8, true)),
            ),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Column::U64(b) => Arc::new(b.finish()),
            Column::Text(b) => Arc::new(b.finish()),
            Column::Float(b) => Arc::new(b.finish()),
            Column::Time(b) => Arc::new(b.finish()),
            Column::List(b) => Arc::new(b.finish()),
        }
    }

    fn len(&self) -> usize {
        match self {
            Column::U64(b) => b.len(),
            Column::Text(b) => b.len(),
            Column::Float(b) => b.len(),
            Column::Time(b) => b.len(),
            Column::List(b) => b.len(),
        }
    }
}

/// Milliseconds since the epoch of an RFC 3339 time ("2026-12-03T07:50:18.123Z", or
/// with an offset); `None` if it does not parse.
pub fn parse_time(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// SHA-256 of `bytes` as lowercase hex, without allocating.
fn sha256_hex_into(bytes: &[u8], out: &mut [u8; 64]) {
    use sha2::Digest;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = sha2::Sha256::digest(bytes);
    for (i, b) in digest.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
}

/// Rows being gathered into one [`RecordBatch`] of [`schema`].
pub struct Batch {
    columns: Vec<Column>,
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

impl Batch {
    pub fn new() -> Self {
        Batch {
            columns: COLUMNS.iter().map(|&(_, kind)| Column::new(kind)).collect(),
        }
    }

    /// Rows gathered so far.
    pub fn len(&self) -> usize {
        self.columns.first().map_or(0, Column::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds the record `value`, whose line as written is `raw`, as one row.
    pub fn push(&mut self, raw: &[u8], value: &Value) {
        // One walk over the record's fields instead of a map lookup per column.
        let mut fields: [Option<&Value>; COLUMNS.len()] = [None; COLUMNS.len()];
        let index = column_index();
        for (key, field) in value.as_object().into_iter().flatten() {
            if let Ok(i) = index.binary_search_by(|(name, _)| (*name).cmp(key.as_str())) {
                fields[index[i].1] = Some(field);
            }
        }
        let columns = self.columns.iter_mut().zip(COLUMNS).zip(fields);
        for ((column, &(_, kind)), field) in columns {
            match (column, kind) {
                (Column::U64(b), Kind::Seq) => {
                    b.append_value(field.and_then(Value::as_u64).unwrap_or(0))
                }
                (Column::U64(b), _) => b.append_option(field.and_then(Value::as_u64)),
                (Column::Text(b), Kind::LineHash) => {
                    let mut hex = [0u8; 64];
                    sha256_hex_into(raw, &mut hex);
                    // Hex digits are ASCII.
                    b.append_value(std::str::from_utf8(&hex).unwrap_or_default());
                }
                (Column::Text(b), _) => b.append_option(field.and_then(Value::as_str)),
                (Column::Float(b), _) => b.append_option(field.and_then(Value::as_f64)),
                (Column::Time(b), _) => {
                    b.append_option(field.and_then(Value::as_str).and_then(parse_time))
                }
                (Column::List(b), _) => match field.and_then(Value::as_array) {
                    Some(items) => {
                        for item in items {
                            b.values().append_option(item.as_str());
                        }
                        b.append(true);
                    }
                    None => b.append_null(),
                },
            }
        }
    }

    /// The rows gathered so far as a batch; the builder starts over empty.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let arrays: Vec<ArrayRef> = self.columns.iter_mut().map(Column::finish).collect();
        RecordBatch::try_new(schema(), arrays)
    }
}

enum Sink {
    Parquet(parquet::arrow::ArrowWriter<BufWriter<File>>),
    Arrow(arrow_ipc::writer::FileWriter<BufWriter<File>>),
}

/// Writes records to a Parquet or Arrow IPC file, [`BATCH_ROWS`] at a time.
pub struct Writer {
    sink: Sink,
    batch: Batch,
    rows: u64,
}

impl Writer {
    /// Creates (or truncates) `path` and writes the file's header.
    pub fn create(path: &Path, format: Format) -> Result<Self, ExportError> {
        let file = BufWriter::with_capacity(1 << 20, File::create(path)?);
        let sink = match format {
            Format::Parquet => {
                use parquet::basic::Compression;
                use parquet::file::properties::WriterProperties;
                use parquet::schema::types::ColumnPath;
                let mut props = WriterProperties::builder()
                    .set_compression(Compression::SNAPPY)
                    .set_max_row_group_row_count(Some(BATCH_ROWS))
                    .set_created_by(format!("sqlgate {}", env!("CARGO_PKG_VERSION")));
                // Hashes are unique: a dictionary only costs time before the writer
                // gives up on it.
                for name in UNIQUE_COLUMNS {
                    props = props.set_column_dictionary_enabled(ColumnPath::from(*name), false);
                }
                let props = props.build();
                Sink::Parquet(parquet::arrow::ArrowWriter::try_new(
                    file,
                    schema(),
                    Some(props),
                )?)
            }
            Format::Arrow => Sink::Arrow(arrow_ipc::writer::FileWriter::try_new(file, &schema())?),
        };
        Ok(Writer {
            sink,
            batch: Batch::new(),
            rows: 0,
        })
    }

    /// Adds one record (its line as written, and its value).
    pub fn push(&mut self, raw: &[u8], value: &Value) -> Result<(), ExportError> {
        self.batch.push(raw, value);
        self.rows += 1;
        if self.batch.len() >= BATCH_ROWS {
            self.flush_batch()?;
        }
        Ok(())
    }

    fn flush_batch(&mut self) -> Result<(), ExportError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = self.batch.finish()?;
        match &mut self.sink {
            Sink::Parquet(w) => w.write(&batch)?,
            Sink::Arrow(w) => w.write(&batch)?,
        }
        Ok(())
    }

    /// Writes the last rows and the file's footer, and flushes; returns the row count.
    pub fn finish(mut self) -> Result<u64, ExportError> {
        use std::io::Write;
        self.flush_batch()?;
        match self.sink {
            Sink::Parquet(w) => {
                let mut file = w.into_inner()?;
                file.flush()?;
            }
            Sink::Arrow(mut w) => {
                w.finish()?;
                let mut file = w.into_inner()?;
                file.flush()?;
            }
        }
        Ok(self.rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, TimestampMillisecondType, UInt64Type};
    use arrow_array::Array;
    use serde_json::json;

    fn column<'a>(batch: &'a RecordBatch, name: &str) -> &'a ArrayRef {
        batch.column_by_name(name).expect(name)
    }

    #[test]
    fn a_record_becomes_a_typed_row() {
        let record = json!({
            "seq": 7, "prev": "ab", "time": "2026-12-03T07:50:18.123Z", "event": "statement",
            "session_id": "s-1", "groups": ["a", "b"], "parameters": ["1", null, "x"],
            "duration_ms": 1.5, "rows": 3, "expires_at": "2026-12-03T08:00:00+01:00",
        });
        let raw = serde_json::to_vec(&record).unwrap();
        let mut batch = Batch::new();
        batch.push(&raw, &record);
        let batch = batch.finish().unwrap();
        assert_eq!(batch.num_rows(), 1);
        assert_eq!(batch.schema(), schema());
        assert_eq!(
            column(&batch, "seq").as_primitive::<UInt64Type>().value(0),
            7
        );
        assert_eq!(
            column(&batch, "line_sha256").as_string::<i32>().value(0),
            crate::audit::sha256_hex(&raw)
        );
        assert_eq!(
            column(&batch, "time")
                .as_primitive::<TimestampMillisecondType>()
                .value(0),
            1_796_284_218_123
        );
        assert_eq!(
            column(&batch, "expires_at")
                .as_primitive::<TimestampMillisecondType>()
                .value(0),
            1_796_281_200_000
        );
        let groups = column(&batch, "groups").as_list::<i32>().value(0);
        let groups = groups.as_string::<i32>();
        assert_eq!(
            (groups.len(), groups.value(0), groups.value(1)),
            (2, "a", "b")
        );
        let params = column(&batch, "parameters").as_list::<i32>().value(0);
        let params = params.as_string::<i32>();
        assert_eq!(params.len(), 3);
        assert!(params.is_valid(0) && params.is_null(1) && params.value(2) == "x");
        assert_eq!(
            column(&batch, "duration_ms")
                .as_primitive::<Float64Type>()
                .value(0),
            1.5
        );
        assert!(column(&batch, "scopes").is_null(0));
        assert!(column(&batch, "bytes").is_null(0));
        assert!(column(&batch, "statement").is_null(0));
    }

    #[test]
    fn unexpected_types_are_null_and_never_panic() {
        let records = [
            json!({"seq": "7", "time": "yesterday", "rows": -1, "duration_ms": "fast",
                   "groups": "admins", "parameters": [1, {"a": 2}, null], "event": 5,
                   "statement_length": 1.5, "expires_at": 1_796_284_218_123_u64}),
            json!({}),
            json!({"time": "2026-13-45T99:99:99Z", "seq": u64::MAX}),
        ];
        let mut batch = Batch::new();
        for r in &records {
            batch.push(b"{}", r);
        }
        let batch = batch.finish().unwrap();
        assert_eq!(batch.num_rows(), 3);
        let seq = column(&batch, "seq").as_primitive::<UInt64Type>();
        assert_eq!((seq.value(0), seq.value(1), seq.value(2)), (0, 0, u64::MAX));
        for name in [
            "time",
            "rows",
            "duration_ms",
            "groups",
            "event",
            "statement_length",
            "expires_at",
        ] {
            assert!(column(&batch, name).is_null(0), "{name}");
        }
        assert!(column(&batch, "time").is_null(2));
        let params = column(&batch, "parameters").as_list::<i32>().value(0);
        assert_eq!(params.len(), 3);
        assert_eq!(
            params.null_count(),
            3,
            "non-string elements are null elements"
        );
        assert_eq!(column(&batch, "seq").null_count(), 0);
        assert_eq!(column(&batch, "line_sha256").null_count(), 0);
    }

    #[test]
    fn the_readme_documents_every_column_with_its_type() {
        let readme = include_str!("../../README.md");
        for field in schema().fields() {
            let ty = match field.data_type() {
                DataType::UInt64 => "UInt64",
                DataType::Utf8 => "Utf8",
                DataType::Float64 => "Float64",
                DataType::Timestamp(..) => "Timestamp(ms, UTC)",
                DataType::List(_) => "List<Utf8>",
                other => panic!("undocumented type {other}"),
            };
            let row = format!("| `{}` | {ty} |", field.name());
            assert!(readme.contains(&row), "README.md lacks the row {row:?}");
        }
    }
}
