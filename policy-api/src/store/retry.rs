//! Which database errors mean "another transaction got in the way, run it again".

use std::ops::Deref;

use sea_orm::{DbErr, RuntimeErr, SqlErr, sqlx};

/// Deadlocks, serialization failures, lock timeouts, SQLite's busy/locked, and unique
/// violations (two writers racing for the same new row) are worth one more try: the whole
/// transaction is re-run from the start, so a retry sees the winner's rows.
pub fn is_transient(err: &DbErr) -> bool {
    if matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) {
        return true;
    }
    let (DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e))) = err else {
        return matches!(err, DbErr::ConnectionAcquire(_));
    };
    let sqlx::Error::Database(db) = e.deref() else {
        return false;
    };
    if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        // 1213 deadlock, 1205 lock wait timeout.
        return matches!(my.number(), 1213 | 1205);
    }
    match db.code().as_deref() {
        // PostgreSQL: serialization_failure, deadlock_detected, lock_not_available.
        Some("40001") | Some("40P01") | Some("55P03") => true,
        // SQLite: SQLITE_BUSY, SQLITE_LOCKED and their extended codes.
        Some(code) => matches!(code, "5" | "6" | "261" | "517" | "262"),
        None => false,
    }
}
