//! The admin pages in process, over a pipeline running beside them: what only the process
//! knows (failing streams and their errors) shows on the groups page, escaped.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use annals::CheckpointStore;
use annals::{
    EventData, EventStore, ExpectedVersion, MemoryCheckpoints, MemoryStore, RecordedEvent,
    StreamName, Version,
};
use annals_reactor::{FailurePolicy, Handler, HandlerError, PipelineConfig};

/// Fails every call on `Bad-` streams, handles the others.
struct Picky;

#[async_trait::async_trait]
impl Handler for Picky {
    async fn handle(
        &self,
        stream: &StreamName,
        events: &[RecordedEvent],
    ) -> Result<Version, HandlerError> {
        if stream.category() == "Bad" {
            return Err("the <b>mailer</b> is down".into());
        }
        Ok(events.last().unwrap().next_version())
    }
}

fn get(address: std::net::SocketAddr, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_groups_page_shows_a_running_pipelines_failing_streams_with_their_errors() {
    let store = Arc::new(MemoryStore::new());
    let checkpoints = Arc::new(MemoryCheckpoints::default());
    for name in ["Good-1", "Bad-1"] {
        store
            .append(
                &StreamName::new(name).unwrap(),
                ExpectedVersion::Any,
                vec![EventData::new("Happened", b"{}".to_vec())],
            )
            .await
            .unwrap();
    }
    let config = PipelineConfig::new("mailer").on_failure(FailurePolicy::Retry);
    let running =
        annals_reactor::spawn(store.clone(), checkpoints.clone(), Arc::new(Picky), config);
    let mut stats = running.stats_receiver();
    tokio::time::timeout(Duration::from_secs(30), async {
        while !stats
            .borrow_and_update()
            .failing
            .iter()
            .any(|f| f.failures >= 2)
        {
            stats.changed().await.unwrap();
        }
    })
    .await
    .expect("Bad-1 fails twice within 30 s");
    checkpoints
        .commit("mailer", "all", annals::Position::START)
        .await
        .unwrap();
    let options = annals_admin::AdminOptions {
        pipelines: vec![annals_admin::RunningGroup {
            group: "mailer".into(),
            stats: running.stats_receiver(),
        }],
        ..annals_admin::AdminOptions::default()
    };
    let router = annals_admin::router(store.clone(), Some(checkpoints), None, options);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let page = tokio::task::spawn_blocking(move || get(address, "/groups"))
        .await
        .unwrap();
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("Running in this process"), "{page}");
    let failing = page
        .split("class=\"failing\"")
        .nth(1)
        .unwrap_or_else(|| panic!("no failing streams in {page}"));
    assert!(failing.contains(">Bad-1<"), "{failing}");
    assert!(
        failing.contains("the &lt;b&gt;mailer&lt;/b&gt; is down"),
        "the error, as text: {failing}"
    );
    assert!(!failing.contains("Good-1"), "{failing}");
    running.stop().await.unwrap();
}
