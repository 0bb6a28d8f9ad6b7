//! Catalogue storage in SQL through sqlx: a SQLite file by default (`sqlite`), or a
//! PostgreSQL database that several servers share (`postgres`); the kept photos as files
//! (`photos`).

mod either;
pub mod photos;
mod postgres;
mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;

pub use either::Store;
pub use photos::FsPhotoStore;
pub use postgres::{PgStore, CHANGES_CHANNEL};
pub use sqlite::{SqliteStore, Tally};

use exemplar_core::catalogue::StoreError;
use std::time::{SystemTime, UNIX_EPOCH};

/// A database error as the catalogue reports it: one that a later try may not meet (the
/// connection or the server went away) is [`StoreError::Unavailable`].
fn backend(e: sqlx::Error) -> StoreError {
    let transient = match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // Connection exceptions (08…) and a server shutting down or starting (57P0…).
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P0")),
        _ => false,
    };
    if transient {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Backend(e.to_string())
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
