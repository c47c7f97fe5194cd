#include <sqlite3.h>

/// sqlite3_db_config is variadic (not callable from Swift): the one option Warden sets.
/// Keeps the WAL (no checkpoint, no deletion) when this connection closes; used by the
/// libvirt hook, so the next hook run does not have to re-create and fsync a new WAL.
static inline int warden_sqlite_no_checkpoint_on_close(sqlite3 *db) {
    return sqlite3_db_config(db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, (int *)0);
}

/// Hardens a connection that reads a guest-supplied database (hostile input): defensive mode
/// (no writes to the schema or shadow tables), no trusted schema (functions with side effects
/// never run from views or triggers), no extension loading, and no triggers or views at all
/// (Warden reads plain tables only). Returns 0 when every option was accepted.
static inline int warden_sqlite_harden(sqlite3 *db) {
    int rc = 0;
    rc |= sqlite3_db_config(db, SQLITE_DBCONFIG_DEFENSIVE, 1, (int *)0);
    rc |= sqlite3_db_config(db, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, (int *)0);
    rc |= sqlite3_db_config(db, SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 0, (int *)0);
    rc |= sqlite3_db_config(db, SQLITE_DBCONFIG_ENABLE_TRIGGER, 0, (int *)0);
    rc |= sqlite3_db_config(db, SQLITE_DBCONFIG_ENABLE_VIEW, 0, (int *)0);
    return rc;
}
