//! TLS, as every managed PostgreSQL requires: a server started here that accepts TCP
//! connections over TLS only (`hostssl` in `pg_hba.conf`), with a certificate for
//! `localhost` signed by a CA made in the test.

use std::net::{IpAddr, Ipv4Addr};

use annals::{EventData, EventStore, EventStoreExt, ExpectedVersion, ReadStream, StreamName};
use annals_postgres::{PgConfig, PgError, PgStore, PgTls, RootCerts, SslMode};
use annals_testkit::postgres::PgServer;
use annals_testkit::tls::Pki;

/// The server, as `host` (a name checked against the certificate) at 127.0.0.1.
fn config(server: &PgServer, host: &str, tls: PgTls) -> PgConfig {
    let mut c = tokio_postgres::Config::new();
    c.host(host)
        .hostaddr(IpAddr::V4(Ipv4Addr::LOCALHOST))
        .port(server.port)
        .user("postgres")
        .dbname("postgres");
    PgConfig::new(c)
        .tls(tls)
        .schema(annals_testkit::postgres::schema_name("tls"))
}

/// Connects, migrates, appends and reads back one event; then checks on a connection of the
/// same options that the session is encrypted.
async fn works(config: PgConfig) {
    let store = PgStore::connect(config.clone()).await.unwrap_or_else(|e| {
        panic!("{}", annals::error_chain(&e));
    });
    store.migrate().await.unwrap();
    let stream = StreamName::new("Tls-1").unwrap();
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![EventData::new("Sealed", b"{}".to_vec())],
        )
        .await
        .unwrap();
    let read = store
        .read_stream_vec(&stream, ReadStream::forward())
        .await
        .unwrap();
    assert_eq!(read.len(), 1);
    let (driver, tls) = config.driver().unwrap();
    let (client, connection) = driver.connect(tls).await.unwrap();
    tokio::spawn(connection);
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "the session is encrypted");
}

/// Fails to connect; the whole message, causes included.
async fn refused(config: PgConfig) -> String {
    match PgStore::connect(config).await {
        Ok(_) => panic!("connected, but should have been refused"),
        Err(e @ PgError::Connect { .. }) => annals::error_chain(&e),
        Err(e) => panic!("expected a connection error, got {e:?}"),
    }
}

#[tokio::test]
async fn tls_modes_connect_verify_and_refuse_as_libpq_does() {
    let right = Pki::new("right");
    let server = PgServer::start_tls(&right.cert, &right.key).expect("a TLS-only server");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root.crt");
    std::fs::write(&root, &right.ca).unwrap();
    let wrong_root = dir.path().join("other.crt");
    std::fs::write(&wrong_root, Pki::new("wrong").ca).unwrap();
    let verify = |mode, path: &std::path::Path| {
        PgTls::new(mode).root_certs(RootCerts::File(path.to_owned()))
    };

    // require: encrypted, the certificate not checked (no root given).
    works(config(&server, "127.0.0.1", PgTls::new(SslMode::Require))).await;
    // prefer (the default): the server offers TLS, so it is used.
    works(config(&server, "127.0.0.1", PgTls::default())).await;
    // verify-full with the right root and the certificate's name.
    works(config(
        &server,
        "localhost",
        verify(SslMode::VerifyFull, &root),
    ))
    .await;
    // verify-ca checks the chain only: another name is fine.
    works(config(
        &server,
        "db.example.test",
        verify(SslMode::VerifyCa, &root),
    ))
    .await;

    // verify-full with a name the certificate does not carry: refused, saying why.
    let e = refused(config(
        &server,
        "db.example.test",
        verify(SslMode::VerifyFull, &root),
    ))
    .await;
    assert!(e.contains("postgres@db.example.test"), "{e}");
    assert!(e.contains("certificate not valid for name"), "{e}");
    // verify-full and verify-ca with a root that did not sign the certificate.
    for mode in [SslMode::VerifyFull, SslMode::VerifyCa] {
        let e = refused(config(&server, "localhost", verify(mode, &wrong_root))).await;
        assert!(e.contains("UnknownIssuer"), "{mode:?}: {e}");
    }
    // disable, against a server that demands TLS: refused by the server, which says so.
    let e = refused(config(&server, "127.0.0.1", PgTls::new(SslMode::Disable))).await;
    assert!(e.contains("no encryption"), "{e}");

    // Unusable options fail before connecting.
    let missing = dir.path().join("missing.crt");
    match PgStore::connect(config(
        &server,
        "localhost",
        verify(SslMode::VerifyFull, &missing),
    ))
    .await
    {
        Err(e @ PgError::Tls { .. }) => {
            assert!(annals::error_chain(&e).contains("missing.crt"), "{e}")
        }
        other => panic!("expected a TLS options error, got {other:?}"),
    }
    std::fs::write(&missing, "not a certificate").unwrap();
    assert!(matches!(
        PgStore::connect(config(
            &server,
            "localhost",
            verify(SslMode::VerifyFull, &missing)
        ))
        .await,
        Err(PgError::Tls { .. })
    ));
}
