#include <sqlite3.h>

/// sqlite3_db_config is variadic (not callable from Swift): the one option Warden sets.
/// Keeps the WAL (no checkpoint, no deletion) when this connection closes; used by the
/// libvirt hook, so the next hook run does not have to re-create and fsync a new WAL.
static inline int warden_sqlite_no_checkpoint_on_close(sqlite3 *db) {
    return sqlite3_db_config(db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, (int *)0);
}
