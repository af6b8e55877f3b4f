//! TLS options in a store URL, through the binary, against a server that accepts TCP
//! connections over TLS only (a certificate for `localhost` signed by a CA made here).

use annals_testkit::postgres::PgServer;

use crate::ops::{failed_saying, on};
use crate::succeeded;

#[test]
fn sslmode_and_sslrootcert_in_the_url_reach_every_connection() {
    let pki = annals_testkit::tls::Pki::new("CLI");
    let server = PgServer::start_tls(&pki.cert, &pki.key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("ca.pem");
    std::fs::write(&root, &pki.ca).unwrap();
    let url = |host: &str, options: &str| {
        format!(
            "postgres://postgres@{host}:{}/postgres?hostaddr=127.0.0.1&annals_schema=tls_cli&{options}",
            server.port
        )
    };

    let verified = url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", root.display()),
    );
    let ready = succeeded(&on(dir.path(), &verified, &["init"]));
    assert!(ready.contains("is ready (postgres"), "{ready}");
    succeeded(&on(
        dir.path(),
        &verified,
        &["append", "Tls-1", "--type", "T", "--data", "{}"],
    ));
    let read = succeeded(&on(
        dir.path(),
        &url("127.0.0.1", "sslmode=require"),
        &["read", "Tls-1"],
    ));
    assert!(read.contains("Tls-1"), "{read}");

    // A name the certificate does not carry, a server that demands TLS, an unknown mode.
    failed_saying(
        &on(
            dir.path(),
            &url(
                "127.0.0.1",
                &format!("sslmode=verify-full&sslrootcert={}", root.display()),
            ),
            &["read", "Tls-1"],
        ),
        "certificate not valid for name",
    );
    failed_saying(
        &on(
            dir.path(),
            &url("127.0.0.1", "sslmode=disable"),
            &["read", "Tls-1"],
        ),
        "no encryption",
    );
    failed_saying(
        &on(
            dir.path(),
            &url("127.0.0.1", "sslmode=sometimes"),
            &["read", "Tls-1"],
        ),
        "sslmode=sometimes",
    );
}
