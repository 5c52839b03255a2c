//! The Postgres pool and the embedded migrations.

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::str::FromStr;

use crate::{Config, LedgerError};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

pub async fn connect(config: &Config) -> Result<PgPool, LedgerError> {
    let options =
        PgConnectOptions::from_str(&config.database_url)?.application_name("rungate-ledger");
    // Each commit lane holds a connection for its transaction; reads, account
    // creation and the settlement listener need a few more.
    let connections = config.max_connections.max(config.commit_lanes as u32 + 4);
    Ok(PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_with(options)
        .await?)
}

pub async fn migrate(pool: &PgPool) -> Result<(), LedgerError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}
