//! `annals forget SUBJECT`: destroys a data subject's key (crypto-shredding). Its personal
//! fields, stored encrypted by `annals::Shredding`, read as forgotten from then on.

use std::sync::Arc;

use annals::SubjectKeys;
use serde_json::json;

use crate::output::Output;
use crate::store_url::ReadModelDb;

/// `annals forget` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct ForgetArgs {
    /// The data subject whose key to destroy.
    pub subject: String,
}

/// Forgets the subject in the key table of `db` (the store's own SQL database, or
/// `--read-model`).
pub(crate) async fn run(
    db: Option<&ReadModelDb>,
    args: ForgetArgs,
    out: &Output,
) -> anyhow::Result<()> {
    anyhow::ensure!(!args.subject.is_empty(), "the subject is empty");
    let db = db.ok_or_else(|| {
        anyhow::anyhow!("subjects' keys are kept in a SQL database: memory:// and nats:// have none; name one with --read-model sqlite://PATH or postgres://...")
    })?;
    let had = match db {
        ReadModelDb::Sqlite(s) => {
            annals::SqlKeys::new(Arc::clone(s))
                .forget(&args.subject)
                .await?
        }
        ReadModelDb::Postgres(p) => {
            annals::SqlKeys::new(Arc::clone(p))
                .forget(&args.subject)
                .await?
        }
    };
    if out.json {
        out.line(&json!({"subject": args.subject, "forgotten": had}));
    } else if had {
        println!(
            "{}: key destroyed; its personal data now reads as forgotten",
            args.subject
        );
    } else {
        println!(
            "{}: no key (never keyed, or already forgotten): nothing to do",
            args.subject
        );
    }
    Ok(())
}
