//! `annals forget SUBJECT`: destroys a data subject's key (crypto-shredding). Its personal
//! fields, stored encrypted by `annals::Shredding`, read as forgotten from then on.

use std::sync::Arc;

use annals::SubjectKeys;
use serde_json::json;

use crate::output::Output;
use crate::store_url::{Backend, Opened, ReadModelDb};

/// `annals forget` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct ForgetArgs {
    /// The data subject whose key to destroy.
    pub subject: String,
}

/// Forgets the subject where its key is kept: the key table of `--read-model` when given,
/// else the store's own (its SQL database's table, or a NATS store's key-value bucket).
pub(crate) async fn run(
    opened: &Opened,
    db: Option<&ReadModelDb>,
    read_model_given: bool,
    args: ForgetArgs,
    out: &Output,
) -> anyhow::Result<()> {
    anyhow::ensure!(!args.subject.is_empty(), "the subject is empty");
    let had = match (&opened.backend, db) {
        (Backend::Nats(nats), _) if !read_model_given => nats.forget(&args.subject).await?,
        (_, Some(ReadModelDb::Sqlite(s))) => {
            annals::SqlKeys::new(Arc::clone(s))
                .forget(&args.subject)
                .await?
        }
        (_, Some(ReadModelDb::Postgres(p))) => {
            annals::SqlKeys::new(Arc::clone(p))
                .forget(&args.subject)
                .await?
        }
        (_, None) => anyhow::bail!(
            "memory:// keeps no keys between runs: name where they are with --read-model sqlite://PATH or postgres://..."
        ),
    };
    if out.json {
        out.line(&json!({"subject": args.subject, "forgotten": had}))?;
    } else if had {
        say!(
            "{}: key destroyed; its personal data now reads as forgotten",
            args.subject
        );
    } else {
        say!(
            "{}: no key (never keyed, or already forgotten): nothing to do",
            args.subject
        );
    }
    Ok(())
}
