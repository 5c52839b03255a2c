//! The Postgres pool and the embedded migrations.

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::str::FromStr;

use crate::{Config, LedgerError};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

pub async fn connect(config: &Config) -> Result<PgPool, LedgerError> {
    let options =
        PgConnectOptions::from_str(&config.database_url)?.application_name("rungate-ledger");
    Ok(PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_with(options)
        .await?)
}

pub async fn migrate(pool: &PgPool) -> Result<(), LedgerError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}
