/* spare_window.c: an LD_PRELOAD library for spec/durable_spec.lua. It stages one interleaving of
 * rotor's group commits (threads named rotor-durable, one per group) and reports what a spare file
 * held inside it.
 *   - The first time a durable thread that has already fsynced its directory (its group is done)
 *     opens a file named ROTOR_SPARE_NAME (it is emptying the spare its group displaced), the open
 *     waits 150 ms: the next group meanwhile writes that slot again and swaps the file in.
 *   - The first directory fsync of another durable thread while that open waits (the next group
 *     making its new name durable) waits 300 ms, then copies what the file named ROTOR_SPARE_NAME
 *     holds into the file ROTOR_SPARE_MARK. Until that fsync returns, the slot's name on disk still
 *     refers to the file now named as the spare: its bytes must still be there.
 * Built by the spec:
 *   cc -shared -fPIC -o build/spare_window.so spec/helpers/spare_window.c -ldl */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static __thread int dir_synced; /* this thread fsynced a directory */
static int holding;             /* an emptier's open is being held back */
static int held_once, watched_once;

static int durable_thread(void) {
    char name[16] = "";
    (void)pthread_getname_np(pthread_self(), name, sizeof name);
    return strcmp(name, "rotor-durable") == 0;
}

static void pause_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000L * 1000};
    nanosleep(&ts, NULL);
}

static int real_openat(int dfd, const char *path, int flags, mode_t mode) {
    int (*real)(int, const char *, int, ...) =
        (int (*)(int, const char *, int, ...))dlsym(RTLD_NEXT, "openat");
    return real == NULL ? -1 : real(dfd, path, flags, mode);
}

static int hooked_openat(int dfd, const char *path, int flags, mode_t mode) {
    const char *spare = getenv("ROTOR_SPARE_NAME");
    if (spare != NULL && dir_synced && strcmp(path, spare) == 0 && durable_thread() &&
        !__atomic_exchange_n(&held_once, 1, __ATOMIC_SEQ_CST)) {
        __atomic_store_n(&holding, 1, __ATOMIC_SEQ_CST);
        pause_ms(150);
        int fd = real_openat(dfd, path, flags, mode);
        __atomic_store_n(&holding, 0, __ATOMIC_SEQ_CST);
        return fd;
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

int openat64(int dfd, const char *path, int flags, ...) {
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) {
        va_list ap;
        va_start(ap, flags);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    return hooked_openat(dfd, path, flags, mode);
}

int fsync(int fd) {
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    struct stat st;
    int dir = fstat(fd, &st) == 0 && S_ISDIR(st.st_mode);
    if (dir && durable_thread()) {
        if (__atomic_load_n(&holding, __ATOMIC_SEQ_CST) &&
            !__atomic_exchange_n(&watched_once, 1, __ATOMIC_SEQ_CST)) {
            pause_ms(300);
            const char *spare = getenv("ROTOR_SPARE_NAME");
            const char *mark = getenv("ROTOR_SPARE_MARK");
            char buf[256];
            ssize_t n = -1;
            int sfd = spare != NULL ? real_openat(fd, spare, O_RDONLY | O_CLOEXEC, 0) : -1;
            if (sfd >= 0) {
                n = read(sfd, buf, sizeof buf);
                close(sfd);
            }
            FILE *f = mark != NULL ? fopen(mark, "w") : NULL;
            if (f != NULL) {
                if (n > 0) {
                    fwrite(buf, 1, (size_t)n, f);
                }
                fclose(f);
            }
        }
        int rc = real == NULL ? -1 : real(fd);
        dir_synced = 1;
        return rc;
    }
    return real == NULL ? -1 : real(fd);
}
