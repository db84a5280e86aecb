/* test_reservations.c - the quota-reservation journal: what a crashed run
 * left in flight is found (and nothing else), refunded once even across
 * starts that fail half-way, files rotate and go once settled */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "aigw/reservations.h"
#include "testlib.h"

#define TENANT "11111111-1111-4111-8111-111111111111"
#define ID_A "019a0000-0000-7000-8000-00000000000a"
#define ID_B "019a0000-0000-7000-8000-00000000000b"
#define ID_C "019a0000-0000-7000-8000-00000000000c"
#define ID_D "019a0000-0000-7000-8000-00000000000d"

static char dir[64];

static int
files(void)
{
    return tl_count_files(dir, "quota-reservations-");
}

/* The refunds a recover asked for; fail_from: the ones from this index on fail. */
struct refunds {
    int asked, done, fail_from;
    char ids[8][37], tenants[8][37];
    long long at[8];
};

static int
refund(void *ud, const char *id, const char *tenant_id, int64_t at_s)
{
    struct refunds *r = ud;
    int i = r->asked++;

    if (i >= r->fail_from)
        return -1;
    if (r->done < 8) {
        snprintf(r->ids[r->done], sizeof(r->ids[0]), "%s", id);
        snprintf(r->tenants[r->done], sizeof(r->tenants[0]), "%s", tenant_id);
        r->at[r->done] = at_s;
    }
    r->done++;
    return 0;
}

/* A journal as a crashed run leaves it: A settled, B and D open, a line for C
 * cut short, and lines that are not the journal's (all ignored). */
static void
write_crashed(void)
{
    char *path = tl_sprintf("%s/quota-reservations-00000000000000000007.log", dir);

    tl_write_file(path, "R " ID_A " " TENANT " 1796000000\n"
                        "R " ID_B " " TENANT " 1796000001\n"
                        "S " ID_A "\n"
                        "R not-a-uuid " TENANT " 1796000002\n"
                        "S " ID_B "x\n"
                        "R " ID_D " " TENANT " 1790000000\n"
                        "R " ID_C " " TENANT " 17960");
    free(path);
}

static void
test_recovery(void)
{
    char err[128];
    struct aigw_resv *j;
    struct refunds r = {.fail_from = 1};

    write_crashed();
    j = aigw_resv_open(dir, err, sizeof(err));
    CHECK(j != NULL, "opens on a crashed run's journal");
    if (j == NULL)
        return;
    CHECK(aigw_resv_leftover(j) == 2, "B and D were left in flight (%zu)", aigw_resv_leftover(j));
    /* Redis fails after the first refund: the second stays, the files stay */
    CHECK(aigw_resv_recover(j, refund, &r) == 1 && aigw_resv_leftover(j) == 1, "one refunded, one left");
    CHECK(strcmp(r.ids[0], ID_B) == 0 && strcmp(r.tenants[0], TENANT) == 0 && r.at[0] == 1796000001,
          "B refunded, by its id, to its own month (%s %lld)", r.ids[0], r.at[0]);
    aigw_resv_close(j);
    CHECK(files() == 1, "the crashed run's file stays for the next start (%d)", files());

    /* the next start refunds D only: B is marked settled in its file */
    memset(&r, 0, sizeof(r));
    r.fail_from = 99;
    j = aigw_resv_open(dir, err, sizeof(err));
    CHECK(j != NULL && aigw_resv_leftover(j) == 1, "the next start finds only D (%zu)", aigw_resv_leftover(j));
    CHECK(aigw_resv_recover(j, refund, &r) == 1 && r.at[0] == 1790000000 && strcmp(r.ids[0], ID_D) == 0,
          "D refunded once, by its id");
    CHECK(aigw_resv_leftover(j) == 0 && files() == 1, "the old file is gone, the new one open (%d)", files());
    aigw_resv_close(j);
    CHECK(files() == 0, "a clean close with nothing open leaves no file (%d)", files());
}

static void
test_live(void)
{
    char err[128], id[37];
    struct aigw_resv *j = aigw_resv_open(dir, err, sizeof(err));
    struct aigw_resv_file *f[3], *many[20000];
    struct refunds r = {.fail_from = 99};

    CHECK(j != NULL && aigw_resv_leftover(j) == 0, "a fresh journal");
    if (j == NULL)
        return;
    f[0] = aigw_resv_add(j, ID_A, TENANT, 1796000000);
    f[1] = aigw_resv_add(j, ID_B, TENANT, 1796000000);
    f[2] = aigw_resv_add(j, ID_C, TENANT, 1796000000);
    CHECK(f[0] != NULL && f[0] == f[1] && f[1] == f[2], "three reservations in the current file");
    aigw_resv_settle(j, f[1], ID_B);
    /* rotation: ~1 MiB of lines makes a new current file; the old one goes
     * once its last reservation settles */
    for (int i = 0; i < 20000; i++) {
        snprintf(id, sizeof(id), "019a0000-0000-7000-8000-%012d", i);
        many[i] = aigw_resv_add(j, id, TENANT, 1796000000);
    }
    CHECK(files() == 2, "rotated into a second file (%d)", files());
    for (int i = 0; i < 20000; i++) {
        snprintf(id, sizeof(id), "019a0000-0000-7000-8000-%012d", i);
        aigw_resv_settle(j, many[i], id);
    }
    CHECK(files() == 2, "the first file stays while A and C are open (%d)", files());
    aigw_resv_settle(j, f[0], ID_A);
    aigw_resv_settle(j, f[2], ID_C);
    CHECK(files() == 1, "the first file goes with its last settle (%d)", files());
    /* a "crash" with one open: a new journal on the same directory finds it */
    f[0] = aigw_resv_add(j, ID_D, TENANT, 1796000123);
    {
        struct aigw_resv *k = aigw_resv_open(dir, err, sizeof(err));

        CHECK(k != NULL && aigw_resv_leftover(k) == 1, "an open reservation is what a crash leaves (%zu)",
              aigw_resv_leftover(k));
        CHECK(aigw_resv_recover(k, refund, &r) == 1 && r.at[0] == 1796000123, "and it is refunded");
        aigw_resv_close(k);
    }
    aigw_resv_settle(j, f[0], ID_D);
    aigw_resv_close(j);
    CHECK(files() == 0, "nothing left (%d)", files());
}

/* A file of the previous run too big to read (over the 64 MiB read at
 * start): it was removed by the recovery with whatever it held, unread.
 * It stays, and the readable files' reservations are refunded. */
static void
test_unreadable(void)
{
    char err[128], *big = tl_sprintf("%s/quota-reservations-00000000000000000003.log", dir);
    struct aigw_resv *j;
    struct refunds r = {.fail_from = 99};

    write_crashed();
    tl_write_file(big, "R " ID_A " " TENANT " 1796000000\n");
    CHECK(truncate(big, 65L << 20) == 0, "a 65 MiB file (sparse)");
    j = aigw_resv_open(dir, err, sizeof(err));
    CHECK(j != NULL && aigw_resv_leftover(j) == 2, "the readable file's B and D are found (%zu)",
          j ? aigw_resv_leftover(j) : 0);
    if (j != NULL) {
        CHECK(aigw_resv_recover(j, refund, &r) == 2, "and refunded");
        aigw_resv_close(j);
    }
    CHECK(access(big, F_OK) == 0, "the file that could not be read is left in place");
    CHECK(files() == 1, "only it (%d)", files());
    unlink(big);
    free(big);
}

int
main(void)
{
    snprintf(dir, sizeof(dir), "/tmp/aigw-resv-%d", (int)getpid());
    tl_rm_rf(dir);
    CHECK(mkdir(dir, 0700) == 0, "temp dir");
    test_recovery();
    test_live();
    test_unreadable();
    tl_rm_rf(dir);
    return tl_done();
}
