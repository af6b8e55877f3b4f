//! Competing consumers on PostgreSQL.

pub(crate) async fn member(_arg: &str) {
    unimplemented!()
}
