//! Scratch databases for one benchmark run, removed afterwards.

use std::future::Future;

/// Runs `run` on SQLite when the command line says `sqlite`, else on PostgreSQL.
// Each benchmark compiles this file on its own; `api_load` runs both databases instead.
#[allow(dead_code)]
pub async fn on_the_asked_one<Fut: Future<Output = ()>>(run: impl FnOnce(&'static str, String) -> Fut) {
    let which: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    if which.iter().any(|w| w == "sqlite") {
        on_sqlite(|url| run("SQLite (file, WAL)", url)).await;
    } else {
        on_postgres(|url| run("PostgreSQL", url)).await;
    }
}

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
