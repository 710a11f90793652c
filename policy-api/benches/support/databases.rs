//! Scratch databases for one benchmark run, removed afterwards.

use std::future::Future;

use sea_orm::sqlx::{self, Connection, Executor};

/// Runs `run` with the URL of a fresh SQLite file (WAL).
pub async fn on_sqlite<Fut: Future<Output = ()>>(run: impl FnOnce(String) -> Fut) {
    let dir = std::env::temp_dir().join(format!("c2c-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    run(format!("sqlite://{}/bench.db?mode=rwc", dir.display())).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `run` with the URL of a scratch database on the PostgreSQL server of
/// C2C_TEST_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/postgres).
pub async fn on_postgres<Fut: Future<Output = ()>>(run: impl FnOnce(String) -> Fut) {
    let admin =
        std::env::var("C2C_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("c2c_bench_{}", std::process::id());
    let mut conn = sqlx::PgConnection::connect(&admin).await.expect("PostgreSQL reachable");
    conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).await.unwrap();
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_path(&format!("/{name}"));
    run(url.to_string()).await;
    conn.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).await.unwrap();
}
