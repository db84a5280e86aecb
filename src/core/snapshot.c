/* snapshot.c - counted configuration snapshots and the slot that publishes them */
#include "aigw/snapshot.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "aigw/util.h"

struct aigw_snapshot_slot {
    pthread_mutex_t lock;      /* guards cur (the swap and the reference taken on it) */
    struct aigw_snapshot *cur; /* the slot's own reference */
};

static struct aigw_snapshot *
make(uint64_t generation, bool owns)
{
    struct aigw_snapshot *s = aigw_xcalloc(1, sizeof(*s));

    s->generation = generation;
    s->owns_cfg = owns;
    atomic_init(&s->refs, 1);
    return s;
}

struct aigw_snapshot *
aigw_snapshot_borrow(const struct aigw_config *cfg, uint64_t generation)
{
    struct aigw_snapshot *s = make(generation, false);

    s->cfg = *cfg;
    return s;
}

struct aigw_snapshot *
aigw_snapshot_adopt(struct aigw_config *cfg, uint64_t generation)
{
    struct aigw_snapshot *s = make(generation, true);

    s->cfg = *cfg;
    memset(cfg, 0, sizeof(*cfg));
    return s;
}

struct aigw_snapshot *
aigw_snapshot_ref(struct aigw_snapshot *s)
{
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    return s;
}

void
aigw_snapshot_unref(struct aigw_snapshot *s)
{
    if (s == NULL || atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
        return;
    if (s->owns_cfg)
        aigw_config_free(&s->cfg);
    free(s);
}

struct aigw_snapshot_slot *
aigw_snapshot_slot_create(struct aigw_snapshot *initial)
{
    struct aigw_snapshot_slot *slot = aigw_xcalloc(1, sizeof(*slot));

    pthread_mutex_init(&slot->lock, NULL);
    slot->cur = initial;
    return slot;
}

void
aigw_snapshot_slot_destroy(struct aigw_snapshot_slot *slot)
{
    if (slot == NULL)
        return;
    aigw_snapshot_unref(slot->cur);
    pthread_mutex_destroy(&slot->lock);
    free(slot);
}

struct aigw_snapshot *
aigw_snapshot_acquire(struct aigw_snapshot_slot *slot)
{
    struct aigw_snapshot *s;

    /* the reference is taken while the slot still holds its own, so the
     * snapshot cannot reach zero between the load and the increment */
    pthread_mutex_lock(&slot->lock);
    s = aigw_snapshot_ref(slot->cur);
    pthread_mutex_unlock(&slot->lock);
    return s;
}

void
aigw_snapshot_publish(struct aigw_snapshot_slot *slot, struct aigw_snapshot *next)
{
    struct aigw_snapshot *old;

    pthread_mutex_lock(&slot->lock);
    old = slot->cur;
    slot->cur = next;
    pthread_mutex_unlock(&slot->lock);
    aigw_snapshot_unref(old);
}
