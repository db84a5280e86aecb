/* test_systemd.c - the systemd unit and the install tree: `systemd-analyze
 * verify` of the unit (as in the repo and as installed), its `security`
 * exposure, the sysusers/tmpfiles snippets applied to a scratch root, and
 * `cmake --install` (DESTDIR and --prefix) putting every file where a Debian
 * admin expects it, with a migrate script that finds its migrations (and
 * refuses a sql directory that lacks an applied one, or has none, or a
 * pending one numbered below an applied one). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "aigw/util.h"
#include "testlib.h"

static char tmp[64];

/* Run a shell command; its exit status, and its output (stdout and stderr,
 * malloc'd) into *out when out is not NULL. */
static int
run(const char *cmd, char **out)
{
    char *full = tl_sprintf("%s 2>&1", cmd), buf[4096];
    FILE *p = popen(full, "r");
    size_t len = 0, n;
    char *text = calloc(1, 1);
    int st;

    while (p != NULL && (n = fread(buf, 1, sizeof(buf), p)) > 0) {
        text = aigw_xrealloc(text, len + n + 1);
        memcpy(text + len, buf, n);
        len += n;
        text[len] = '\0';
    }
    st = p != NULL ? pclose(p) : -1;
    free(full);
    if (out != NULL)
        *out = text;
    else
        free(text);
    return st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Run the printf-formatted command and CHECK that it exits 0 (and, when
 * silent, prints nothing); what names the check. Returns whether it passed. */
static bool __attribute__((format(printf, 3, 4)))
sh(const char *what, bool silent, const char *fmt, ...)
{
    va_list ap;
    char *cmd = NULL, *out = NULL;
    int st;
    bool ok;

    va_start(ap, fmt);
    if (vasprintf(&cmd, fmt, ap) < 0)
        abort();
    va_end(ap);
    st = run(cmd, &out);
    ok = st == 0 && (!silent || out[0] == '\0');
    CHECK(ok, "%s: status %d: %s", what, st, out);
    free(cmd);
    free(out);
    return ok;
}

static bool
is_file(const char *dir, const char *rel, mode_t want_bits)
{
    char *path = tl_sprintf("%s/%s", dir, rel);
    struct stat st;
    bool ok = stat(path, &st) == 0 && S_ISREG(st.st_mode) && (st.st_mode & want_bits) == want_bits;

    free(path);
    return ok;
}

/* systemd-analyze verify must pass without a word; the binary named by
 * ExecStart must exist, so the repo's unit is checked as a copy whose
 * /usr/bin/aigw is the aigw just built. */
static void
test_verify_repo_unit(void)
{
    char *unit = tl_sprintf("%s/aigw.service", tmp), *out = NULL, *cmd;
    const char *p;
    double level;
    int st;

    sh("copy the unit", false, "sed 's#/usr/bin/aigw#%s#g' '%s/systemd/aigw.service' > '%s'", AIGW_BIN_PATH,
       AIGW_SOURCE_DIR, unit);
    sh("systemd-analyze verify", true, "systemd-analyze verify '%s'", unit);

    /* the exposure the README reports; offline, it needs no running systemd */
    cmd = tl_sprintf("systemd-analyze security --offline=yes '%s'", unit);
    st = run(cmd, &out);
    p = strstr(out, "Overall exposure level for aigw.service: ");
    level = p ? strtod(p + strlen("Overall exposure level for aigw.service: "), NULL) : 99;
    CHECK(st == 0 && p != NULL && level <= 2.0, "security exposure %.1f (status %d) is OK (<= 2.0)", level, st);
    printf("systemd-analyze security: exposure %.1f\n", level);
    free(cmd);
    free(out);
    free(unit);
}

/* The sysusers and tmpfiles snippets applied to a scratch root. */
static void
test_sysusers_tmpfiles(void)
{
    char *root = tl_sprintf("%s/root", tmp), *cmd, *out = NULL;
    struct stat sb;
    long gid;

    sh("systemd-sysusers", false, "mkdir -p '%s/etc' && systemd-sysusers --root='%s' '%s/systemd/aigw.sysusers'", root,
       root, AIGW_SOURCE_DIR);
    sh("user aigw with home /var/lib/aigw", false, "grep -q '^aigw:x:[0-9]*:[0-9]*:.*:/var/lib/aigw:' '%s/etc/passwd'",
       root);
    cmd = tl_sprintf("awk -F: '$1 == \"aigw\" { print $3 }' '%s/etc/group'", root);
    run(cmd, &out);
    gid = strtol(out, NULL, 10);
    free(cmd);
    free(out);
    sh("systemd-tmpfiles", false, "systemd-tmpfiles --root='%s' --create '%s/systemd/aigw.tmpfiles'", root,
       AIGW_SOURCE_DIR);
    cmd = tl_sprintf("%s/etc/aigw", root);
    CHECK(stat(cmd, &sb) == 0 && (sb.st_mode & 07777) == 0750 && sb.st_uid == 0 && (long)sb.st_gid == gid,
          "/etc/aigw is 0750 root:aigw");
    free(cmd);
    cmd = tl_sprintf("%s/etc/aigw/credentials", root);
    CHECK(stat(cmd, &sb) == 0 && (sb.st_mode & 07777) == 0700 && sb.st_uid == 0, "credentials are root's, 0700");
    free(cmd);
    free(root);
}

/* cmake --install with DESTDIR: the Debian layout under /usr, nothing in /etc. */
static void
test_install_destdir(void)
{
    static const char *const files[] = {
        "usr/lib/systemd/system/aigw.service", "usr/lib/sysusers.d/aigw.conf", "usr/lib/tmpfiles.d/aigw.conf",
        "usr/share/aigw/sql/001_roles.sql",    "usr/share/aigw/sql/004_notify.sql", "usr/share/doc/aigw/README.md",
        "usr/share/doc/aigw/aigw.example.json",
    };
    char *dest = tl_sprintf("%s/destdir", tmp);

    sh("cmake --install with DESTDIR", false, "DESTDIR='%s' cmake --install '%s' --prefix /usr", dest, AIGW_BUILD_DIR);
    CHECK(is_file(dest, "usr/bin/aigw", 0755) && is_file(dest, "usr/bin/aigw-token", 0755), "binaries in /usr/bin");
    CHECK(is_file(dest, "usr/share/aigw/scripts/migrate.sh", 0755), "migrate script, executable");
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
        CHECK(is_file(dest, files[i], 0644), "installed: /%s", files[i]);
    CHECK(!is_file(dest, "usr/share/aigw/sql/demo.sql", 0), "no demo data in the install");
    sh("nothing written to /etc", false, "test ! -e '%s/etc'", dest);
    sh("the unit starts /usr/bin/aigw", false,
       "grep -q '^ExecStart=/usr/bin/aigw -c /etc/aigw/aigw.json$' '%s/usr/lib/systemd/system/aigw.service'", dest);
    free(dest);
}

/* cmake --install to another prefix: the unit follows the prefix, verifies
 * as installed, and the installed migrate script finds its migrations. */
static void
test_install_prefix(void)
{
    char *prefix = tl_sprintf("%s/prefix", tmp), *cmd, *out = NULL;
    int st;

    sh("cmake --install --prefix", false, "cmake --install '%s' --prefix '%s'", AIGW_BUILD_DIR, prefix);
    sh("ExecStart follows the prefix", false, "grep -q '^ExecStart=%s/bin/aigw ' '%s/lib/systemd/system/aigw.service'",
       prefix, prefix);
    sh("the installed unit verifies", true, "systemd-analyze verify '%s/lib/systemd/system/aigw.service'", prefix);
    cmd = tl_sprintf("'%s/share/aigw/scripts/migrate.sh' --status '%s'", prefix, tl_env("AIGW_DATABASE_OWNER_URL"));
    st = run(cmd, &out);
    CHECK(st == 0 && strstr(out, "0 pending") != NULL && strstr(out, "applied       001_roles.sql") != NULL,
          "the installed migrate.sh sees the applied migrations: %d %s", st, out);
    free(cmd);
    free(out);
    free(prefix);
}

/* scripts/migrate.sh (with --status when status) on url and a sql dir; its
 * exit status, and its output into *out (malloc'd). */
static int
migrate(bool status, const char *url, const char *dir, char **out)
{
    char *cmd = tl_sprintf("'%s/scripts/migrate.sh' %s '%s' '%s'", AIGW_SOURCE_DIR, status ? "--status" : "", url, dir);
    int st = run(cmd, out);

    free(cmd);
    return st;
}

/* migrate.sh against the stack's migrated database refuses what would be
 * a wrong sql directory, in --status as in apply mode: an applied file
 * missing from it (named), one without any migration file, and one with a
 * misnamed migration (which was skipped without a word). */
static void
test_migrate_refusals(void)
{
    char *dir = tl_sprintf("%s/sql-missing", tmp), *empty = tl_sprintf("%s/sql-empty", tmp), *out = NULL;
    const char *url = tl_env("AIGW_DATABASE_OWNER_URL");
    int st;

    sh("a sql dir without 001_roles.sql", false,
       "mkdir -p '%s' '%s' && cp '%s'/sql/[0-9][0-9][0-9]_*.sql '%s/' && rm '%s/001_roles.sql'", dir, empty,
       AIGW_SOURCE_DIR, dir, dir);
    st = migrate(true, url, dir, &out);
    CHECK(st == 1 && strstr(out, "missing-file  001_roles.sql") != NULL &&
              strstr(out, "(renamed or removed): 001_roles.sql") != NULL,
          "--status exits 1 and names the applied file missing from the sql dir: %d %s", st, out);
    free(out);
    st = migrate(false, url, dir, &out);
    CHECK(st == 1 && strstr(out, "001_roles.sql") != NULL && strstr(out, "nothing applied") != NULL,
          "applying refuses the same sql dir: %d %s", st, out);
    free(out);
    for (int status = 0; status <= 1; status++) {
        st = migrate(status, url, empty, &out);
        CHECK(st == 1 && strstr(out, "no migration files") != NULL && strstr(out, "up to date") == NULL,
              "%s refuses a sql dir without migrations: %d %s", status ? "--status" : "applying", st, out);
        free(out);
    }
    /* a migration misnamed (four digits, say) is refused, not skipped */
    sh("a sql dir with 0014_z.sql", false,
       "rm -f '%s'/*.sql && cp '%s'/sql/[0-9][0-9][0-9]_*.sql '%s/' && echo 'CREATE TABLE z (x int);' > '%s/0014_z.sql'",
       dir, AIGW_SOURCE_DIR, dir, dir);
    for (int status = 0; status <= 1; status++) {
        st = migrate(status, url, dir, &out);
        CHECK(st == 1 && strstr(out, "bad migration file name '0014_z.sql'") != NULL,
              "%s refuses a misnamed migration instead of skipping it: %d %s", status ? "--status" : "applying", st,
              out);
        free(out);
    }
    free(dir);
    free(empty);
}

/* A pending migration numbered below the latest applied one would run
 * after the migrations meant to follow it (a branch merged after a later
 * file was deployed): migrate.sh refuses it, in --status and apply mode,
 * and applies nothing. On a scratch database of the stack's cluster, with
 * migrations of its own. */
static void
test_migrate_out_of_order(void)
{
    const char *owner_url = tl_env("AIGW_DATABASE_OWNER_URL");
    char *dir = tl_sprintf("%s/sql-order", tmp), *cmd, *out = NULL;
    char *url = tl_sprintf("%s%cdbname=aigw_migorder", owner_url, strchr(owner_url, '?') != NULL ? '&' : '?');
    PGconn *owner = tl_pg_owner();
    PGresult *r;
    int st;

    PQclear(tl_sql(owner, true, "DROP DATABASE IF EXISTS aigw_migorder", 0, NULL));
    PQclear(tl_sql(owner, true, "CREATE DATABASE aigw_migorder", 0, NULL));
    sh("a sql dir with 001 and 003", false,
       "mkdir -p '%s' && echo 'CREATE TABLE a (x int);' > '%s/001_a.sql' && echo 'CREATE TABLE c (x int);' > "
       "'%s/003_c.sql'",
       dir, dir, dir);
    sh("001 and 003 applied", false, "'%s/scripts/migrate.sh' '%s' '%s'", AIGW_SOURCE_DIR, url, dir);
    sh("002 added", false, "echo 'CREATE TABLE b (x int);' > '%s/002_b.sql'", dir);
    st = migrate(true, url, dir, &out);
    CHECK(st == 1 && strstr(out, "OUT-OF-ORDER  002_b.sql") != NULL,
          "--status exits 1 and names the pending file numbered below an applied one: %d %s", st, out);
    free(out);
    st = migrate(false, url, dir, &out);
    CHECK(st == 1 && strstr(out, "002_b.sql") != NULL && strstr(out, "nothing applied") != NULL,
          "applying refuses it: %d %s", st, out);
    free(out);
    cmd = tl_sprintf("psql -X -At -d '%s' -c \"SELECT count(*) FROM schema_migrations WHERE version = '002_b.sql'\" "
                     "-c \"SELECT to_regclass('public.b') IS NULL\"",
                     url);
    st = run(cmd, &out);
    CHECK(st == 0 && strcmp(out, "0\nt\n") == 0, "002_b.sql neither recorded nor run: %d %s", st, out);
    free(cmd);
    free(out);
    r = tl_sql(owner, false, "DROP DATABASE aigw_migorder", 0, NULL);
    PQclear(r);
    PQfinish(owner);
    free(url);
    free(dir);
}

/* The shipped example configuration is valid as it stands, given the
 * credentials the unit hands over and a public key where it names one. */
static void
test_example_config(void)
{
    char *creds = tl_sprintf("%s/creds", tmp), *pub, *priv, *path, *epub, *epriv, *epath;

    tl_keypair("RS256", &pub, &priv);
    tl_keypair("ES256", &epub, &epriv);
    epath = tl_sprintf("%s/platform.pub.pem", tmp);
    tl_write_file(epath, epub);
    sh("credentials directory", false, "mkdir -p '%s'", creds);
    path = tl_sprintf("%s/jwt-secret", creds);
    tl_write_file(path, "0123456789abcdef0123456789abcdef0123456789\n");
    free(path);
    path = tl_sprintf("%s/rs.pub.pem", tmp);
    tl_write_file(path, pub);
    sh("aigw.example.json passes --check-config", false,
       "sed -e 's#/etc/aigw/jwt-rs256.pub.pem#%s#' -e 's#/etc/aigw/platform-es256.pub.pem#%s#' "
       "'%s/config/aigw.example.json' > '%s/example.json' && "
       "env -u AIGW_DATABASE_URL -u AIGW_REDIS_URL CREDENTIALS_DIRECTORY='%s' '%s' --check-config -c "
       "'%s/example.json' | grep -q 'configuration ok'",
       path, epath, AIGW_SOURCE_DIR, tmp, creds, AIGW_BIN_PATH, tmp);
    free(path);
    free(epath);
    free(epub);
    free(epriv);
    free(pub);
    free(priv);
    free(creds);
}

int
main(void)
{
    snprintf(tmp, sizeof(tmp), "/tmp/aigw-systemd-XXXXXX");
    if (mkdtemp(tmp) == NULL)
        return 1;
    /* scripts/install-deps.sh installs them (Debian package systemd) */
    CHECK(system("command -v systemd-analyze systemd-sysusers systemd-tmpfiles >/dev/null") == 0,
          "systemd-analyze, systemd-sysusers and systemd-tmpfiles are installed");
    test_verify_repo_unit();
    test_sysusers_tmpfiles();
    test_install_destdir();
    test_install_prefix();
    test_migrate_refusals();
    test_migrate_out_of_order();
    test_example_config();
    CHECK(tl_rm_rf(tmp), "scratch removed");
    return tl_done();
}
