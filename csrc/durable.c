/* durable.c: group commit of durable file writes, on a thread kept for them.
 *
 *   core.durable_start(items) -> job    items: array of { op, dir, name, data[, mode[, keep]] }:
 *       dir a core.fs_dir (the store directory, opened under its trust rule), name a file in it,
 *       op "atomic" (a temporary file in the directory, then swapped or renamed into name) or
 *       "append" (O_APPEND); data a string, a rotor.secret, or a rope of pieces (rotor.h:
 *       rotor_dupbytes; a store record is built so from the text it was read from). keep
 *       (atomic): how many bytes at the start of data hold no secret (a store record's journal),
 *       which may stay in the file once a later write displaced it (see empty_spares). Every
 *       open is relative to the directory's descriptor with O_NOFOLLOW and must find a regular
 *       file (as in csrc/fs.c).
 *   job:fd()       an eventfd that becomes readable when the job is done (for the event loop)
 *   job:results()  nil while the job runs; then an array: true, or an error message, per item
 *                  (and .seconds: how long the job took)
 *   job:close()    frees the job (its eventfd) now rather than at garbage collection, once the
 *                  thread is done with it
 *
 * The jobs of a Lua state run one after another, in the order started, on one thread (named
 * rotor-durable) started with the first and ended when the state closes. In a job every file is
 * written first, then made durable together (sync_files: one syncfs of their file system, or an
 * fsync each when much other data is waiting to be written), then the temporary files are renamed
 * in the order given, then every directory that got a new name is fsynced once. An item's result is
 * true only once its data and its name are on disk: what rotor.store.file's put promises, for a
 * whole batch of puts at the cost of about one. Items are independent: one failing leaves the
 * others as they are. The bytes are copied into the job and zeroed when it is freed (store records
 * hold secrets), past the first keep bytes, which hold none. */
#include "rotor.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <sys/eventfd.h>
#include <limits.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DURABLE_JOB_MT "rotor.durable_job"
#define DURABLE_MAX_ITEMS 4096
#define KEPT_SLOTS 1024 /* files remembered by empty_spares (a slot's, until it is overwritten) */

enum { OP_ATOMIC, OP_APPEND };

typedef struct {
    int op;
    mode_t mode;
    int dfd;     /* a duplicate of the directory's descriptor, one per directory of the job */
    int own_dfd; /* this item closes dfd (the first item of its directory) */
    int src_dfd; /* the directory object's own descriptor (items of one directory share dfd) */
    dev_t dev;   /* the directory's identity: fsynced once per group */
    ino_t ino;
    char *where; /* the directory's path, for messages */
    char *name;
    char *tmp; /* OP_ATOMIC: the temporary name */
    char *data;
    size_t len;
    int fd;
    int err;          /* errno of the first failure, 0 when fine */
    const char *what; /* what failed */
    int created;      /* OP_APPEND: the file was new (its directory needs an fsync) */
    int spare;        /* OP_ATOMIC: tmp is the slot's spare file (swapped in, not renamed over) */
    int lockfd;       /* the spare's flock, held from its opening until it was swapped in */
    off_t spare_size; /* the spare's size when opened: cut to the new length after the write */
    dev_t gone_dev;   /* OP_ATOMIC, spare 2: the file the swap displaced (the one to empty) */
    ino_t gone_ino;
    off_t keep;          /* OP_ATOMIC: bytes at the start of data that hold no secret */
    struct stat written; /* OP_ATOMIC: the file written, as it was once written */
    char *why;           /* rotor_fs_open_in's message, when it refused the file */
} item;

typedef struct job job;
typedef struct worker worker;

struct job {
    pthread_mutex_t mu;
    worker *w;    /* the worker it was queued on (NULL: never queued) */
    pid_t pid;    /* the process that queued it */
    job *next;    /* in the worker's queue */
    int finished; /* (under w->mu) the worker is done with it, spares emptied */
    int done;
    int efd;
    int n;
    item *items;
    double seconds; /* how long the worker took */
};

/* The thread that runs a Lua state's group commits, one job after another, started with the
 * first job and kept: a thread per group made each group wait for the new thread to be
 * scheduled (0.5 to 0.9 ms a group next to a busy event loop, a quarter of a group's time). Its
 * memory is shared by the state's handle (the upvalue of durable_start) and every job not yet
 * freed: refs counts them, and the last to go frees it. */
struct worker {
    pthread_mutex_t mu;
    pthread_cond_t work; /* a job was queued, or stop was set */
    pthread_cond_t fin;  /* a job finished */
    pthread_t thread;
    int running; /* the thread was started, in process pid */
    pid_t pid;
    int stop; /* the state is closing: run what is queued, then end */
    int refs;
    job *head, *tail;
    /* the files this thread named with a secret-free start (keep), by inode: the thread's alone */
    struct kept {
        dev_t dev;
        ino_t ino;
        off_t size, keep;
        struct timespec mtime;
    } kept[KEPT_SLOTS];
};

typedef struct {
    job *j;
} job_ud;

typedef struct {
    worker *w;
} worker_ud;

#define DURABLE_WORKER_MT "rotor.durable_worker"

static void worker_unref(worker *w) {
    pthread_mutex_lock(&w->mu);
    int last = --w->refs == 0;
    pthread_mutex_unlock(&w->mu);
    if (last) {
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->work);
        pthread_cond_destroy(&w->fin);
        free(w);
    }
}

/* Free a job once the worker is done with it (its spares emptied): no job is freed while the
 * worker may touch it, and the worker ends before the module's code is unloaded (the state's
 * handle is finalized first; see l_worker_gc). A job queued by the process this one was forked
 * from never runs here: nothing to wait for, and its worker is left alone. */
static void job_free(job *j) {
    if (j->w != NULL && j->pid == getpid()) {
        pthread_mutex_lock(&j->w->mu);
        while (!j->finished) {
            pthread_cond_wait(&j->w->fin, &j->w->mu);
        }
        pthread_mutex_unlock(&j->w->mu);
        worker_unref(j->w);
    }
    for (int i = 0; i < j->n; i++) {
        item *it = &j->items[i];
        if (it->data != NULL) {
            /* the first keep bytes hold no secret (a record's journal): only the rest is zeroed */
            rotor_zero(it->data + it->keep, it->len - (size_t)it->keep);
            free(it->data);
        }
        if (it->lockfd >= 0) {
            close(it->lockfd);
        }
        free(it->why);
        free(it->where);
        free(it->name);
        free(it->tmp);
        if (it->own_dfd && it->dfd >= 0) {
            close(it->dfd);
        }
    }
    free(j->items);
    if (j->efd >= 0) {
        close(j->efd);
    }
    pthread_mutex_destroy(&j->mu);
    free(j);
}

static void fail(item *it, const char *what) {
    if (it->err == 0) {
        it->err = errno != 0 ? errno : EIO;
        it->what = what;
    }
    if (it->fd >= 0) {
        close(it->fd);
        it->fd = -1;
    }
    if (it->tmp != NULL) {
        unlinkat(it->dfd, it->tmp, 0);
    }
    if (it->lockfd >= 0) {
        close(it->lockfd);
        it->lockfd = -1;
    }
}

/* fsync every distinct directory of the items that need it; a failure fails those items */
static void sync_dirs(job *j) {
    for (int i = 0; i < j->n; i++) {
        item *it = &j->items[i];
        if (it->err != 0 || (it->op == OP_APPEND && !it->created)) {
            continue;
        }
        int seen = 0;
        for (int k = 0; k < i && !seen; k++) {
            item *o = &j->items[k];
            seen = o->err == 0 && (o->op == OP_ATOMIC || o->created) && o->dev == it->dev &&
                   o->ino == it->ino;
        }
        if (seen || fsync(it->dfd) == 0) {
            continue; /* synced with an earlier item (or failed with it) */
        }
        int err = errno != 0 ? errno : EIO;
        for (int k = i; k < j->n; k++) {
            item *o = &j->items[k];
            if (o->err == 0 && (o->op == OP_ATOMIC || o->created) && o->dev == it->dev &&
                o->ino == it->ino) {
                o->err = err;
                o->what = "cannot sync the directory of";
            }
        }
    }
}

/* Open name in the item's directory as csrc/fs.c opens store files: no link followed, never
 * blocking on a FIFO, a regular file only (made when missing with O_CREAT, *created telling);
 * -1 and, when why is given, the message naming the problem in *why (allocated). */
static int open_regular(const item *it, const char *name, int flags, int *created, char **why) {
    char msg[ROTOR_FS_WHY];
    int fd = rotor_fs_open_in(it->dfd, it->where, name, flags, it->mode, created, msg);
    if (fd < 0 && why != NULL) {
        int err = errno;
        *why = strdup(msg);
        errno = err;
    }
    return fd;
}

/* Take the flock of the spare open at fd (without waiting) and check, with it held, that the
 * file is still the one named NAME.tmp.spare, a regular file of ours with no other link: 0 (its
 * stat in *held), or -1 (the lock is then dropped with fd). A writer holds this lock from
 * opening the spare until it is swapped in as NAME, and only a holder swaps it, so once the check
 * passes the file stays the spare until the lock is dropped. */
static int lock_spare(item *it, int fd, struct stat *held) {
    struct stat named;
    if (flock(fd, LOCK_EX | LOCK_NB) != 0 || fstat(fd, held) != 0 ||
        fstatat(it->dfd, it->tmp, &named, AT_SYMLINK_NOFOLLOW) != 0 ||
        held->st_dev != named.st_dev || held->st_ino != named.st_ino || held->st_nlink != 1 ||
        held->st_uid != geteuid() || !S_ISREG(held->st_mode)) {
        return -1;
    }
    return 0;
}

/* The spare file of an atomic write: PATH.tmp.spare, opened (or created) to take the new bytes.
 * Writing into the inode that the previous write displaced, instead of a new temporary file,
 * spares the file system an inode allocation and a deletion per write: on ext4 without a
 * journal, allocating inodes among many recently deleted ones scans the inode tables and costs
 * more than the write and the fsync together. A spare is used only when lock_spare takes it; its
 * lock is kept (it->lockfd) until the file was swapped in, so that no one empties it meanwhile
 * (see empty_spares). Else -1 and a fresh temporary file is made. The spare gets the item's mode.
 * The new bytes are written over it from its start and it is then cut to their length: its
 * blocks are reused, not freed and allocated again (see zero_spare). */
static int open_spare(item *it) {
    snprintf(it->tmp, strlen(it->name) + 32, "%s.tmp.spare", it->name);
    int created;
    int fd = open_regular(it, it->tmp, O_WRONLY | O_CREAT, &created, NULL);
    struct stat st = {0};
    if (fd >= 0 && (lock_spare(it, fd, &st) != 0 ||
                    ((st.st_mode & 07777) != it->mode && fchmod(fd, it->mode) != 0) ||
                    (it->lockfd = fcntl(fd, F_DUPFD_CLOEXEC, 0)) < 0)) {
        close(fd);
        fd = -1;
    }
    it->spare = fd >= 0;
    it->spare_size = fd >= 0 ? st.st_size : 0;
    return fd;
}

/* A fresh temporary file NAME.tmp.<12 hex> (O_EXCL), when the spare cannot be used. */
static int open_temporary(item *it) {
    for (int tries = 0; tries < 8; tries++) {
        unsigned char rnd[6];
        if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) {
            return -1;
        }
        snprintf(it->tmp, strlen(it->name) + 32, "%s.tmp.%02x%02x%02x%02x%02x%02x", it->name,
                 rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5]);
        int fd =
            openat(it->dfd, it->tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd >= 0 || errno != EEXIST) {
            return fd;
        }
    }
    return -1;
}

/* Give the written file its name. A spare is exchanged with the current file (renameat2
 * RENAME_EXCHANGE: both names stay, so the displaced inode becomes the next spare, emptied);
 * when there is no current file, or the file system cannot exchange, it is renamed. The displaced
 * file's identity is kept: empty_spares empties that file and no other. */
static int put_in_place(item *it) {
    struct stat cur;
    if (it->spare && fstatat(it->dfd, it->name, &cur, AT_SYMLINK_NOFOLLOW) == 0 &&
        renameat2(it->dfd, it->tmp, it->dfd, it->name, RENAME_EXCHANGE) == 0) {
        it->spare = 2; /* holds the displaced bytes now */
        it->gone_dev = cur.st_dev;
        it->gone_ino = cur.st_ino;
        return 0;
    }
    return renameat(it->dfd, it->tmp, it->dfd, it->name);
}

/* A file an atomic item named, with keep bytes at its start that hold no secret (a store
 * record's journal, which the file store writes first): remembered by its identity, its size and
 * its modification time as written, so that once a later write displaces it, only the bytes
 * after them are zeroed. A slot rotated for long carries tens of kilobytes of journal and a few of
 * versions; its three writes per rotation each displaced (and zeroed) as much as they wrote, and
 * those zeros went to disk with the next group. Every file named is noted (keep 0: nothing is
 * kept), so that a note never outlives the bytes it was made for. Only the durable thread
 * touches the table. */
static void remember_kept(worker *w, const item *it) {
    if (w == NULL) {
        return;
    }
    struct kept *k = &w->kept[it->written.st_ino % KEPT_SLOTS];
    k->dev = it->written.st_dev;
    k->ino = it->written.st_ino;
    k->size = it->written.st_size;
    k->keep = it->keep < it->written.st_size ? it->keep : it->written.st_size;
    k->mtime = it->written.st_mtim;
}

/* Where the zeros of a displaced file start: after the bytes that hold no secret when the file
 * is one remember_kept noted and has not changed since (the same size and modification time:
 * another writer's bytes, or a file this thread did not write, are zeroed whole). */
static off_t kept_start(worker *w, const struct stat *st) {
    struct kept *k = w != NULL ? &w->kept[st->st_ino % KEPT_SLOTS] : NULL;
    if (k == NULL || k->ino != st->st_ino || k->dev != st->st_dev || k->size != st->st_size ||
        k->mtime.tv_sec != st->st_mtim.tv_sec || k->mtime.tv_nsec != st->st_mtim.tv_nsec) {
        return 0;
    }
    k->ino = 0; /* a spare now: the next file named from it is noted anew */
    return k->keep;
}

/* Overwrite the bytes of a spare with zeros, keeping its blocks, rather than ftruncate it to
 * nothing, which frees them: on a file system mounted with discard (ext4 here) every freed block
 * is a discard the thread waits for, and the next write of the slot allocates blocks again. 16
 * tasks each putting a 6 kB record and appending a line, 60 times: 3.0 ms per put with ftruncate,
 * 1.65 ms with zeros written (1.95 ms with fallocate FALLOC_FL_ZERO_RANGE, whose unwritten
 * extents the next write must convert). The next write of the slot goes over the same blocks.
 * Zeros from byte at (the bytes before it hold no secret: see remember_kept). Should a write
 * fail, ftruncate after all. */
static void zero_spare(int fd, off_t at, off_t size) {
    static const char zeros[4096];
    while (at < size) {
        size_t n = size - at < (off_t)sizeof zeros ? (size_t)(size - at) : sizeof zeros;
        ssize_t w = pwrite(fd, zeros, n, at);
        if (w <= 0) {
            (void)ftruncate(fd, 0);
            return;
        }
        at += w;
    }
}

/* Empty the spares that hold displaced bytes (old records hold secrets: no copy is kept), after
 * the job's writers were woken, before the thread takes the next job. Another process may write
 * the same slot meanwhile: its writer may be writing a new record into this very spare, or have
 * swapped it in as the slot file already. So a spare is emptied only under its flock (the writer
 * holds it until its swap is done; one taken by someone else means that writer emptied it when it
 * opened it), only when, with the lock held, it is still the file named NAME.tmp.spare (else a
 * writer swapped it in after this opened it), and only when it is the very file this job's swap
 * displaced. Should the other writer have swapped its record in before this opened the spare,
 * the file now named so is the record this job wrote: the slot's name on disk refers to it until
 * that writer's directory fsync, so it is not emptied here (that writer empties it once its own
 * swap is on disk). */
static void empty_spares(job *j) {
    for (int i = 0; i < j->n; i++) {
        item *it = &j->items[i];
        if (it->spare != 2) {
            continue;
        }
        int fd = open_regular(it, it->tmp, O_WRONLY, NULL, NULL);
        if (fd < 0) {
            continue;
        }
        struct stat st;
        if (lock_spare(it, fd, &st) == 0 && st.st_dev == it->gone_dev &&
            st.st_ino == it->gone_ino && st.st_size != 0) {
            zero_spare(fd, kept_start(j->w, &st), st.st_size);
        }
        close(fd); /* and its lock */
    }
}

/* The system's dirty and under-writeback page cache, in kB (/proc/meminfo); -1 when unknown. */
static long dirty_kb(void) {
    int fd = open("/proc/meminfo", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    char buf[4096];
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0) {
        return -1;
    }
    buf[n] = '\0';
    const char *d = strstr(buf, "\nDirty:");
    const char *w = strstr(buf, "\nWriteback:");
    if (d == NULL || w == NULL) {
        return -1;
    }
    return strtol(d + 7, NULL, 10) + strtol(w + 11, NULL, 10);
}

/* syncfs is used only while the system holds at most this much unwritten page cache: beyond it,
 * the syncfs of the store's file system would wait for (and force out) other programs' data. */
#define SYNCFS_MAX_DIRTY_KB 8192L

/* Make the written bytes of every item durable. When little of the page cache is unwritten, one
 * syncfs per file system: its data, its inodes and one cache flush for them all, where an fsync
 * per file flushes the device's cache once per file (a group of 19 writes: 2.6 ms against 3.3 ms
 * on ext4 here). But syncfs writes back every dirty page of the file system, other programs'
 * included: next to a program writing a lot (dd, a database), a group commit took up to 176 ms
 * with syncfs and at most 7 ms with an fsync per file. So with more dirty data about, or where
 * the file system has no syncfs, an fsync per file. A failure fails the items on that file
 * system. */
static void sync_files(job *j) {
    long dirty = dirty_kb();
    int use_syncfs = dirty >= 0 && dirty <= SYNCFS_MAX_DIRTY_KB;
    if (!use_syncfs) {
        /* an fsync per file: start the writeback of them all first, then wait for each (a
         * syncfs starts it for the whole file system itself) */
        for (int i = 0; i < j->n; i++) {
            if (j->items[i].err == 0) {
                (void)sync_file_range(j->items[i].fd, 0, 0, SYNC_FILE_RANGE_WRITE);
            }
        }
    }
    for (int i = 0; i < j->n; i++) {
        item *it = &j->items[i];
        int seen = 0;
        for (int k = 0; k < i && !seen; k++) {
            seen = j->items[k].err == 0 && j->items[k].dev == it->dev;
        }
        if (it->err != 0 || seen) {
            continue;
        }
        errno = 0;
        int rc = use_syncfs ? syncfs(it->fd) : -1;
        int err = use_syncfs ? (errno != 0 ? errno : EIO) : ENOSYS;
        for (int k = i; k < j->n; k++) {
            item *o = &j->items[k];
            if (o->err != 0 || o->dev != it->dev) {
                continue;
            }
            if (rc != 0 && err != ENOSYS && err != EINVAL) {
                errno = err;
                fail(o, o->op == OP_ATOMIC ? "cannot write" : "cannot append to");
            } else if (rc != 0 && fsync(o->fd) != 0) {
                fail(o, o->op == OP_ATOMIC ? "cannot write" : "cannot append to");
            }
        }
    }
}

static void run_job(job *j) {
    double t0 = rotor_mono_now();
    /* 1. write every file */
    for (int i = 0; i < j->n; i++) {
        item *it = &j->items[i];
        errno = 0;
        if (it->op == OP_ATOMIC) {
            it->fd = open_spare(it);
            if (it->fd < 0) {
                it->fd = open_temporary(it);
            }
            if (it->fd < 0) {
                free(it->tmp);
                it->tmp = NULL;
                fail(it, "cannot create a temporary file for");
                continue;
            }
            if ((!it->spare && fchmod(it->fd, it->mode) != 0) ||
                rotor_write_all(it->fd, it->data, it->len) != 0 ||
                (it->spare_size > (off_t)it->len && ftruncate(it->fd, (off_t)it->len) != 0) ||
                fstat(it->fd, &it->written) != 0) {
                fail(it, "cannot write");
            }
        } else {
            it->fd =
                open_regular(it, it->name, O_WRONLY | O_APPEND | O_CREAT, &it->created, &it->why);
            if (it->fd < 0) {
                fail(it, "cannot open");
                continue;
            }
            if (rotor_write_all(it->fd, it->data, it->len) != 0) {
                fail(it, "cannot append to");
            }
        }
    }
    /* 2. make the bytes durable */
    sync_files(j);
    for (int i = 0; i < j->n; i++) {
        item *it = &j->items[i];
        if (it->err == 0 && close(it->fd) != 0) {
            it->fd = -1;
            fail(it, "cannot write");
        }
        it->fd = -1;
    }
    /* 3. the new names, in the order given */
    for (int i = 0; i < j->n; i++) {
        item *it = &j->items[i];
        if (it->err == 0 && it->op == OP_ATOMIC) {
            if (put_in_place(it) != 0) {
                fail(it, "cannot rename into");
            } else {
                remember_kept(j->w, it);
            }
        }
        if (it->lockfd >= 0) {
            close(it->lockfd); /* the spare is swapped in (or failed): others may empty it */
            it->lockfd = -1;
        }
    }
    /* 4. the names durable: each directory once */
    sync_dirs(j);
    pthread_mutex_lock(&j->mu);
    j->done = 1;
    j->seconds = rotor_mono_now() - t0;
    pthread_mutex_unlock(&j->mu);
    uint64_t one = 1;
    ssize_t w = write(j->efd, &one, sizeof one);
    (void)w;
    empty_spares(j); /* after the writers were woken: not on their path */
}

/* The worker's thread: the queued jobs in order, until stop is set and none is left. */
static void *worker_main(void *arg) {
    worker *w = arg;
    (void)pthread_setname_np(pthread_self(), "rotor-durable"); /* for top -H, perf, gdb */
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (w->head == NULL && !w->stop) {
            pthread_cond_wait(&w->work, &w->mu);
        }
        job *j = w->head;
        if (j == NULL) {
            break;
        }
        w->head = j->next;
        if (w->head == NULL) {
            w->tail = NULL;
        }
        pthread_mutex_unlock(&w->mu);
        run_job(j);
        pthread_mutex_lock(&w->mu);
        j->finished = 1;
        pthread_cond_broadcast(&w->fin);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* Queue a job on the worker, starting its thread when none runs in this process (the first job;
 * or the first in a child of fork, where the parent's thread does not exist and its queue and
 * lock are not to be trusted: they are made anew). 0, or an error number. */
static int worker_submit(worker *w, job *j) {
    pid_t pid = getpid();
    if (w->running && w->pid != pid) {
        pthread_mutex_init(&w->mu, NULL);
        pthread_cond_init(&w->work, NULL);
        pthread_cond_init(&w->fin, NULL);
        w->running = 0;
        w->head = w->tail = NULL;
    }
    pthread_mutex_lock(&w->mu);
    int rc = w->stop ? EINVAL : 0;
    if (rc == 0 && !w->running) {
        /* the thread takes no asynchronous signal (it inherits the mask it is created with): a
         * signal for the process goes to a thread that acts on it, such as the event loop's,
         * whose poll returns early on one. Its own faults still reach it. */
        static const int faults[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS};
        sigset_t quiet, old;
        sigfillset(&quiet);
        for (size_t k = 0; k < sizeof faults / sizeof *faults; k++) {
            sigdelset(&quiet, faults[k]);
        }
        pthread_sigmask(SIG_SETMASK, &quiet, &old);
        rc = pthread_create(&w->thread, NULL, worker_main, w);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        w->running = rc == 0;
        w->pid = pid;
    }
    if (rc == 0) {
        j->w = w;
        j->pid = pid;
        w->refs++;
        if (w->tail != NULL) {
            w->tail->next = j;
        } else {
            w->head = j;
        }
        w->tail = j;
        pthread_cond_signal(&w->work);
    }
    pthread_mutex_unlock(&w->mu);
    return rc;
}

static job *check_job(lua_State *L) {
    job_ud *u = luaL_checkudata(L, 1, DURABLE_JOB_MT);
    if (u->j == NULL) {
        luaL_error(L, "durable job: already freed");
    }
    return u->j;
}

/* read field k of the table at t into an item: raises with a message naming the item */
static const char *item_field(lua_State *L, int t, int k, int i, size_t *len) {
    lua_rawgeti(L, t, k);
    const char *s = rotor_bytes(L, -1, len, NULL);
    if (s == NULL) {
        luaL_error(L, "durable_start: items[%d][%d] must be a string", i, k);
    }
    return s;
}

static int l_durable_start(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer n = (lua_Integer)lua_rawlen(L, 1);
    luaL_argcheck(L, n >= 1 && n <= DURABLE_MAX_ITEMS, 1, "1 to 4096 items expected");
    job_ud *u = lua_newuserdata(L, sizeof(*u));
    u->j = NULL;
    luaL_setmetatable(L, DURABLE_JOB_MT);
    job *j = calloc(1, sizeof(*j));
    if (j == NULL) {
        return luaL_error(L, "durable_start: out of memory");
    }
    pthread_mutex_init(&j->mu, NULL);
    j->efd = -1;
    u->j = j; /* from here on, __gc frees whatever was built */
    j->items = calloc((size_t)n, sizeof(item));
    if (j->items == NULL) {
        return luaL_error(L, "durable_start: out of memory");
    }
    for (lua_Integer i = 1; i <= n; i++) {
        int top = lua_gettop(L);
        lua_rawgeti(L, 1, i);
        if (!lua_istable(L, -1)) {
            return luaL_error(L, "durable_start: items[%d] must be a table", (int)i);
        }
        int t = lua_gettop(L);
        size_t oplen, nlen, dlen = 0;
        const char *op = item_field(L, t, 1, (int)i, &oplen);
        lua_rawgeti(L, t, 2);
        const char *where = NULL;
        int dfd = rotor_fs_dir_fd(L, lua_gettop(L), &where);
        const char *name = item_field(L, t, 3, (int)i, &nlen);
        lua_rawgeti(L, t, 5);
        lua_Integer mode = luaL_optinteger(L, -1, 0600);
        lua_rawgeti(L, t, 6);
        lua_Integer keep = luaL_optinteger(L, -1, 0);
        item *it = &j->items[j->n];
        it->fd = -1;
        it->dfd = -1;
        it->lockfd = -1;
        if (strcmp(op, "atomic") == 0) {
            it->op = OP_ATOMIC;
        } else if (strcmp(op, "append") == 0) {
            it->op = OP_APPEND;
        } else {
            return luaL_error(L, "durable_start: items[%d]: op must be \"atomic\" or \"append\"",
                              (int)i);
        }
        if (nlen == 0 || nlen + 32 > NAME_MAX || strlen(name) != nlen ||
            strchr(name, '/') != NULL || strcmp(name, ".") == 0 || strcmp(name, "..") == 0 ||
            mode < 0 || mode > 07777) {
            return luaL_error(L, "durable_start: items[%d]: a bad file name or mode", (int)i);
        }
        j->n++;
        it->mode = (mode_t)mode;
        it->src_dfd = dfd;
        const item *same = NULL; /* an earlier item in the same directory: its duplicate serves */
        for (int k = 0; k < j->n - 1 && same == NULL; k++) {
            if (j->items[k].src_dfd == dfd) {
                same = &j->items[k];
            }
        }
        if (same != NULL) {
            it->dfd = same->dfd;
            it->dev = same->dev;
            it->ino = same->ino;
        } else {
            it->dfd = fcntl(dfd, F_DUPFD_CLOEXEC, 0);
            it->own_dfd = it->dfd >= 0;
            struct stat st;
            if (it->dfd < 0 || fstat(it->dfd, &st) != 0) {
                return luaL_error(L, "durable_start: items[%d]: %s", (int)i, strerror(errno));
            }
            it->dev = st.st_dev;
            it->ino = st.st_ino;
        }
        it->where = strdup(where);
        it->name = strdup(name);
        it->tmp = it->op == OP_ATOMIC ? malloc(nlen + 32) : NULL;
        if (it->where == NULL || it->name == NULL || (it->op == OP_ATOMIC && it->tmp == NULL)) {
            return luaL_error(L, "durable_start: out of memory");
        }
        lua_rawgeti(L, t, 4);
        it->data = rotor_dupbytes(L, -1, &dlen);
        it->len = dlen;
        if (keep < 0 || (size_t)keep > dlen) {
            return luaL_error(L, "durable_start: items[%d]: keep must be 0 to the data's length",
                              (int)i);
        }
        it->keep = it->op == OP_ATOMIC ? (off_t)keep : 0;
        lua_settop(L, top);
    }
    j->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (j->efd < 0) {
        return luaL_error(L, "durable_start: eventfd: %s", strerror(errno));
    }
    const worker_ud *wu = lua_touserdata(L, lua_upvalueindex(1));
    int rc = wu != NULL && wu->w != NULL ? worker_submit(wu->w, j) : EINVAL;
    if (rc != 0) {
        return luaL_error(L, "durable_start: cannot start the durable-write thread: %s",
                          strerror(rc));
    }
    return 1;
}

static int l_job_fd(lua_State *L) {
    lua_pushinteger(L, check_job(L)->efd);
    return 1;
}

static int l_job_results(lua_State *L) {
    job *j = check_job(L);
    pthread_mutex_lock(&j->mu);
    int done = j->done;
    pthread_mutex_unlock(&j->mu);
    if (!done) {
        lua_pushnil(L);
        return 1;
    }
    lua_createtable(L, j->n, 1);
    lua_pushnumber(L, j->seconds);
    lua_setfield(L, -2, "seconds");
    for (int i = 0; i < j->n; i++) {
        item *it = &j->items[i];
        if (it->err == 0) {
            lua_pushboolean(L, 1);
        } else if (it->why != NULL) {
            lua_pushstring(L, it->why);
        } else {
            lua_pushfstring(L, "%s %s/%s: %s", it->what, it->where, it->name, strerror(it->err));
        }
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

static int l_job_gc(lua_State *L) {
    job_ud *u = luaL_checkudata(L, 1, DURABLE_JOB_MT);
    if (u->j != NULL) {
        job_free(u->j);
        u->j = NULL;
    }
    return 0;
}

/* The state's handle on its worker goes (lua_close, or the module dropped): the thread runs
 * what is queued and ends, joined here. In a child of fork the thread is the parent's: left
 * alone. */
static int l_worker_gc(lua_State *L) {
    worker_ud *u = luaL_checkudata(L, 1, DURABLE_WORKER_MT);
    worker *w = u->w;
    u->w = NULL;
    if (w == NULL || (w->running && w->pid != getpid())) {
        return 0;
    }
    pthread_mutex_lock(&w->mu);
    w->stop = 1;
    pthread_cond_signal(&w->work);
    int running = w->running;
    pthread_mutex_unlock(&w->mu);
    if (running) {
        pthread_join(w->thread, NULL);
    }
    worker_unref(w);
    return 0;
}

void rotor_durable_open(lua_State *L) {
    static const luaL_Reg meth[] = {
        {"fd", l_job_fd}, {"results", l_job_results}, {"close", l_job_gc}, {NULL, NULL}};
    if (luaL_newmetatable(L, DURABLE_JOB_MT)) {
        lua_pushcfunction(L, l_job_gc);
        lua_setfield(L, -2, "__gc");
        luaL_newlib(L, meth);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    /* the worker: the upvalue of durable_start, created (as every job later) after the module's
     * library handle, so that lua_close finalizes the jobs, then the worker, before unloading */
    worker_ud *u = lua_newuserdata(L, sizeof(*u));
    u->w = NULL;
    if (luaL_newmetatable(L, DURABLE_WORKER_MT)) {
        lua_pushcfunction(L, l_worker_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    worker *w = calloc(1, sizeof(*w));
    if (w == NULL) {
        luaL_error(L, "rotor.core: out of memory");
        return;
    }
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->work, NULL);
    pthread_cond_init(&w->fin, NULL);
    w->refs = 1;
    u->w = w;
    lua_pushcclosure(L, l_durable_start, 1);
    lua_setfield(L, -2, "durable_start");
}
