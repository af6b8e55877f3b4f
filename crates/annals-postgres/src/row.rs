//! Events and the values they carry, from PostgreSQL's rows (the binary forms as sent).

use super::*;

pub(crate) fn event(row: &Row, offset: usize) -> Result<RecordedEvent> {
    event_after(row, offset, &mut None)
}

/// The same as [`event`], reusing `last`'s name when the row's stream is the one before it
/// (feed pages run in streams' batches: one name checked and allocated per run).
pub(crate) fn event_after(
    row: &Row,
    offset: usize,
    last: &mut Option<StreamName>,
) -> Result<RecordedEvent> {
    let name: &str = row.try_get(offset + 2).map_err(backend)?;
    let stream = match last {
        Some(s) if s.as_str() == name => s.clone(),
        _ => {
            let s =
                StreamName::new(name).map_err(|e| backend(format!("stored stream name: {e}")))?;
            *last = Some(s.clone());
            s
        }
    };
    event_in(row, offset, stream)
}

/// An event of `stream` (the row's name column is not read: stream reads leave it empty).
pub(crate) fn event_in(row: &Row, offset: usize, stream: StreamName) -> Result<RecordedEvent> {
    let get = |e: tokio_postgres::Error| backend(e);
    let tx: TxId = row.try_get(offset).map_err(get)?;
    Ok(RecordedEvent {
        stream,
        position: pack(tx.0, row.try_get(offset + 1).map_err(get)?),
        stream_version: row.try_get::<_, i64>(offset + 3).map_err(get)? as u64,
        recorded_at: Timestamp::from_unix_micros(
            row.try_get::<_, Micros>(offset + 4).map_err(get)?.0,
        ),
        event_type: row.try_get(offset + 5).map_err(get)?,
        data: row.try_get(offset + 6).map_err(get)?,
        metadata: row.try_get(offset + 7).map_err(get)?,
        event_id: row.try_get(offset + 8).map_err(get)?,
        correlation_id: row.try_get(offset + 9).map_err(get)?,
        causation_id: row.try_get(offset + 10).map_err(get)?,
    })
}

type FromSqlError = Box<dyn std::error::Error + Sync + Send>;

/// A transaction id: an `xid8` column in binary (no conversion to text on the server), or
/// the text the store's functions return.
pub(crate) struct TxId(pub(crate) u64);

impl<'a> tokio_postgres::types::FromSql<'a> for TxId {
    fn from_sql(ty: &tokio_postgres::types::Type, raw: &'a [u8]) -> Result<Self, FromSqlError> {
        if *ty == tokio_postgres::types::Type::XID8 {
            Ok(TxId(u64::from_be_bytes(raw.try_into()?)))
        } else {
            Ok(TxId(std::str::from_utf8(raw)?.parse()?))
        }
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        *ty == tokio_postgres::types::Type::XID8 || *ty == tokio_postgres::types::Type::TEXT
    }
}

/// Microseconds since 1970: a `timestamptz` in binary (microseconds since 2000; the
/// infinities saturate), or a `bigint` the store's functions computed.
struct Micros(i64);

/// Microseconds from 1970-01-01 to 2000-01-01, PostgreSQL's epoch.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

impl<'a> tokio_postgres::types::FromSql<'a> for Micros {
    fn from_sql(ty: &tokio_postgres::types::Type, raw: &'a [u8]) -> Result<Self, FromSqlError> {
        let n = i64::from_be_bytes(raw.try_into()?);
        if *ty == tokio_postgres::types::Type::INT8 {
            return Ok(Micros(n));
        }
        Ok(Micros(n.saturating_add(PG_EPOCH_MICROS)))
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        *ty == tokio_postgres::types::Type::TIMESTAMPTZ || *ty == tokio_postgres::types::Type::INT8
    }
}
