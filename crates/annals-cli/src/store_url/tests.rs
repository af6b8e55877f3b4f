//! Store URLs: what each scheme names, its options, and how it is shown.

use super::*;

fn parse(text: &str) -> StoreKind {
    text.parse::<StoreUrl>()
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .kind
}

#[test]
fn sqlite_urls_name_relative_and_absolute_paths_with_options() {
    let StoreKind::Sqlite(c) = parse("sqlite://annals.db") else {
        panic!()
    };
    assert_eq!(c.path, PathBuf::from("annals.db"));
    let StoreKind::Sqlite(c) =
        parse("sqlite://./data/My%20Shop.db?synchronous=NORMAL&readers=2&max_bytes=1048576")
    else {
        panic!()
    };
    assert_eq!(c.path, PathBuf::from("./data/My Shop.db"));
    assert_eq!(
        (c.synchronous, c.readers, c.max_bytes),
        (Synchronous::Normal, 2, Some(1 << 20))
    );
    let StoreKind::Sqlite(c) = parse("sqlite:///tmp/x.db") else {
        panic!()
    };
    assert_eq!(c.path, PathBuf::from("/tmp/x.db"));
    assert!(!c.read_only);
    let StoreKind::Sqlite(c) = parse("sqlite:///tmp/x.db?mode=RO") else {
        panic!()
    };
    assert!(c.read_only);
    let StoreKind::Sqlite(c) = parse("sqlite:///tmp/x.db?mode=ro&mode=rw") else {
        panic!()
    };
    assert!(!c.read_only);
    for bad in [
        "sqlite://",
        "sqlite://a.db?mode=rwc",
        "sqlite://a.db?synchronous=off",
        "sqlite://a.db?readers=x",
        "sqlite://a.db?max_bytes=1GB",
        "sqlite://a.db?journal=wal",
        "sqlite://u@a.db",
    ] {
        assert!(bad.parse::<StoreUrl>().is_err(), "{bad}");
    }
}

#[test]
fn postgres_urls_split_annals_tls_and_driver_options() {
    let url = "postgres://app:s3cret@db.example:6432/shop?annals_schema=orders&annals_pool=4&annals_group_commits=2&sslmode=verify-full&sslrootcert=/etc/ca.pem&connect_timeout=3&application_name=x";
    let parsed: StoreUrl = url.parse().unwrap();
    assert!(!parsed.to_string().contains("s3cret"), "{parsed}");
    let StoreKind::Postgres(c) = parsed.kind else {
        panic!()
    };
    assert_eq!(
        (c.schema.as_str(), c.pool_size, c.group_commits),
        ("orders", 4, 2)
    );
    assert_eq!(c.tls.mode, SslMode::VerifyFull);
    assert_eq!(
        c.tls.root_certs,
        Some(RootCerts::File(PathBuf::from("/etc/ca.pem")))
    );
    assert_eq!(c.connection.get_user(), Some("app"));
    assert_eq!(c.connection.get_password(), Some(&b"s3cret"[..]));
    assert_eq!(c.connection.get_dbname(), Some("shop"));
    assert_eq!(c.connection.get_ports(), &[6432]);
    assert_eq!(c.connection.get_application_name(), Some("x"));
    assert_eq!(
        c.connection.get_connect_timeout(),
        Some(&std::time::Duration::from_secs(3))
    );
    // Spaces, `&`, `=` and non-ASCII reach the driver as the URL's escapes say, and a
    // `+` stays a `+`, as libpq reads a URI.
    let StoreKind::Postgres(c) = parse(
        "postgres://u@h/db?options=-c%20statement_timeout%3D5s%20-c%20search_path%3Da%2Bb&application_name=my+app%20%C3%A9%26co&annals_schema=s&sslrootcert=/etc/ca+1.pem",
    ) else {
        panic!()
    };
    assert_eq!(
        c.connection.get_options(),
        Some("-c statement_timeout=5s -c search_path=a+b")
    );
    assert_eq!(c.connection.get_application_name(), Some("my+app é&co"));
    assert_eq!(
        c.tls.root_certs,
        Some(RootCerts::File(PathBuf::from("/etc/ca+1.pem")))
    );
    assert!("postgres://u@h/db?application_name=%FF"
        .parse::<StoreUrl>()
        .is_err());
    // Several hosts, tried in order (libpq's form); the password shown with none.
    let parsed: StoreUrl =
        "postgresql://u:pw@h1:5433,h2,[::1]:5434/db?target_session_attrs=read-write"
            .parse()
            .unwrap();
    assert_eq!(
        parsed.to_string(),
        "postgresql://u@h1:5433,h2,[::1]:5434/db?target_session_attrs=read-write"
    );
    let StoreKind::Postgres(c) = parsed.kind else {
        panic!()
    };
    assert_eq!(c.connection.get_hosts().len(), 3);
    assert_eq!(c.connection.get_ports(), &[5433, 5432, 5434]);
    assert_eq!(c.connection.get_password(), Some(&b"pw"[..]));
    let StoreKind::Postgres(c) = parse("postgresql://u@h/db") else {
        panic!()
    };
    assert_eq!((c.schema.as_str(), c.tls.mode), ("annals", SslMode::Prefer));
    for bad in [
        "postgres://u@h/db?annals_pool=x",
        "postgres://u@h/db?annals_pool=0",
        "postgres://u@h/db?annals_group_commits=0",
        "postgres://u@h/db?annals_group_commits=-1",
        "postgres://u@h/db?sslmode=maybe",
        "postgres://u@h/db?nonsense_option=1",
        "postgres://u@h1,/db",
        "postgres://u@h1,x@h2/db",
    ] {
        assert!(bad.parse::<StoreUrl>().is_err(), "{bad}");
    }
    // The driver's refusals name the option (its own text is "invalid connection string").
    for (bad, named) in [
        ("postgres://u@h/db?keepalives_idle=soon", "keepalives_idle"),
        ("postgres://u@h/db?nonsense_option=1", "nonsense_option"),
    ] {
        let said = bad.parse::<StoreUrl>().unwrap_err().to_string();
        assert!(said.contains(named), "{said}");
    }
}

#[test]
fn nats_urls_name_several_seed_servers_and_show_no_password() {
    let parsed: StoreUrl =
        "nats://ann:p%40ss@10.0.0.1:4222,10.0.0.2:4223,[::1]:4224?stream=shop&replicas=3"
            .parse()
            .unwrap();
    assert_eq!(
        parsed.to_string(),
        "nats://ann@10.0.0.1:4222,10.0.0.2:4223,[::1]:4224?stream=shop&replicas=3"
    );
    let StoreKind::Nats(c) = parsed.kind else {
        panic!()
    };
    assert_eq!(
        c.servers,
        [
            "nats://ann:p%40ss@10.0.0.1:4222",
            "nats://10.0.0.2:4223",
            "nats://[::1]:4224"
        ]
    );
    assert_eq!((c.stream.as_str(), c.replicas), ("shop", 3));
    for bad in [
        "nats://a:4222,?stream=x",
        "nats://a:4222,b:x",
        "nats://a:4222,b:4222/path",
    ] {
        assert!(bad.parse::<StoreUrl>().is_err(), "{bad}");
    }
}

#[test]
fn nats_urls_name_the_server_the_stream_and_replicas() {
    let StoreKind::Nats(c) = parse("nats://u:pw@127.0.0.1:4222?stream=shop&replicas=3") else {
        panic!()
    };
    assert_eq!(
        (c.servers.join(","), c.stream.as_str(), c.replicas),
        ("nats://u:pw@127.0.0.1:4222".to_owned(), "shop", 3)
    );
    let StoreKind::Nats(c) = parse("nats://localhost:4222") else {
        panic!()
    };
    assert_eq!((c.stream.as_str(), c.replicas), ("annals", 1));
    assert!(!c.tls_required && c.tls_ca.is_none() && c.tls_client.is_none());
    let StoreKind::Nats(c) =
        parse("nats://h:4222?tls_ca=%2Fetc%2Fca.pem&tls_cert=c.pem&tls_key=k.pem")
    else {
        panic!()
    };
    assert_eq!(
        (c.tls_ca, c.tls_client, c.tls_required),
        (
            Some("/etc/ca.pem".into()),
            Some(("c.pem".into(), "k.pem".into())),
            true
        )
    );
    let StoreKind::Nats(c) = parse("tls://h:4222,g:4222?stream=x") else {
        panic!()
    };
    assert_eq!(c.servers, ["tls://h:4222", "tls://g:4222"]);
    assert!(c.tls_required);
    let StoreKind::Nats(c) = parse("nats://h:4222?tls=require&creds=u.creds&nkey=u.nk") else {
        panic!()
    };
    assert!(c.tls_required && c.tls_ca.is_none());
    assert_eq!(
        (c.credentials_file, c.nkey_file),
        (Some("u.creds".into()), Some("u.nk".into()))
    );
    for bad in [
        "nats://h:4222?replicas=2",
        "nats://h:4222?nope=1",
        "nats://h:4222/path",
        "nats://h:4222?tls=yes",
        "nats://h:4222?tls_cert=c.pem",
        "nats://h:4222?tls_key=k.pem",
    ] {
        assert!(bad.parse::<StoreUrl>().is_err(), "{bad}");
    }
    let shown = "nats://u:pw@h:4222"
        .parse::<StoreUrl>()
        .unwrap()
        .to_string();
    assert!(!shown.contains("pw"), "{shown}");
}

#[test]
fn other_urls() {
    assert!(matches!(parse("memory://"), StoreKind::Memory));
    assert!(matches!(parse("http://127.0.0.1:3000"), StoreKind::Http(_)));
    for bad in [
        "memory://x",
        "memory://?a=1",
        "annals.db",
        "mysql://x",
        "",
        "sqlite:/missing-slash.db",
    ] {
        let e = bad.parse::<StoreUrl>().unwrap_err().to_string();
        assert!(e.contains("store URL"), "{bad}: {e}");
    }
    for bad in ["postgres://u:pw@h:notaport/db", "postgres://u:pw@[bad/db"] {
        let e = bad.parse::<StoreUrl>().unwrap_err().to_string();
        assert!(!e.contains("pw"), "{e}");
        assert!(e.starts_with("malformed PostgreSQL store URL"), "{e}");
    }
}
