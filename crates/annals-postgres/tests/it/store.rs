//! Verbatim storage of awkward text, immutability, migrations, projections.

use annals::{
    CheckpointStore, EventData, EventStore, EventStoreExt, ExpectedVersion, Filter, Position,
    ReadStream, StreamName, Version,
};
use annals_postgres::{PgConfig, PgError, PgStore, SCHEMA_VERSION};
use annals_testkit::postgres;
use futures::StreamExt;

#[tokio::test]
async fn quotes_semicolons_and_unicode_are_stored_verbatim() {
    let store = crate::fresh().await;
    let stream = StreamName::new("Odd-it's;\"quoted\"_ünïcødé_🙂").unwrap();
    let event_type = "Type'; DROP TABLE events;--\"ü";
    let data = "{\"text\":\"'; SELECT 1; -- ✓\"}".as_bytes().to_vec();
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![EventData::new(event_type, data.clone())],
        )
        .await
        .unwrap();
    let got = store
        .read_stream_vec(&stream, ReadStream::forward())
        .await
        .unwrap();
    assert_eq!(
        (got[0].stream.as_str(), got[0].event_type.as_str()),
        (stream.as_str(), event_type)
    );
    assert_eq!(got[0].data, data);
    store.await_visible().await.unwrap();
    let page = store
        .read_all(
            Position::START,
            &Filter::category("Odd").event_types([event_type]),
            10,
        )
        .await
        .unwrap();
    assert_eq!(page.events.len(), 1);
    store
        .commit("g'; --", "src\"ü", page.events[0].position)
        .await
        .unwrap();
    assert_eq!(
        store.load("g'; --", "src\"ü").await.unwrap(),
        Some(page.events[0].position)
    );
}

#[tokio::test]
async fn events_are_immutable_in_the_database() {
    let store = crate::fresh().await;
    let schema = store.config().schema.clone();
    store
        .append(
            &StreamName::new("Imm-1").unwrap(),
            ExpectedVersion::Any,
            vec![EventData::new("A", b"1".to_vec())],
        )
        .await
        .unwrap();
    let client = postgres::connect(&postgres::shared().url).await;
    for sql in [
        format!("UPDATE {schema}.events SET data = decode('00', 'hex')"),
        format!("DELETE FROM {schema}.events"),
        format!("TRUNCATE {schema}.events CASCADE"),
    ] {
        let err = client.batch_execute(&sql).await.unwrap_err();
        assert!(
            format!("{err:?}").contains("events are immutable"),
            "{sql}: {err:?}"
        );
    }
}

/// The version a store found when it connected stays what it found: 0 for a schema not
/// created yet (even once migrated), this build's for one already migrated.
#[tokio::test]
async fn a_store_says_which_schema_version_it_connected_to() {
    let config = PgConfig::new(postgres::shared().connection()).schema(postgres::schema_name("v"));
    let first = PgStore::connect(config.clone()).await.unwrap();
    assert_eq!(first.schema_version_at_connect(), 0);
    first.migrate().await.unwrap();
    assert_eq!(first.schema_version_at_connect(), 0);
    assert_eq!(first.schema_version().await.unwrap(), SCHEMA_VERSION);
    let second = PgStore::connect(config).await.unwrap();
    assert_eq!(second.schema_version_at_connect(), SCHEMA_VERSION);
}

#[tokio::test]
async fn migrations_are_idempotent_and_newer_schemas_are_refused() {
    let store = crate::fresh().await;
    assert!(
        store.migrate().await.unwrap().is_empty(),
        "nothing left to apply"
    );
    assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
    let schema = store.config().schema.clone();
    let client = postgres::connect(&postgres::shared().url).await;
    client
        .batch_execute(&format!(
            "INSERT INTO {schema}.migrations (version) VALUES ({})",
            SCHEMA_VERSION + 1
        ))
        .await
        .unwrap();
    let config = PgConfig::new(postgres::shared().connection()).schema(schema);
    match PgStore::connect(config).await {
        Err(PgError::SchemaTooNew {
            found, supported, ..
        }) => assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION)),
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    assert!(matches!(
        PgStore::connect(PgConfig::new(postgres::shared().connection()).schema("Bad;Name")).await,
        Err(PgError::InvalidSchema(_))
    ));
}

/// A role that may use the schema but was granted none of the store's tables is told
/// "permission denied", not that the schema belongs to another application (which
/// `information_schema`, hiding tables the role may not touch, made it look like); a
/// schema it may not create is refused saying what failed.
#[tokio::test]
async fn a_role_without_the_stores_tables_is_told_permission_denied() {
    let store = crate::fresh().await;
    let schema = store.config().schema.clone();
    let admin = postgres::connect(&postgres::shared().url).await;
    let role = format!("{schema}_nogrant");
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'nogrant'; GRANT USAGE ON SCHEMA {schema} TO {role}"
        ))
        .await
        .unwrap();
    let mut connection = postgres::shared().connection();
    connection.user(&role).password("nogrant");
    let open = |schema: String| {
        let connection = connection.clone();
        async move {
            let store = PgStore::connect(PgConfig::new(connection).schema(schema)).await?;
            store.migrate().await
        }
    };
    let opened = open(schema.clone()).await;
    // A schema it may not create: said so, with PostgreSQL's reason.
    let created = open(postgres::schema_name("nogrant")).await;
    postgres::drop_role(&admin, &role).await;
    match created {
        Err(e @ PgError::Migrate { from: 0, .. }) => {
            let chain = annals::error_chain(&e);
            assert!(
                chain.contains("creating the store") && chain.contains("permission denied"),
                "{chain}"
            );
        }
        other => panic!("expected PgError::Migrate, got {other:?}"),
    }
    match opened {
        Err(e @ PgError::ForeignSchema { .. }) => panic!("taken for a foreign schema: {e}"),
        Err(e) => assert!(
            annals::error_chain(&e).contains("permission denied"),
            "{}",
            annals::error_chain(&e)
        ),
        Ok(applied) => panic!("a role without the tables opened the store: {applied:?}"),
    }
}

/// A store already at this version opens and reads with a role that may only read, in
/// read-only transactions (as on a standby): opening writes and locks nothing.
#[tokio::test]
async fn a_read_only_role_opens_a_current_store_and_reads_it() {
    let store = crate::fresh().await;
    let schema = store.config().schema.clone();
    let stream = StreamName::new("Ro-1").unwrap();
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![EventData::new("A", b"{}".to_vec())],
        )
        .await
        .unwrap();
    let admin = postgres::connect(&postgres::shared().url).await;
    let role = postgres::create_read_only_role(&admin, &schema).await;
    let mut connection = postgres::shared().connection();
    connection.user(&role).password("reader");
    let opened = async {
        let reader = PgStore::connect(PgConfig::new(connection).schema(schema.clone())).await?;
        let applied = reader.migrate().await?;
        Ok::<_, PgError>((reader, applied))
    }
    .await;
    let result = match opened {
        Ok((reader, applied)) => {
            let read = reader
                .read_stream_vec(&stream, ReadStream::forward())
                .await
                .map(|events| events.len());
            let append = reader
                .append(
                    &stream,
                    ExpectedVersion::Any,
                    vec![EventData::new("B", b"{}".to_vec())],
                )
                .await;
            Ok((applied, read, append.is_err()))
        }
        Err(e) => Err(e),
    };
    postgres::drop_role(&admin, &role).await;
    let (applied, read, refused) = result.expect("a read-only role opens the store");
    assert!(applied.is_empty());
    assert_eq!(read.unwrap(), 1);
    assert!(refused, "a read-only role's append is refused");
    assert_eq!(store.stream_version(&stream).await.unwrap(), Version(1));
}

#[tokio::test]
async fn a_projection_commits_read_model_events_and_checkpoint_together() {
    let store = crate::fresh().await;
    let schema = store.config().schema.clone();
    let stream = StreamName::new("Proj-1").unwrap();
    let setup = store.projection().await.unwrap();
    setup
        .client()
        .batch_execute(&format!("CREATE TABLE {schema}.totals (k text PRIMARY KEY, n int NOT NULL); INSERT INTO {schema}.totals VALUES ('a', 1)"))
        .await
        .unwrap();
    setup
        .commit("totals", "all", annals::backend::position(1))
        .await
        .unwrap();
    // Dropped without commit: the read-model change and the appended event vanish.
    {
        let mut p = store.projection().await.unwrap();
        p.client()
            .execute(&format!("UPDATE {schema}.totals SET n = n + 1"), &[])
            .await
            .unwrap();
        p.append(
            &stream,
            ExpectedVersion::Any,
            vec![EventData::new("Counted", b"{}".to_vec())],
        )
        .await
        .unwrap();
    }
    assert_eq!(
        store.load("totals", "all").await.unwrap(),
        Some(annals::backend::position(1))
    );
    assert_eq!(store.stream_version(&stream).await.unwrap(), Version(0));
    let mut p = store.projection().await.unwrap();
    p.client()
        .execute(&format!("UPDATE {schema}.totals SET n = n + 1"), &[])
        .await
        .unwrap();
    p.append(
        &stream,
        ExpectedVersion::NoStream,
        vec![EventData::new("Counted", b"{}".to_vec())],
    )
    .await
    .unwrap();
    p.commit("totals", "all", annals::backend::position(2))
        .await
        .unwrap();
    let client = postgres::connect(&postgres::shared().url).await;
    let n: i32 = client
        .query_one(&format!("SELECT n FROM {schema}.totals"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    assert_eq!(
        store.load("totals", "all").await.unwrap(),
        Some(annals::backend::position(2))
    );
    assert_eq!(store.stream_version(&stream).await.unwrap(), Version(1));
}

/// A filtered read over a sparse category walks the feed in bounded windows: a page may
/// come back empty (but not at the end) and the next resumes after the window, so no page
/// costs more than the window and nothing is missed.
#[tokio::test]
async fn a_filtered_read_all_pages_through_a_sparse_category_in_bounded_windows() {
    let store = crate::fresh().await;
    let wanted = |i: u64| {
        (
            StreamName::new(format!("Wanted-{i}")).unwrap(),
            EventData::new("W", i.to_string().into_bytes()),
        )
    };
    let (s, e) = wanted(0);
    store
        .append(&s, ExpectedVersion::Any, vec![e])
        .await
        .unwrap();
    for k in 0..21 {
        let noise = (0..1000)
            .map(|i| EventData::new("N", format!("{k}.{i}").into_bytes()))
            .collect();
        store
            .append(
                &StreamName::new(format!("Noise-{k}")).unwrap(),
                ExpectedVersion::Any,
                noise,
            )
            .await
            .unwrap();
    }
    for i in 1..3 {
        let (s, e) = wanted(i);
        store
            .append(&s, ExpectedVersion::Any, vec![e])
            .await
            .unwrap();
    }
    store.await_visible().await.unwrap();
    let filter = annals::Filter::category("Wanted");
    let (mut from, mut got, mut empty_pages, mut pages) = (Position::START, Vec::new(), 0, 0);
    let options = annals::FeedOptions::to_end(filter).page_size(100);
    let mut feed =
        annals::Feed::new(std::sync::Arc::new(store.clone()), Position::START, options).pages();
    while let Some(page) = feed.next().await {
        let page = page.unwrap();
        pages += 1;
        assert!(pages < 100, "the read ends");
        if page.events.is_empty() && !page.end {
            empty_pages += 1;
        }
        assert!(page.next >= from, "pages move forward");
        got.extend(page.events.iter().map(|e| e.stream.to_string()));
        from = page.next;
    }
    assert_eq!(got, vec!["Wanted-0", "Wanted-1", "Wanted-2"]);
    assert!(
        empty_pages >= 1,
        "a window of noise gave an empty, unfinished page"
    );
    // Unfiltered reads still return full pages.
    let page = store
        .read_all(Position::START, &annals::Filter::all(), 100)
        .await
        .unwrap();
    assert_eq!(page.events.len(), 100);
}

/// A fingerprint (SHA-256) of what the catalog holds in `schemas`: whether each exists, and
/// every relation (with its columns) and function in them, so a test sees whether a refused
/// open created or changed anything there. The toast tables (and their indexes) of tables
/// outside `schemas` are left out: `pg_toast` gains one whenever any test on the shared
/// server creates a table with a long column, which says nothing of the refused open.
async fn catalog_digest(client: &tokio_postgres::Client, schemas: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let schemas: Vec<String> = schemas.iter().map(|s| s.to_string()).collect();
    let row = client
        .query_one(
            "SELECT concat_ws(E'\\n', \
               (SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace \
                 WHERE nspname = ANY ($1)), \
               (SELECT string_agg(n.nspname || '.' || c.relname || ':' || c.relkind::text || ':' || \
                  coalesce((SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ',' ORDER BY a.attnum) \
                            FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0), ''), \
                  E'\\n' ORDER BY n.nspname, c.relname) \
                FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY ($1) \
                  AND NOT EXISTS (SELECT 1 FROM pg_class m JOIN pg_namespace mn ON mn.oid = m.relnamespace \
                                  WHERE mn.nspname <> ALL ($1) AND (m.reltoastrelid = c.oid OR m.reltoastrelid = \
                                    (SELECT i.indrelid FROM pg_index i WHERE i.indexrelid = c.oid)))), \
               (SELECT string_agg(n.nspname || '.' || p.proname || '(' || pg_get_function_arguments(p.oid) || ')', \
                  E'\\n' ORDER BY n.nspname, p.proname, pg_get_function_arguments(p.oid)) \
                FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = ANY ($1)))",
            &[&schemas],
        )
        .await
        .unwrap();
    let text: String = row.get(0);
    assert!(!text.is_empty());
    format!("{:x}", Sha256::digest(text.as_bytes()))
}

#[tokio::test]
async fn system_schemas_are_refused_before_anything_is_touched() {
    let client = postgres::connect(&postgres::shared().url).await;
    let system = ["information_schema", "pg_catalog", "pg_toast", "pg_annals"];
    let before = catalog_digest(&client, &system).await;
    for schema in system {
        let err = PgStore::connect(PgConfig::new(postgres::shared().connection()).schema(schema))
            .await
            .unwrap_err();
        assert!(matches!(err, PgError::SystemSchema(_)), "{schema}: {err}");
        assert!(err.to_string().contains(schema), "{err}");
    }
    assert_eq!(catalog_digest(&client, &system).await, before);
}

#[tokio::test]
async fn a_schema_of_another_application_is_refused_untouched() {
    let client = postgres::connect(&postgres::shared().url).await;
    let schema = postgres::schema_name("shop");
    // Another application's schema, even one with a table called `migrations`.
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {schema}; \
             CREATE TABLE {schema}.invoices (id serial PRIMARY KEY, total numeric); \
             CREATE TABLE {schema}.migrations (id serial PRIMARY KEY, migration text, batch int); \
             INSERT INTO {schema}.invoices (total) VALUES (12.5);"
        ))
        .await
        .unwrap();
    let before = catalog_digest(&client, &[&schema]).await;
    let config = PgConfig::new(postgres::shared().connection()).schema(&schema);
    match PgStore::connect(config.clone()).await {
        Err(PgError::ForeignSchema { schema: s, objects }) => {
            assert_eq!(s, schema);
            assert!(objects >= 2, "{objects}");
        }
        other => panic!("expected ForeignSchema, got {other:?}"),
    }
    assert_eq!(catalog_digest(&client, &[&schema]).await, before);
    let total: String = client
        .query_one(&format!("SELECT total::text FROM {schema}.invoices"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, "12.5");
}

#[tokio::test]
async fn a_reserved_word_is_a_schema_like_any_other() {
    // Quoted wherever it is spliced into SQL, a reserved word works as the schema.
    let client = postgres::connect(&postgres::shared().url).await;
    let _ = client
        .batch_execute("DROP SCHEMA IF EXISTS \"select\" CASCADE")
        .await;
    let store = PgStore::connect(PgConfig::new(postgres::shared().connection()).schema("select"))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let stream = StreamName::new("Reserved-1").unwrap();
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![EventData::new("A", b"{}".to_vec())],
        )
        .await
        .unwrap();
    let events = store
        .read_stream_vec(&stream, ReadStream::forward())
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    store.await_visible().await.unwrap();
    let mut live = annals::subscribe(
        std::sync::Arc::new(store.clone()),
        Position::START,
        Default::default(),
    );
    let first = tokio::time::timeout(std::time::Duration::from_secs(30), live.next())
        .await
        .expect("the subscription delivers")
        .unwrap()
        .unwrap();
    assert_eq!(first.stream, stream);
    assert_eq!(store.migrate().await.unwrap(), Vec::<i32>::new());
}

#[tokio::test]
async fn a_large_batch_is_written_in_order_and_its_exact_retry_is_recognised() {
    let store = crate::fresh().await;
    let stream = StreamName::new("Bulk-1").unwrap();
    let events: Vec<EventData> = (0..20_000)
        .map(|i| EventData::new(format!("T{}", i % 7), format!("{{\"i\":{i}}}").into_bytes()))
        .collect();
    let written = store
        .append(&stream, ExpectedVersion::NoStream, events.clone())
        .await
        .unwrap();
    assert_eq!(written.version, Version(20_000));
    let got = store
        .read_stream_vec(&stream, ReadStream::forward())
        .await
        .unwrap();
    assert_eq!(got.len(), events.len());
    for (i, (g, e)) in got.iter().zip(&events).enumerate() {
        assert_eq!(
            (g.stream_version, g.event_id, &g.event_type, &g.data),
            (i as u64, e.event_id, &e.event_type, &e.data),
            "event {i}"
        );
    }
    assert!(got.windows(2).all(|w| w[0].position < w[1].position));
    assert_eq!(
        (got[0].position, got[19_999].position),
        (written.first_position, written.last_position)
    );
    let again = store
        .append(&stream, ExpectedVersion::NoStream, events)
        .await
        .unwrap();
    assert_eq!(
        again, written,
        "an exact retry answers the first write's result"
    );
    // A second large batch, onto the stream now there.
    let more: Vec<EventData> = (0..500)
        .map(|i| EventData::new("More", format!("{{\"m\":{i}}}").into_bytes()))
        .collect();
    let next = store
        .append(
            &stream,
            ExpectedVersion::Exact(Version(20_000)),
            more.clone(),
        )
        .await
        .unwrap();
    assert_eq!(next.version, Version(20_500));
    let tail = store
        .read_stream_vec(&stream, ReadStream::forward_from(Version(20_000)))
        .await
        .unwrap();
    let got: Vec<_> = tail
        .iter()
        .map(|e| (e.stream_version, e.event_id))
        .collect();
    let want: Vec<_> = (20_000..).zip(more.iter().map(|e| e.event_id)).collect();
    assert_eq!(got, want);
}

/// The function the group commit falls back on when an event id of the group is already
/// recorded (`append_group_shown`) refuses, like the group statement, an exact append whose
/// stream now starts past the version its state holds events from: status 1 at that
/// version, without the events a refusal otherwise carries; the group's other appends are
/// classified and written as before.
#[tokio::test]
async fn the_group_fallback_refuses_appends_whose_stream_starts_past_their_state() {
    let store = crate::fresh().await;
    let schema = store.config().schema.clone();
    let name = |s: &str| StreamName::new(s).unwrap();
    let one = |n: u8| EventData::new("E", vec![b'0' + n]);
    store
        .append(
            &name("Shown-a"),
            ExpectedVersion::NoStream,
            vec![one(1), one(2)],
        )
        .await
        .unwrap();
    store
        .truncate_before(&name("Shown-a"), Version(1))
        .await
        .unwrap();
    let recorded = one(3);
    store
        .append(
            &name("Shown-b"),
            ExpectedVersion::NoStream,
            vec![recorded.clone()],
        )
        .await
        .unwrap();
    let events = [one(4), recorded, one(5)];
    let ids: Vec<annals::Uuid> = events.iter().map(|e| e.event_id).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let data: Vec<&[u8]> = events.iter().map(|e| e.data.as_slice()).collect();
    let none_bytes: Vec<Option<&[u8]>> = vec![None; 3];
    let none_ids: Vec<Option<annals::Uuid>> = vec![None; 3];
    let client = postgres::connect(&postgres::shared().url).await;
    let call = |shown_a: i64| {
        let sql = format!(
            "SELECT idx, status, version FROM {schema}.append_group_shown($1, $2, $3, $4, $5, \
             $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        );
        let (client, ids, types, data, none_bytes, none_ids) =
            (&client, &ids, &types, &data, &none_bytes, &none_ids);
        async move {
            let rows = client
                .query(
                    &sql,
                    &[
                        &vec!["Shown-a", "Shown-b", "Shown-c"],
                        &vec!["Shown", "Shown", "Shown"],
                        &vec![3i16, 3, 1],
                        &vec![2i64, 1, 0],
                        &vec![true, true, true],
                        &vec![1i32, 1, 1],
                        ids,
                        types,
                        data,
                        none_bytes,
                        none_ids,
                        none_ids,
                        &1000i64,
                        &vec![shown_a, i64::MAX, i64::MAX],
                    ],
                )
                .await
                .unwrap();
            rows.iter()
                .map(|r| {
                    (
                        r.get::<_, i32>(0),
                        r.get::<_, i16>(1),
                        r.get::<_, Option<i64>>(2),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    // Shown-a starts at 1: a state holding its events from 0 is refused, at version 2,
    // without the events after it; Shown-b's event is recorded (classified by the caller);
    // Shown-c is created.
    let rows = call(0).await;
    assert_eq!(rows, [(1, 1, Some(2)), (2, 3, None), (3, 0, Some(1))]);
    assert_eq!(
        store.stream_version(&name("Shown-a")).await.unwrap(),
        Version(2)
    );
    assert_eq!(
        store.stream_version(&name("Shown-c")).await.unwrap(),
        Version(1)
    );
    // From 1 on, every event the state holds is shown: written.
    let rows = call(1).await;
    assert_eq!(rows[0], (1, 0, Some(3)), "{rows:?}");
    let shown: Vec<u64> = store
        .read_stream_vec(&name("Shown-a"), ReadStream::forward())
        .await
        .unwrap()
        .iter()
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(shown, [1, 2]);
}

/// Stream rows are locked in the names' byte order whatever the database's collation, by a
/// group's fallback (`append_group_shown`) and by a multi-stream transaction alike: in a
/// database whose collation puts `Lock-a` before `Lock-B` (ICU en-US), a writer that holds
/// `Lock-B` (first in byte order) leaves `Lock-a` free while the other waits, so the two
/// cannot wait for each other in a cycle.
#[tokio::test]
async fn stream_rows_are_locked_in_byte_order_whatever_the_collation() {
    let db = postgres::schema_name("icu");
    let admin = postgres::connect(&postgres::shared().url).await;
    admin
        .batch_execute(&format!(
            "CREATE DATABASE {db} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' \
             LOCALE 'C.UTF-8'"
        ))
        .await
        .unwrap();
    let mut connection = postgres::shared().connection();
    connection.dbname(&db);
    let client = || {
        let connection = connection.clone();
        async move {
            let (client, conn) = connection.connect(tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(async move {
                let _ = conn.await;
            });
            client
        }
    };
    let config = PgConfig::new(connection.clone()).schema(postgres::schema_name("t"));
    let schema = config.schema.clone();
    let store = std::sync::Arc::new(PgStore::connect(config).await.unwrap());
    store.migrate().await.unwrap();
    let name = |s: &str| StreamName::new(s).unwrap();
    for stream in ["Lock-a", "Lock-B"] {
        store
            .append(
                &name(stream),
                ExpectedVersion::NoStream,
                vec![EventData::new("E", b"{}".to_vec())],
            )
            .await
            .unwrap();
    }
    let holder = client().await;
    let order: Vec<String> = holder
        .query(
            "SELECT n FROM (VALUES ('Lock-a'), ('Lock-B')) v (n) ORDER BY n",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        order,
        ["Lock-a", "Lock-B"],
        "the collation differs from byte order"
    );
    let waiting = client().await;
    let someone_waits = || async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let row = waiting
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
                     AND wait_event_type = 'Lock'",
                    &[&db],
                )
                .await
                .unwrap();
            if row.get::<_, i64>(0) > 0 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no writer waited for Lock-B"
            );
            tokio::task::yield_now().await;
        }
    };
    let lock = |stream: &str, nowait: bool| {
        format!(
            "SELECT 1 FROM {schema}.streams WHERE name = '{stream}' FOR UPDATE{}",
            if nowait { " NOWAIT" } else { "" }
        )
    };
    // Twice: the group's fallback, then a transaction.
    for round in 0..2 {
        holder.batch_execute("BEGIN").await.unwrap();
        holder.batch_execute(&lock("Lock-B", false)).await.unwrap();
        let writer = {
            let (store, schema) = (std::sync::Arc::clone(&store), schema.clone());
            let connection = connection.clone();
            tokio::spawn(async move {
                let version = Version(1 + round);
                let events = || vec![EventData::new("E", b"{}".to_vec())];
                match round {
                    0 => {
                        let (client, conn) =
                            connection.connect(tokio_postgres::NoTls).await.unwrap();
                        tokio::spawn(async move {
                            let _ = conn.await;
                        });
                        let (a, b) = (events(), events());
                        let sql = format!(
                            "SELECT count(*) FROM {schema}.append_group_shown($1, $2, $3, $4, \
                             $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) WHERE status = 0"
                        );
                        let ids = vec![a[0].event_id, b[0].event_id];
                        let none_bytes: Vec<Option<&[u8]>> = vec![None; 2];
                        let none_ids: Vec<Option<annals::Uuid>> = vec![None; 2];
                        let data: Vec<&[u8]> = vec![b"{}", b"{}"];
                        let row = client
                            .query_one(
                                &sql,
                                &[
                                    &vec!["Lock-a", "Lock-B"],
                                    &vec!["Lock", "Lock"],
                                    &vec![3i16, 3],
                                    &vec![1i64, 1],
                                    &vec![true, true],
                                    &vec![1i32, 1],
                                    &ids,
                                    &vec!["E", "E"],
                                    &data,
                                    &none_bytes,
                                    &none_ids,
                                    &none_ids,
                                    &1000i64,
                                    &vec![0i64, 0],
                                ],
                            )
                            .await
                            .unwrap();
                        assert_eq!(row.get::<_, i64>(0), 2, "both written");
                    }
                    _ => {
                        let appends = ["Lock-a", "Lock-B"]
                            .map(|s| annals::StreamAppend {
                                stream: StreamName::new(s).unwrap(),
                                expected: ExpectedVersion::Exact(version),
                                events: events(),
                            })
                            .to_vec();
                        let written = store
                            .append_many_shown(appends, vec![Version(0), Version(0)])
                            .await
                            .unwrap();
                        assert_eq!(written.len(), 2);
                    }
                }
            })
        };
        someone_waits().await;
        // Lock-a is free: the waiting writer holds nothing yet.
        holder
            .batch_execute(&lock("Lock-a", true))
            .await
            .unwrap_or_else(|e| panic!("round {round}: Lock-a was taken out of byte order: {e}"));
        holder.batch_execute("ROLLBACK").await.unwrap();
        writer.await.unwrap();
    }
    for stream in ["Lock-a", "Lock-B"] {
        assert_eq!(
            store.stream_version(&name(stream)).await.unwrap(),
            Version(3)
        );
    }
    drop(store);
    admin
        .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .await
        .unwrap();
}

/// An operation whose caller gives up while it waits inside its transaction (a timeout, a
/// dropped request) leaves nothing behind: its transaction is rolled back, never left open
/// on a pooled connection for the next caller of the pool to run inside.
#[tokio::test]
async fn a_transaction_whose_caller_gives_up_is_rolled_back_not_left_in_the_pool() {
    use annals::{DeleteMode, Retention, RetentionScope, StreamAppend};
    use std::time::{Duration, Instant};
    let app = postgres::schema_name("gave_up");
    let mut connection = postgres::shared().connection();
    connection.application_name(&app);
    // One pooled connection: the next operation gets the one the given-up call had.
    let config = PgConfig::new(connection)
        .schema(postgres::schema_name("t"))
        .pool_size(1);
    let schema = config.schema.clone();
    let store = PgStore::connect(config).await.unwrap();
    store.migrate().await.unwrap();
    let name = |s: &str| StreamName::new(s).unwrap();
    let one = || vec![EventData::new("E", b"{}".to_vec())];
    // An event for each stream at version 1.
    let both_at_1 = || {
        ["GaveUp-a", "GaveUp-b"]
            .map(|s| StreamAppend {
                stream: name(s),
                expected: ExpectedVersion::Exact(Version(1)),
                events: one(),
            })
            .to_vec()
    };
    for s in ["GaveUp-a", "GaveUp-b"] {
        store
            .append(&name(s), ExpectedVersion::NoStream, one())
            .await
            .unwrap();
    }
    let admin = postgres::connect(&postgres::shared().url).await;
    let holder = postgres::connect(&postgres::shared().url).await;
    // Waits until as many of the store's backends as `want` meet `condition`.
    let until = |condition: &'static str, want: i64| {
        let (admin, app) = (&admin, &app);
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            let sql = format!(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND {condition}"
            );
            loop {
                let n: i64 = admin.query_one(&sql, &[app]).await.unwrap().get(0);
                if n == want {
                    return;
                }
                assert!(Instant::now() < deadline, "{n} backends where {condition}");
                tokio::task::yield_now().await;
            }
        }
    };
    let state = || async {
        admin
            .query_one(
                &format!(
                    "SELECT version, start, tombstone, max_count FROM {schema}.streams \
                     WHERE name = 'GaveUp-b'"
                ),
                &[],
            )
            .await
            .map(|r| {
                (
                    r.get::<_, i64>(0),
                    r.get::<_, i64>(1),
                    r.get::<_, bool>(2),
                    r.get::<_, Option<i64>>(3),
                )
            })
            .unwrap()
    };
    let before = state().await;
    store
        .commit("gave-up", "src", Position::START)
        .await
        .unwrap();
    for op in [
        "append_many",
        "truncate",
        "delete",
        "retention",
        "projection",
    ] {
        holder.batch_execute("BEGIN").await.unwrap();
        holder
            .batch_execute(&format!(
                "SELECT 1 FROM {schema}.streams WHERE name = 'GaveUp-b' FOR UPDATE; \
                 SELECT 1 FROM {schema}.checkpoints WHERE group_name = 'gave-up' FOR UPDATE"
            ))
            .await
            .unwrap();
        let call = async {
            match op {
                // Appended to GaveUp-a, then its commit waits for the checkpoint's row.
                "projection" => {
                    let mut projection = store.projection().await?;
                    projection
                        .append(&name("GaveUp-a"), ExpectedVersion::Exact(Version(1)), one())
                        .await?;
                    projection.commit("gave-up", "src", Position::START).await
                }
                // GaveUp-a is written in the transaction before GaveUp-b's row is waited for.
                "append_many" => store.append_many(both_at_1()).await.map(drop),
                "truncate" => store
                    .truncate_before(&name("GaveUp-b"), Version(1))
                    .await
                    .map(drop),
                "delete" => store
                    .delete_stream(&name("GaveUp-b"), ExpectedVersion::Any, DeleteMode::Soft)
                    .await
                    .map(drop),
                _ => {
                    let scope = RetentionScope::Stream(name("GaveUp-b"));
                    store.set_retention(&scope, Retention::max_count(1)).await
                }
            }
        };
        tokio::select! {
            r = call => panic!("{op} finished under the lock: {r:?}"),
            () = until("wait_event_type = 'Lock'", 1) => {}
        }
        holder.batch_execute("ROLLBACK").await.unwrap();
        // The given-up call's statement now runs to its end; its transaction must not stay
        // open after it.
        until("xact_start IS NOT NULL", 0).await;
        assert_eq!(state().await, before, "{op} changed GaveUp-b");
        assert_eq!(
            store.stream_version(&name("GaveUp-a")).await.unwrap(),
            Version(1),
            "after {op}"
        );
    }
    // The pool serves the next transaction, which commits.
    store.append_many(both_at_1()).await.unwrap();
    let committed: i64 = admin
        .query_one(
            &format!("SELECT count(*) FROM {schema}.events WHERE stream_version = 1"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(committed, 2);
}

/// An append whose caller gives up while it is still queued for a group commit (the
/// groups in flight fill the connection) is never written: only appends whose callers still
/// wait are sent.
#[tokio::test]
async fn an_append_given_up_before_its_group_is_sent_is_not_written() {
    use futures::FutureExt as _;
    use std::time::{Duration, Instant};
    let recorded = annals_testkit::metrics::recorded();
    let (store, app, schema) = named_store("queued", "Queued-held").await;
    let name = |s: &str| StreamName::new(s).unwrap();
    let one = || vec![EventData::new("E", b"{}".to_vec())];
    let groups = || {
        recorded
            .histogram(&format!(
                "annals_pg_group_commit_appends{{schema={schema}}}"
            ))
            .0
    };
    let admin = postgres::connect(&postgres::shared().url).await;
    let holder = hold_row(&schema, "Queued-held").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = groups();
    // The first group waits for the held row; the second is sent behind it.
    let spawn = |stream: &'static str| {
        let store = std::sync::Arc::clone(&store);
        tokio::spawn(async move {
            store
                .append(
                    &StreamName::new(stream).unwrap(),
                    ExpectedVersion::Any,
                    vec![EventData::new("E", b"{}".to_vec())],
                )
                .await
        })
    };
    let first = spawn("Queued-held");
    waiting_backend(&admin, &app, "the first group").await;
    let second = spawn("Queued-second");
    while groups() < before + 2 {
        assert!(Instant::now() < deadline, "the second group was never sent");
        tokio::task::yield_now().await;
    }
    // Queued behind both, then given up.
    let given_up = store
        .append(&name("Queued-given-up"), ExpectedVersion::Any, one())
        .now_or_never();
    assert!(given_up.is_none(), "answered while the groups wait");
    holder.batch_execute("ROLLBACK").await.unwrap();
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    // An append after them goes in the next group, with anything still queued before it.
    store
        .append(&name("Queued-after"), ExpectedVersion::Any, one())
        .await
        .unwrap();
    assert_eq!(
        store
            .stream_version(&name("Queued-given-up"))
            .await
            .unwrap(),
        Version(0),
        "the given-up append was written"
    );
    assert_eq!(
        store.stream_version(&name("Queued-after")).await.unwrap(),
        Version(1)
    );
}

/// A truncation or hard deletion between two pages of a long stream read (pages of 1,000
/// events, each its own statement) is seen by the later pages.
#[tokio::test]
async fn a_truncation_or_deletion_between_two_pages_of_a_long_read_is_seen_by_the_later_pages() {
    let store = std::sync::Arc::new(crate::fresh().await);
    annals_testkit::conformance::a_change_between_two_pages_is_seen_by_the_later_pages(store, 1000)
        .await;
}

/// A group commit whose connection is lost while its statement runs (its backend ended by
/// the server) fails each of its callers with a transient error, as a lost connection is
/// everywhere else: a reactor retries such a failure rather than counting it toward
/// parking the stream. Nothing of the group is written, and the next append succeeds.
#[tokio::test]
async fn a_group_commit_cut_off_by_a_lost_connection_fails_its_callers_as_transient() {
    let (store, app, schema) = named_store("cut", "Cut-held").await;
    let name = |s: &str| StreamName::new(s).unwrap();
    let one = || vec![EventData::new("E", b"{}".to_vec())];
    let admin = postgres::connect(&postgres::shared().url).await;
    let holder = hold_row(&schema, "Cut-held").await;
    let cut = {
        let store = std::sync::Arc::clone(&store);
        tokio::spawn(async move {
            store
                .append(
                    &StreamName::new("Cut-held").unwrap(),
                    ExpectedVersion::Exact(Version(1)),
                    vec![EventData::new("E", b"{}".to_vec())],
                )
                .await
        })
    };
    cut_off(&admin, &app, "the group", cut).await;
    holder.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        store.stream_version(&name("Cut-held")).await.unwrap(),
        Version(1),
        "the cut-off group wrote"
    );
    store
        .append(&name("Cut-held"), ExpectedVersion::Exact(Version(1)), one())
        .await
        .unwrap();
    assert_eq!(
        store.stream_version(&name("Cut-held")).await.unwrap(),
        Version(2)
    );
}

/// A catch-up read (a stream read from past its start, which is read with other callers'
/// catch-ups on the grouped reads' connections) whose connection is lost while it runs
/// fails with a transient error, and the next catch-up, asked for at once, reads on
/// another connection (the ended one is not pooled again before its driver sees the
/// socket close).
#[tokio::test]
async fn a_catch_up_cut_off_by_a_lost_connection_fails_as_transient_and_the_next_one_reads() {
    let (store, app, schema) = named_store("catchup", "Catch-held").await;
    let stream = StreamName::new("Catch-held").unwrap();
    let admin = postgres::connect(&postgres::shared().url).await;
    let holder = lock_events(&schema).await;
    let catch_up = || {
        let (store, stream) = (std::sync::Arc::clone(&store), stream.clone());
        tokio::spawn(async move {
            store
                .read_stream_vec(&stream, ReadStream::forward_from(Version(1)))
                .await
        })
    };
    cut_off(&admin, &app, "the catch-up", catch_up()).await;
    // The next catch-up, at once (it waits for the lock, on a connection that works).
    let next = catch_up();
    holder.batch_execute("ROLLBACK").await.unwrap();
    let nothing_new = next.await.unwrap().unwrap();
    assert!(nothing_new.is_empty(), "{nothing_new:?}");
    store
        .append(
            &stream,
            ExpectedVersion::Exact(Version(1)),
            vec![EventData::new("Second", b"{}".to_vec())],
        )
        .await
        .unwrap();
    let caught_up = store
        .read_stream_vec(&stream, ReadStream::forward_from(Version(1)))
        .await
        .unwrap();
    assert_eq!(
        caught_up
            .iter()
            .map(|e| (e.stream_version, e.event_type.as_str()))
            .collect::<Vec<_>>(),
        [(1, "Second")]
    );
}

/// A stream read backward (on the main pool), a stream's tail (on the grouped reads'
/// connections) and a page of the feed (on the feed's own connections) whose connection is
/// lost while they run fail with a transient error, and the same read asked for again at
/// once runs on a connection that works: a connection the server ended is not pooled again
/// before its driver sees the socket close.
#[tokio::test]
async fn reads_cut_off_by_a_lost_connection_fail_as_transient_and_the_next_ones_read() {
    let (store, app, schema) = named_store("cutreads", "Cut-read").await;
    // The feed shows the event once no transaction older than it is open on the server
    // (other tests' among them): wait for that first, so the page below has it to show.
    store.await_visible().await.unwrap();
    let admin = postgres::connect(&postgres::shared().url).await;
    // A read of the whole stream backward, of its tail, or a page of the feed.
    let read = |kind: &'static str| {
        let store = std::sync::Arc::clone(&store);
        tokio::spawn(async move {
            if kind == "feed" {
                let page = store
                    .read_all(Position::START, &Filter::category("Cut"), 10)
                    .await?;
                return Ok(page.events.len());
            }
            let options = match kind {
                "tail" => ReadStream::backward().limit(5),
                _ => ReadStream::backward(),
            };
            let stream = StreamName::new("Cut-read").unwrap();
            Ok(store.read_stream_vec(&stream, options).await?.len())
        })
    };
    for (kind, who) in [
        ("whole", "the stream read"),
        ("tail", "the tail read"),
        ("feed", "the feed page"),
    ] {
        let holder = lock_events(&schema).await;
        cut_off(&admin, &app, who, read(kind)).await;
        let next = read(kind);
        holder.batch_execute("ROLLBACK").await.unwrap();
        let found: annals::Result<usize> = next.await.unwrap();
        assert_eq!(
            found.unwrap_or_else(|e| panic!("{who} again: {e}")),
            1,
            "{who}"
        );
    }
}

/// A migrated store of its own whose connections carry an application name (returned,
/// with the schema), to find its backends in `pg_stat_activity`; stream `written` holds
/// one event.
async fn named_store(tag: &str, written: &str) -> (std::sync::Arc<PgStore>, String, String) {
    let app = postgres::schema_name(tag);
    let mut connection = postgres::shared().connection();
    connection.application_name(&app);
    let config = PgConfig::new(connection).schema(postgres::schema_name("t"));
    let schema = config.schema.clone();
    let store = std::sync::Arc::new(PgStore::connect(config).await.unwrap());
    store.migrate().await.unwrap();
    store
        .append(
            &StreamName::new(written).unwrap(),
            ExpectedVersion::NoStream,
            vec![EventData::new("E", b"{}".to_vec())],
        )
        .await
        .unwrap();
    (store, app, schema)
}

/// A connection holding `stream`'s row lock in a transaction it leaves open.
async fn hold_row(schema: &str, stream: &str) -> tokio_postgres::Client {
    let holder = postgres::connect(&postgres::shared().url).await;
    holder.batch_execute("BEGIN").await.unwrap();
    holder
        .execute(
            &format!("SELECT 1 FROM {schema}.streams WHERE name = $1 FOR UPDATE"),
            &[&stream],
        )
        .await
        .unwrap();
    holder
}

/// A connection holding the events table's exclusive lock in a transaction it leaves
/// open: every read of the table waits behind it.
async fn lock_events(schema: &str) -> tokio_postgres::Client {
    let holder = postgres::connect(&postgres::shared().url).await;
    holder.batch_execute("BEGIN").await.unwrap();
    holder
        .batch_execute(&format!(
            "LOCK TABLE {schema}.events IN ACCESS EXCLUSIVE MODE"
        ))
        .await
        .unwrap();
    holder
}

/// The pid of a backend of application `app` waiting for a lock, once one is (`who`
/// names it if none does within 30 s).
async fn waiting_backend(admin: &tokio_postgres::Client, app: &str, who: &str) -> i32 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let rows = admin
            .query(
                "SELECT pid FROM pg_stat_activity WHERE application_name = $1 \
                 AND wait_event_type = 'Lock'",
                &[&app],
            )
            .await
            .unwrap();
        if let Some(row) = rows.first() {
            return row.get(0);
        }
        assert!(std::time::Instant::now() < deadline, "{who} never waited");
        tokio::task::yield_now().await;
    }
}

/// Ends the backend of application `app` that `call` (`who`) waits on for a lock; `call`
/// must then fail with a transient error.
async fn cut_off<T: std::fmt::Debug>(
    admin: &tokio_postgres::Client,
    app: &str,
    who: &str,
    call: tokio::task::JoinHandle<annals::Result<T>>,
) {
    let pid = waiting_backend(admin, app, who).await;
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let outcome = call.await.unwrap();
    match outcome {
        Err(e) => assert!(
            e.is_transient(),
            "{who}: a lost connection is not transient: {e}"
        ),
        Ok(answer) => panic!("{who}, cut off, was answered: {answer:?}"),
    }
}

/// A role (or database, or server) whose transactions default to SERIALIZABLE: the store's
/// statements, written for READ COMMITTED, still run at that level, so concurrent
/// multi-stream transactions and read-model applies do not fail with serialization errors
/// (they did: "could not serialize access due to concurrent update").
#[tokio::test]
async fn a_role_defaulting_to_serializable_transactions_is_served_as_written() {
    let admin = postgres::connect(&postgres::shared().url).await;
    let schema = postgres::schema_name("strict");
    let role = format!("{schema}_strict");
    let mut connection = postgres::shared().connection();
    let database = connection.get_dbname().unwrap_or("postgres").to_owned();
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'strict'; \
             GRANT CREATE ON DATABASE \"{database}\" TO {role}; \
             ALTER ROLE {role} SET default_transaction_isolation = 'serializable'"
        ))
        .await
        .unwrap();
    connection.user(&role).password("strict");
    // The role's own sessions are serializable: what the store has to undo.
    let (raw, driver) = connection.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(driver);
    let level: String = raw
        .query_one("SHOW default_transaction_isolation", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(level, "serializable");
    drop(raw);
    let store = PgStore::connect(PgConfig::new(connection).schema(&schema))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let events: std::sync::Arc<dyn EventStore> = std::sync::Arc::new(store.clone());
    annals_testkit::conformance::opposite_order_transactions_do_not_deadlock(events).await;
    annals_testkit::read_models::concurrent_appliers_of_one_stream(std::sync::Arc::new(store))
        .await;
    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
    postgres::drop_role(&admin, &role).await;
}

/// A server that ends idle sessions (`idle_session_timeout`, as managed servers and
/// connection poolers do) fails no call: after each round of an append, a tail read, a
/// catch-up and a feed page, the test waits until every backend that served the round is
/// gone, and the next round's calls each run on a new connection.
#[tokio::test]
async fn sessions_the_server_ends_for_idling_fail_no_call() {
    use annals_testkit::eventually;
    let app = postgres::schema_name("idle");
    let mut connection = postgres::shared().connection();
    connection.application_name(&app);
    connection.options("-c idle_session_timeout=300");
    let config = PgConfig::new(connection).schema(postgres::schema_name("t"));
    let store = PgStore::connect(config).await.unwrap();
    store.migrate().await.unwrap();
    let stream = StreamName::new("Idle-1").unwrap();
    let admin = postgres::connect(&postgres::shared().url).await;
    let backends = || async {
        admin
            .query(
                "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
                &[&app],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, i32>(0))
            .collect::<Vec<i32>>()
    };
    for round in 0..4u64 {
        let event = vec![EventData::new("E", b"{}".to_vec())];
        let written = store
            .append(&stream, ExpectedVersion::Exact(Version(round)), event)
            .await
            .unwrap_or_else(|e| panic!("round {round}: the append: {e}"));
        assert_eq!(written.version, Version(round + 1));
        let tail = store
            .read_stream_vec(&stream, ReadStream::backward().limit(2))
            .await
            .unwrap_or_else(|e| panic!("round {round}: the tail: {e}"));
        assert_eq!(tail[0].stream_version, round);
        let caught_up = store
            .read_stream_vec(&stream, ReadStream::forward_from(Version(round)))
            .await
            .unwrap_or_else(|e| panic!("round {round}: the catch-up: {e}"));
        assert_eq!(caught_up.len(), 1);
        store
            .read_all(Position::START, &Filter::category("Idle"), 10)
            .await
            .unwrap_or_else(|e| panic!("round {round}: the feed page: {e}"));
        let served = backends().await;
        assert!(!served.is_empty());
        eventually(
            "the server to end the round's idle sessions",
            std::time::Duration::from_secs(30),
            || async {
                let now = backends().await;
                (!served.iter().any(|pid| now.contains(pid))).then_some(())
            },
        )
        .await;
    }
}
