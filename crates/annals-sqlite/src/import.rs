//! Imports (`EventStore::import`), on the writer thread inside its group's transaction.

use annals::{Error, ExpectedVersion, Result, StreamName, Version};
use rusqlite::{params, Connection, OptionalExtension};

use crate::append::{claim, insert_event, is_unique_violation, stream_row, INSERT_EVENT};
use crate::writer::sql;

/// Begins the stream of `e` at `e`'s version if this store does not have it, or has it at
/// a lower version with every event hidden (deleted or truncated here too): the versions
/// below read as truncated (hidden where it was recorded). `true` when it did.
fn begin(conn: &Connection, e: &annals::RecordedEvent) -> Result<bool> {
    let version = e.stream_version as i64;
    conn.prepare_cached(
        "INSERT INTO annals_streams (name, category, version, start) VALUES (?1, ?2, ?3, ?3) \
         ON CONFLICT (name) DO UPDATE SET version = excluded.version, start = excluded.start \
         WHERE annals_streams.version < excluded.version \
           AND annals_streams.start >= annals_streams.version AND NOT annals_streams.tombstone",
    )
    .and_then(|mut st| st.execute(params![e.stream.as_str(), e.stream.category(), version]))
    .map(|inserted| inserted == 1)
    .map_err(sql)
}

/// Imports recorded events in order (see `EventStore::import`); returns how many were
/// written. Any refusal rolls the whole request back.
pub(crate) fn import(conn: &Connection, events: &[annals::RecordedEvent]) -> Result<u64> {
    let mut insert = conn.prepare_cached(INSERT_EVENT).map_err(sql)?;
    let mut written = 0;
    for e in events {
        // The common case (the next event of its stream) costs the claim and the insert;
        // only a refused claim looks further: already imported (skip) or a gap.
        let expected = ExpectedVersion::Exact(Version(e.stream_version));
        let claimed = match claim(conn, &e.stream, expected, None, 1)? {
            None if (1..i64::MAX as u64).contains(&e.stream_version) && begin(conn, e)? => {
                claim(conn, &e.stream, expected, None, 1)?
            }
            claimed => claimed,
        };
        let Some((stream_id, start)) = claimed else {
            let recorded: Option<Vec<u8>> = conn
                .prepare_cached(
                    "SELECT e.event_id FROM annals_events e JOIN annals_streams s \
                     ON s.stream_id = e.stream_id WHERE s.name = ?1 AND e.stream_version = ?2",
                )
                .and_then(|mut st| {
                    st.query_row(params![e.stream.as_str(), e.stream_version as i64], |r| {
                        r.get(0)
                    })
                    .optional()
                })
                .map_err(sql)?;
            if recorded.as_deref() == Some(&e.event_id.as_bytes()[..]) {
                continue;
            }
            return Err(Error::WrongExpectedVersion {
                stream: e.stream.clone(),
                expected,
                actual: Version(stream_row(conn, &e.stream)?.map_or(0, |(_, v)| v)),
            });
        };
        let at = e.recorded_at.unix_micros();
        let inserted = insert_event(&mut insert, stream_id, start, start, e.into(), at);
        match inserted {
            Ok(_) => written += 1,
            Err(err) if is_unique_violation(&err) => {
                let existing = conn
                    .prepare_cached(
                        "SELECT s.name FROM annals_events e JOIN annals_streams s \
                         ON s.stream_id = e.stream_id WHERE e.event_id = ?1",
                    )
                    .and_then(|mut st| {
                        st.query_row([&e.event_id.as_bytes()[..]], |r| r.get::<_, String>(0))
                    })
                    .map_err(sql)?;
                return Err(Error::DuplicateEventId {
                    event_id: e.event_id,
                    existing_stream: StreamName::new(&existing)?,
                });
            }
            Err(err) => return Err(sql(err)),
        }
    }
    Ok(written)
}
