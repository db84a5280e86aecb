/* snapshot.h - the reloadable configuration as counted, immutable snapshots.
 *
 * SIGHUP builds a new snapshot and publishes it; a request takes a reference
 * to the live one when it starts and drops it when it completes, so every
 * request sees one consistent configuration (JWT keys, upstream settings)
 * and no snapshot is freed while a request, or the upstream engine, holds it.
 * Reloadable: jwt.*, upstream.* except model, log.level, shutdown.*. The
 * rest of struct aigw_server.cfg is fixed for the process life. */
#ifndef AIGW_SNAPSHOT_H
#define AIGW_SNAPSHOT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "aigw/config.h"

struct aigw_snapshot {
    struct aigw_config cfg;    /* never changed once published */
    uint64_t generation;       /* 1 at start-up, +1 per applied reload */
    atomic_uint refs;
    bool owns_cfg;             /* false: cfg's strings are borrowed (see aigw_snapshot_borrow) */
};

/* A snapshot whose cfg is a shallow copy of *cfg: the strings stay owned by
 * *cfg, which must outlive the snapshot (the start-up configuration, kept
 * until exit). One reference, owned by the caller. Never fails. */
struct aigw_snapshot *aigw_snapshot_borrow(const struct aigw_config *cfg, uint64_t generation);

/* A snapshot that takes over everything *cfg owns (*cfg is left zeroed).
 * One reference, owned by the caller. Never fails. */
struct aigw_snapshot *aigw_snapshot_adopt(struct aigw_config *cfg, uint64_t generation);

/* Take one more reference; returns s. Thread-safe. */
struct aigw_snapshot *aigw_snapshot_ref(struct aigw_snapshot *s);

/* Drop a reference; the last one frees the snapshot. NULL-safe, thread-safe. */
void aigw_snapshot_unref(struct aigw_snapshot *s);

/* The slot holding the live snapshot: a mutex guards only the pointer swap
 * and the reference taken under it (a few instructions per request). */
struct aigw_snapshot_slot;

/* Create a slot that takes over the caller's reference to initial. */
struct aigw_snapshot_slot *aigw_snapshot_slot_create(struct aigw_snapshot *initial);

/* Drop the slot's reference and free it. NULL-safe. Nobody may use the
 * slot any more. */
void aigw_snapshot_slot_destroy(struct aigw_snapshot_slot *slot);

/* A counted reference to the live snapshot (release with
 * aigw_snapshot_unref). Never NULL. Thread-safe. */
struct aigw_snapshot *aigw_snapshot_acquire(struct aigw_snapshot_slot *slot);

/* Make next the live snapshot, taking over the caller's reference to it;
 * the slot's reference to the previous one is dropped (holders keep theirs).
 * Thread-safe. */
void aigw_snapshot_publish(struct aigw_snapshot_slot *slot, struct aigw_snapshot *next);

#endif
