//! What the store needs of the server and of an existing stream or bucket (made by an
//! operator, or a template): JetStream enabled; atomic batches and direct gets (without
//! them appends could land partially, and every read would wait out its timeout); the
//! store's subjects; no limit that removes messages on its own (events, checkpoints or
//! subjects' keys lost behind the store's back). The store refuses to open anything else.

use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy};

use crate::NatsError;

/// What opening the stream failed to do when the server or account has no JetStream.
const NO_JETSTREAM: &str = "open the stream (JetStream is not enabled for this server or account: start the server with -js, or give the account `jetstream: enabled`)";

/// The error of opening (or creating) the event stream, saying what to enable when the
/// server or account has no JetStream.
pub(crate) fn open_error(e: async_nats::jetstream::context::CreateStreamError) -> NatsError {
    use async_nats::jetstream::context::CreateStreamErrorKind as Kind;
    use async_nats::jetstream::ErrorCode;
    let off = match e.kind() {
        Kind::JetStreamUnavailable => true,
        Kind::JetStream(e) => [
            ErrorCode::JETSTREAM_NOT_ENABLED,
            ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT,
        ]
        .contains(&e.error_code()),
        _ => false,
    };
    let what = match off {
        true => NO_JETSTREAM,
        false => "open the stream",
    };
    crate::js_error(what)(Box::new(e))
}

/// The error of opening an existing event stream: [`NatsError::NoStream`] when there is
/// none, what to enable when the server or account has no JetStream.
pub(crate) fn existing_error(
    stream: &str,
    e: async_nats::jetstream::context::GetStreamError,
) -> NatsError {
    use async_nats::jetstream::context::GetStreamErrorKind as Kind;
    use async_nats::jetstream::ErrorCode;
    let code = match e.kind() {
        Kind::JetStream(e) => Some(e.error_code()),
        _ => None,
    };
    match code {
        Some(ErrorCode::STREAM_NOT_FOUND) => NatsError::NoStream(stream.to_owned()),
        Some(ErrorCode::JETSTREAM_NOT_ENABLED | ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT) => {
            crate::js_error(NO_JETSTREAM)(Box::new(e))
        }
        _ => crate::js_error("open the stream")(Box::new(e)),
    }
}

/// Refuses the event stream (`events`: the subjects it must take) or a key-value bucket
/// (`None`) when the store cannot keep its messages in it or read them from it.
pub(crate) fn suitable(config: &Config, events: Option<&str>) -> Result<(), NatsError> {
    if events.is_some() && !config.allow_atomic_publish {
        return Err(NatsError::AtomicDisabled(config.name.clone()));
    }
    if !config.allow_direct {
        return Err(NatsError::DirectDisabled(config.name.clone()));
    }
    if let Some(ours) = events {
        let reason = if config.subject_transform.is_some() {
            Some("has a subject transform".to_owned())
        } else if !config.subjects.iter().any(|s| covers(s, ours)) {
            Some(format!(
                "takes the subjects {:?}, not the store's {ours:?}",
                config.subjects
            ))
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(NatsError::Subjects {
                stream: config.name.clone(),
                reason,
            });
        }
    }
    match removes_messages(config, events.is_some()) {
        Some(setting) => Err(NatsError::RemovesMessages {
            stream: config.name.clone(),
            setting,
        }),
        None => Ok(()),
    }
}

/// Warns when an existing stream or bucket keeps fewer copies than the store was asked to
/// create it with (`replicas` applies only to creating it): its durability is the
/// stream's, not the option's.
pub(crate) fn warn_replicas(config: &Config, asked: usize) {
    if config.num_replicas < asked {
        tracing::warn!(
            stream = %config.name,
            replicas = config.num_replicas,
            asked,
            "the stream exists with fewer replicas than asked for; raise them with `nats stream edit --replicas`"
        );
    }
}

/// Whether the subject filter `filter` takes every subject `pattern` matches (token by
/// token: `>` takes the rest, `*` one literal token).
fn covers(filter: &str, pattern: &str) -> bool {
    let mut theirs = filter.split('.');
    let mut ours = pattern.split('.');
    loop {
        match (theirs.next(), ours.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(o)) if o != "*" && o != ">" => {}
            (Some(t), Some(o)) if t == o && t != "*" && t != ">" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Which setting of `config` removes messages without being asked, if any. `per_subject`
/// says whether a per-subject limit does too: on the event stream a subject is one event
/// stream, whose every event must stay; in the bucket it is a key's history.
pub(crate) fn removes_messages(config: &Config, per_subject: bool) -> Option<String> {
    let drops_old = config.discard == DiscardPolicy::Old;
    if config.retention != RetentionPolicy::Limits {
        let retention = match config.retention {
            RetentionPolicy::Interest => "interest",
            _ => "workqueue",
        };
        return Some(format!(
            "retention {retention} (messages are removed once consumed)"
        ));
    }
    if !config.max_age.is_zero() {
        return Some(format!("max_age {:?}", config.max_age));
    }
    if drops_old && config.max_messages > 0 {
        return Some(format!("max_msgs {} with discard old", config.max_messages));
    }
    if drops_old && config.max_bytes > 0 {
        return Some(format!("max_bytes {} with discard old", config.max_bytes));
    }
    if per_subject && config.max_messages_per_subject > 0 && !config.discard_new_per_subject {
        return Some(format!(
            "max_msgs_per_subject {}",
            config.max_messages_per_subject
        ));
    }
    if config.no_ack {
        return Some("no_ack (appends would never be acknowledged)".to_owned());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn filters_that_take_the_stores_subjects() {
        let ours = "annals.shop.>";
        for filter in ["annals.shop.>", ">", "annals.>", "*.shop.>", "annals.*.>"] {
            assert!(covers(filter, ours), "{filter}");
        }
        for filter in [
            "annals.shop",
            "annals.shop.*",
            "annals.shop.*.*",
            "annals.other.>",
            "shop.>",
            "annals.shop.x.>",
            "",
        ] {
            assert!(!covers(filter, ours), "{filter}");
        }
    }

    #[test]
    fn limits_that_remove_messages_are_named() {
        let ours = Config::default();
        assert_eq!(removes_messages(&ours, true), None);
        let unlimited = Config {
            max_messages: -1,
            max_bytes: -1,
            max_messages_per_subject: -1,
            ..Config::default()
        };
        assert_eq!(removes_messages(&unlimited, true), None);
        // Limits that refuse new messages lose nothing: appends fail, saying so.
        let refusing = Config {
            max_bytes: 1 << 30,
            max_messages: 1_000_000,
            discard: DiscardPolicy::New,
            ..Config::default()
        };
        assert_eq!(removes_messages(&refusing, true), None);
        let history = Config {
            max_messages_per_subject: 1,
            ..Config::default()
        };
        assert_eq!(removes_messages(&history, false), None);
        for (config, named) in [
            (
                Config {
                    max_age: Duration::from_secs(3600),
                    ..Config::default()
                },
                "max_age",
            ),
            (
                Config {
                    max_messages: 100,
                    ..Config::default()
                },
                "max_msgs 100",
            ),
            (
                Config {
                    max_bytes: 1 << 20,
                    ..Config::default()
                },
                "max_bytes",
            ),
            (history, "max_msgs_per_subject 1"),
            (
                Config {
                    retention: RetentionPolicy::WorkQueue,
                    ..Config::default()
                },
                "workqueue",
            ),
            (
                Config {
                    retention: RetentionPolicy::Interest,
                    ..Config::default()
                },
                "interest",
            ),
            (
                Config {
                    no_ack: true,
                    ..Config::default()
                },
                "no_ack",
            ),
        ] {
            let said = removes_messages(&config, true).unwrap_or_default();
            assert!(said.contains(named), "{named}: {said:?}");
        }
    }
}
