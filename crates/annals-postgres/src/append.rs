//! One append's statement (the `append` function of the schema), on a connection of the
//! caller's: alone, or among others in one transaction.

use super::*;

/// `PgStore::append_once` with its statement prepared: the append is sent when the
/// future is first polled (nothing is awaited before), so appends polled together go out
/// together, in the order polled.
pub(crate) async fn run(
    client: &Conn,
    statement: &tokio_postgres::Statement,
    stream: &StreamName,
    expected: ExpectedVersion,
    events: &[EventData],
    snapshot: Option<(&[u8], Option<Version>)>,
) -> Result<Option<AppendResult>> {
    let (kind, exact) = kind(expected);
    let c = Columns::of(events.iter());
    let (name, category) = (stream.as_str(), stream.category());
    let mut params: Vec<Param<'_>> = vec![&name, &category, &kind, &exact];
    params.extend(c.params());
    let shown = snapshot.map(|(_, shown)| shown.map_or(i64::MAX, |v| bigint(v.get())));
    if let (Some((snapshot, _)), Some(shown)) = (&snapshot, &shown) {
        params.push(snapshot);
        params.push(shown);
    }
    let row = match client.query_one(statement, &params).await {
        Ok(row) => row,
        // A concurrent append recorded one of our ids first: classify.
        Err(e) if is_unique_violation(&e) => return Ok(None),
        // Our transaction id is older than the stream's last writer's: a new
        // transaction gets a newer one (see the streams table).
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE) => {
            return Err(Error::backend(
                "postgres",
                Retry(crate::error::described(&e)),
            ))
        }
        Err(e) => return Err(client.failed(e)),
    };
    let status: i16 = row.get(0);
    match status {
        0 => {
            let tx = tx_of(row.get::<_, &str>(4))?;
            Ok(Some(AppendResult {
                version: Version(row.get::<_, i64>(1) as u64),
                first_position: pack(tx, row.get(2)),
                last_position: pack(tx, row.get(3)),
            }))
        }
        5 => Err(Error::StreamDeleted {
            stream: stream.clone(),
        }),
        // Refused at the very version expected: the stream starts past `shown`.
        1 if shown.is_some_and(|s| s < i64::MAX) && kind == 3 && row.get::<_, i64>(1) == exact => {
            Err(Error::WrongExpectedVersion {
                stream: stream.clone(),
                expected,
                actual: Version(exact as u64),
            })
        }
        // Not admitted: a conflict, unless the batch is a retry of what is stored.
        _ => Ok(None),
    }
}
