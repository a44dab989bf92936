/* flock_delay.c: an LD_PRELOAD library for spec/durable_spec.lua. It holds back one flock call of
 * rotor's durable-write threads (named rotor-durable; one a group commit): the first call that is
 * the ROTOR_FLOCK_DELAY_CALL-th of its thread sleeps 300 ms, then writes "delayed" into the file
 * ROTOR_FLOCK_DELAY_MARK, so the spec knows the window it stages was open. Built by the spec:
 *   cc -shared -fPIC -o build/flock_delay.so spec/helpers/flock_delay.c -ldl */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>

static __thread int calls; /* this thread's */
static int delayed;        /* once in the process */

int flock(int fd, int op) {
    int (*real)(int, int) = (int (*)(int, int))dlsym(RTLD_NEXT, "flock");
    char name[16] = "";
    const char *want = getenv("ROTOR_FLOCK_DELAY_CALL");
    (void)pthread_getname_np(pthread_self(), name, sizeof name);
    if (want != NULL && strcmp(name, "rotor-durable") == 0 && ++calls == atoi(want) &&
        !__atomic_exchange_n(&delayed, 1, __ATOMIC_SEQ_CST)) {
        struct timespec ts = {0, 300L * 1000 * 1000};
        nanosleep(&ts, NULL);
        const char *mark = getenv("ROTOR_FLOCK_DELAY_MARK");
        FILE *f = mark != NULL ? fopen(mark, "w") : NULL;
        if (f != NULL) {
            fputs("delayed\n", f);
            fclose(f);
        }
    }
    return real == NULL ? -1 : real(fd, op);
}
