//! Leases and checkpoints (with parked streams) in the store's schema.

use super::*;

#[async_trait]
impl LeaseStore for PgStore {
    async fn acquire(
        &self,
        group: &str,
        member: &str,
        partitions: u32,
        ttl: std::time::Duration,
    ) -> Result<Leases> {
        let partitions = i32::try_from(partitions)
            .map_err(|_| backend(format!("{partitions} partitions is too many")))?;
        let client = self.client().await?;
        let row = client
            .query_one(
                &prepared(&client, &self.inner.sql.leases_acquire).await?,
                &[&group, &member, &partitions, &ttl.as_secs_f64()],
            )
            .await
            .map_err(|e| client.failed(e))?;
        let held: Vec<i32> = row.get(0);
        Ok(Leases {
            held: held.into_iter().map(|p| p as u32).collect(),
            fair_share: row.get::<_, i32>(1) as u32,
            live_members: row.get::<_, i32>(2) as u32,
        })
    }

    async fn release(&self, group: &str, member: &str, partitions: &[u32]) -> Result<()> {
        let partitions: Vec<i32> = partitions.iter().map(|p| *p as i32).collect();
        let client = self.client().await?;
        client
            .execute(
                &prepared(&client, &self.inner.sql.leases_release).await?,
                &[&group, &member, &partitions],
            )
            .await
            .map(drop)
            .map_err(|e| client.failed(e))
    }
    async fn leave(&self, group: &str, member: &str) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                &prepared(&client, &self.inner.sql.leases_leave).await?,
                &[&group, &member],
            )
            .await
            .map(drop)
            .map_err(|e| client.failed(e))
    }

    async fn members(&self, group: &str) -> Result<Vec<annals::GroupMember>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &prepared(&client, &self.inner.sql.leases_members).await?,
                &[&group],
            )
            .await
            .map_err(|e| client.failed(e))?;
        Ok(rows
            .iter()
            .map(|r| annals::GroupMember {
                member: r.get(0),
                partitions: r
                    .get::<_, Vec<i32>>(1)
                    .into_iter()
                    .map(|p| p as u32)
                    .collect(),
            })
            .collect())
    }
}

#[async_trait]
impl CheckpointStore for PgStore {
    async fn load(&self, group: &str, source: &str) -> Result<Option<Position>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                &prepared(&client, &self.inner.sql.checkpoint_load).await?,
                &[&group, &source],
            )
            .await
            .map_err(|e| client.failed(e))?;
        row.map(|r| r.get::<_, String>(0).parse().map_err(backend))
            .transpose()
    }

    async fn commit(&self, group: &str, source: &str, position: Position) -> Result<()> {
        let client = self.client().await?;
        client
            .execute(
                &prepared(&client, &self.inner.sql.checkpoint_commit).await?,
                &[&group, &source, &position.to_string()],
            )
            .await
            .map(drop)
            .map_err(|e| client.failed(e))
    }

    async fn list(&self) -> Result<Vec<Checkpoint>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &prepared(&client, &self.inner.sql.checkpoint_list).await?,
                &[],
            )
            .await
            .map_err(|e| client.failed(e))?;
        rows.iter()
            .map(|r| {
                Ok(Checkpoint {
                    group: r.get(0),
                    source: r.get(1),
                    position: r.get::<_, String>(2).parse().map_err(backend)?,
                })
            })
            .collect()
    }

    async fn park(&self, parked: &ParkedStream) -> Result<()> {
        self.park_stream(parked).await
    }

    async fn parked(&self, group: Option<&str>) -> Result<Vec<ParkedStream>> {
        self.parked_streams(group).await
    }

    async fn unpark(&self, group: &str, stream: &StreamName) -> Result<bool> {
        self.unpark_stream(group, stream).await
    }
}
