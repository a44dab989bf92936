/* spare_hold.c: an LD_PRELOAD library for spec/durable_spec.lua (driven by
 * spec/helpers/spare_race.sh). It holds rotor's durable-write thread (named rotor-durable) once,
 * at the point ROTOR_HOLD_AT names, so that another process can write the same slot meanwhile:
 *   empty-open  the first open of the file ROTOR_SPARE_NAME after the thread's second directory
 *               fsync: the second group of a process that wrote two is done and is about to empty
 *               the spare its swap displaced
 *   empty-lock  the first flock after the second directory fsync: that spare opened, not locked
 *   sync        the first syncfs, or fsync of a regular file: the group's files are written (the
 *               spare locked), not yet durable nor swapped in
 *   dirsync     the first fsync of a directory: the group's files are swapped in, the new names
 *               not yet durable
 * Held, it creates the file ROTOR_HOLD_DIR/held and waits (up to 30 s) for ROTOR_HOLD_DIR/release.
 * At dirsync it then copies what the file ROTOR_SPARE_NAME holds into ROTOR_HOLD_DIR/seen: until
 * that fsync returns, the slot's name on disk still refers to that file. Built by the spec:
 *   cc -shared -fPIC -o build/spare_hold.so spec/helpers/spare_hold.c -ldl */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int dir_syncs; /* directory fsyncs of the durable thread so far */
static int held;      /* once in the process */

static int durable_thread(void) {
    char name[16] = "";
    (void)pthread_getname_np(pthread_self(), name, sizeof name);
    return strcmp(name, "rotor-durable") == 0;
}

static int holding_at(const char *point) {
    const char *at = getenv("ROTOR_HOLD_AT");
    return at != NULL && strcmp(at, point) == 0 && !held && durable_thread();
}

static void mark_path(char *buf, size_t size, const char *leaf) {
    const char *dir = getenv("ROTOR_HOLD_DIR");
    snprintf(buf, size, "%s/%s", dir != NULL ? dir : ".", leaf);
}

/* create HOLD_DIR/held, then wait for HOLD_DIR/release */
static void hold(void) {
    char path[4096];
    held = 1;
    mark_path(path, sizeof path, "held");
    FILE *f = fopen(path, "w");
    if (f != NULL) {
        fclose(f);
    }
    mark_path(path, sizeof path, "release");
    for (int i = 0; i < 15000 && access(path, F_OK) != 0; i++) {
        struct timespec ts = {0, 2L * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

static int real_openat(int dfd, const char *path, int flags, mode_t mode) {
    int (*real)(int, const char *, int, ...) =
        (int (*)(int, const char *, int, ...))dlsym(RTLD_NEXT, "openat");
    return real == NULL ? -1 : real(dfd, path, flags, mode);
}

static int hooked_openat(int dfd, const char *path, int flags, mode_t mode) {
    const char *spare = getenv("ROTOR_SPARE_NAME");
    if (spare != NULL && strcmp(path, spare) == 0 && dir_syncs >= 2 && holding_at("empty-open")) {
        hold();
    }
    return real_openat(dfd, path, flags, mode);
}

int openat(int dfd, const char *path, int flags, ...) {
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) {
        va_list ap;
        va_start(ap, flags);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    return hooked_openat(dfd, path, flags, mode);
}

/* the same call, where a build asks for 64-bit file offsets */
int openat64(int dfd, const char *path, int flags, ...) __attribute__((alias("openat")));

int flock(int fd, int op) {
    int (*real)(int, int) = (int (*)(int, int))dlsym(RTLD_NEXT, "flock");
    if (dir_syncs >= 2 && holding_at("empty-lock")) {
        hold();
    }
    return real == NULL ? -1 : real(fd, op);
}

int syncfs(int fd) {
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "syncfs");
    if (holding_at("sync")) {
        hold();
    }
    return real == NULL ? -1 : real(fd);
}

int fsync(int fd) {
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    struct stat st;
    int dir = fstat(fd, &st) == 0 && S_ISDIR(st.st_mode);
    if (!dir && holding_at("sync")) {
        hold();
    }
    if (dir && holding_at("dirsync")) {
        hold();
        const char *spare = getenv("ROTOR_SPARE_NAME");
        char buf[256], path[4096];
        ssize_t n = -1;
        int sfd = spare != NULL ? real_openat(fd, spare, O_RDONLY | O_CLOEXEC, 0) : -1;
        if (sfd >= 0) {
            n = read(sfd, buf, sizeof buf);
            close(sfd);
        }
        mark_path(path, sizeof path, "seen");
        FILE *f = fopen(path, "w");
        if (f != NULL) {
            if (n > 0) {
                fwrite(buf, 1, (size_t)n, f);
            }
            fclose(f);
        }
    }
    int rc = real == NULL ? -1 : real(fd);
    if (dir && durable_thread()) {
        dir_syncs++;
    }
    return rc;
}
