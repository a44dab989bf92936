/* fs.c: the store directory and its files, durable writes, and the process helpers of rotor.core.
 *
 * The store-directory trust rule lives here and only here (doc/STORES.md):
 *   - every directory on the way to the store, after following symbolic links, is owned by root
 *     or by the effective user, and is not writable by group or others unless it is sticky
 *     (/tmp); the store directory itself is never group- or other-writable (nothing on a file
 *     system mounted read-only is writable, whatever its mode says);
 *   - a symbolic link on the way is followed only when it is owned by root or the effective user;
 *   - every file inside is opened relative to the directory's descriptor with O_NOFOLLOW and must
 *     be a regular file; modes are set with fchmod on the open descriptor (the umask never
 *     decides a mode) and nothing is ever chmod-ed through a path.
 *
 *   core.fs_dir(path[, create[, trusted]]) -> dir | nil, message, errno
 *       create: make missing directories 0700; trusted: array of directories whose owner and
 *       mode the caller vouches for
 *     dir:read(name) -> string | false (no such file) | nil, message
 *     dir:write(name, data[, mode])  atomic: temp file (O_EXCL), fsync, rename, fsync the dir
 *     dir:append(name, data[, mode]) O_APPEND + fsync        dir:lock(name)  (see fs_lock)
 *       data: a string, a secret, or a rope of pieces (rotor.h: rotor_dupbytes)
 *     dir:list() -> { names }   dir:remove(name)   dir:chmod(mode) (the directory itself)
 *     dir:path()  dir:close()
 *   core.fs_write_atomic(path, data[, mode])  core.fs_append(path, data[, mode])
 *   core.fs_read(path[, strict]) -> string | nil, message, errno   (strict: the file as dir:read)
 *   core.fs_read_trusted(path) -> string | nil, message, errno: a file whose contents rotor runs
 *       (a config file): its directory (and that of each link to it) under the rule above (but
 *       for a sticky one: nobody else can replace a file in it), the
 *       file owned by root or the effective user and writable by neither group nor others
 *   core.fs_read_private(path) -> rotor.secret | nil, message, errno: a file holding a secret (a
 *       sealing key): the rule of fs_read_trusted, and no permission for group or others
 *   core.fs_mkdir(path[, mode])
 *   core.fs_exists(path) -> bool, kind, mode   core.fs_list(dir)   core.fs_remove(path)
 *   core.fs_cwd() -> the working directory | nil, message: $PWD when it names that directory
 *       (the path a shell shows, through symbolic links), else the one getcwd gives
 *   core.fs_write_through(path, data[, mode_if_new]): a file others read (dotenv): a symbolic link
 *       is written through to its target, whose mode, owner and group are kept
 *   core.spawn{argv=, env=, input=} -> exit status: a child with exactly env, no inherited
 *       descriptor beyond 0-2, input written to its stdin
 *   core.getpid()  core.kill_self() (SIGKILL, for crash tests)
 *
 * Data may be a string or a rotor.secret.
 */
#include "rotor.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <pthread.h>
#include <openssl/rand.h>

#define FS_MAX_READ ((off_t)16 * 1024 * 1024) /* largest file a read loads */
#define FS_MAX_PATH 4096
#define FS_MAX_LINKS 40
#define FS_WHY ROTOR_FS_WHY

typedef struct {
    int fd; /* -1 once released */
} fs_lock;

typedef struct {
    int fd; /* -1 once closed */
    char path[FS_MAX_PATH];
} fs_dir;

static int push_fail(lua_State *L, const char *msg, int err) {
    lua_pushnil(L);
    lua_pushstring(L, msg);
    lua_pushinteger(L, err);
    return 3;
}

static int push_errno(lua_State *L, const char *what, const char *path, int err) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s %s: %s", what, path, strerror(err));
    lua_pushinteger(L, err);
    return 3;
}

static mode_t mode_arg(lua_State *L, int idx, mode_t def) {
    lua_Integer m = luaL_optinteger(L, idx, (lua_Integer)def);
    luaL_argcheck(L, m >= 0 && m <= 07777, idx, "mode out of range");
    return (mode_t)m;
}

static const char *path_arg(lua_State *L, int idx) {
    size_t n;
    const char *p = luaL_checklstring(L, idx, &n);
    luaL_argcheck(L, n > 0 && n < FS_MAX_PATH && strlen(p) == n, idx, "bad path");
    return p;
}

/* a file name inside a directory: no '/', no NUL, not "." or "..", at most NAME_MAX bytes */
static const char *name_arg(lua_State *L, int idx) {
    size_t n;
    const char *p = luaL_checklstring(L, idx, &n);
    luaL_argcheck(L,
                  n > 0 && n <= NAME_MAX && strlen(p) == n && strchr(p, '/') == NULL &&
                      strcmp(p, ".") != 0 && strcmp(p, "..") != 0,
                  idx, "a file name (no '/', not . or ..) expected");
    return p;
}

/* write n bytes, whatever the partial writes and EINTR: 0, or -1 with errno set */
int rotor_write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* ---- the trust rule ---- */

__attribute__((format(printf, 3, 4))) static int why(char *out, int err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    // NOLINTNEXTLINE(clang-analyzer-valist.Uninitialized): a false positive, va_start is above
    (void)vsnprintf(out, FS_WHY, fmt, ap);
    va_end(ap);
    errno = err;
    return -1;
}

static int is_trusted(const char *canon, const char *const *trusted, int ntrusted) {
    for (int i = 0; i < ntrusted; i++) {
        if (strcmp(canon, trusted[i]) == 0) {
            return 1;
        }
    }
    return 0;
}

/* Owned by root or by the effective user: the owners the trust rule accepts. */
static int ours(const struct stat *st) {
    return st->st_uid == 0 || st->st_uid == geteuid();
}

/* Writable by group or others, as far as anyone can write: the mode says so and the file system
 * is not mounted read-only (a Kubernetes ConfigMap volume shows its directory as 0777, read-only).
 */
static int others_may_write(int fd, const struct stat *st) {
    struct statvfs vfs;
    if ((st->st_mode & (S_IWGRP | S_IWOTH)) == 0) {
        return 0;
    }
    return !(fstatvfs(fd, &vfs) == 0 && (vfs.f_flag & ST_RDONLY) != 0);
}

/* The trust rule for one directory, open as fd, reached at canonical path where. */
static int check_dir(int fd, const char *where, int final, char *msg) {
    struct stat st;
    uid_t me = geteuid();
    if (fstat(fd, &st) != 0) {
        return why(msg, errno, "cannot stat %s: %s", where, strerror(errno));
    }
    if (!ours(&st)) {
        return why(msg, EPERM,
                   "%s is owned by uid %ld, neither root nor the user rotor runs as (uid %ld): "
                   "that user could replace the files rotor opens; use a directory owned by "
                   "root or uid %ld",
                   where, (long)st.st_uid, (long)me, (long)me);
    }
    if (others_may_write(fd, &st) && (final || (st.st_mode & S_ISVTX) == 0)) {
        return why(msg, EPERM,
                   "%s is writable by group or others (mode %04o): another user could plant "
                   "files or links there; chmod go-w %s",
                   where, (unsigned)(st.st_mode & 07777), where);
    }
    return 0;
}

/* Open the directory path applying the trust rule to every directory on the way (following only
 * links owned by root or the effective user); with create, missing directories are made 0700.
 * file (room for NAME_MAX + 1): path names a file (a config file) rather than a directory; its
 * name is put there (the empty string when path is a directory) and the descriptor returned is
 * of the directory that holds it, which, since nobody else can replace a file in a sticky
 * directory such as /tmp, may itself be sticky and writable by others, as any on the way may (a
 * store directory never). Links to the file are followed under the same rule.
 * Returns the descriptor, or -1 with errno set and the reason in msg (ENOENT: it does not exist).
 * canon receives the canonical path of the directory. */
static int trusted_dir(const char *path, int create, char *file, const char *const *trusted,
                       int ntrusted, char *canon, char *msg) {
    char rest[2 * FS_MAX_PATH + 2];
    char cur[FS_MAX_PATH] = "";
    int links = 0, fd;
    uid_t me = geteuid();
    if (file != NULL) {
        file[0] = '\0';
    }
    if (path[0] == '/') {
        snprintf(rest, sizeof rest, "%s", path);
    } else {
        char cwd[FS_MAX_PATH];
        if (getcwd(cwd, sizeof cwd) == NULL) {
            return why(msg, errno, "cannot find the current directory: %s", strerror(errno));
        }
        if ((size_t)snprintf(rest, sizeof rest, "%s/%s", cwd, path) >= sizeof rest) {
            return why(msg, ENAMETOOLONG, "%s: path too long", path);
        }
    }
    fd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || check_dir(fd, "/", 0, msg) != 0) {
        int err = errno;
        if (fd >= 0) {
            close(fd);
        } else {
            why(msg, err, "cannot open /: %s", strerror(err));
        }
        errno = err;
        return -1;
    }
    for (;;) {
        char *p = rest, name[NAME_MAX + 1];
        struct stat st;
        size_t n;
        while (*p == '/') {
            p++;
        }
        if (*p == '\0') {
            break;
        }
        n = strcspn(p, "/");
        if (n > NAME_MAX) {
            close(fd);
            return why(msg, ENAMETOOLONG, "%s: a path component is too long", path);
        }
        memcpy(name, p, n);
        name[n] = '\0';
        memmove(rest, p + n, strlen(p + n) + 1);
        if (strcmp(name, ".") == 0) {
            continue;
        }
        if (strcmp(name, "..") == 0) {
            /* the parent of a directory the walk descended into was itself checked */
            int nfd = openat(fd, "..", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            char *slash = strrchr(cur, '/');
            close(fd);
            if (nfd < 0) {
                return why(msg, errno, "cannot open %s/..: %s", cur, strerror(errno));
            }
            if (slash != NULL) {
                *slash = '\0';
            }
            fd = nfd;
            continue;
        }
        int made = 0;
        if (fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            int err = errno;
            if (err != ENOENT || !create) {
                close(fd);
                return why(msg, err, "%s/%s: %s", cur, name, strerror(err));
            }
            if (mkdirat(fd, name, 0700) == 0) {
                made = 1;
            } else if (errno != EEXIST) {
                err = errno;
                close(fd);
                return why(msg, err, "cannot create directory %s/%s: %s", cur, name, strerror(err));
            }
            if (fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
                err = errno;
                close(fd);
                return why(msg, err, "%s/%s: %s", cur, name, strerror(err));
            }
        }
        if (S_ISLNK(st.st_mode)) {
            char target[FS_MAX_PATH];
            ssize_t tl;
            if (++links > FS_MAX_LINKS) {
                close(fd);
                return why(msg, ELOOP, "%s: too many symbolic links", path);
            }
            if (!ours(&st)) {
                close(fd);
                return why(msg, EPERM,
                           "%s/%s is a symbolic link owned by uid %ld, neither root nor the user "
                           "rotor runs as (uid %ld): rotor does not follow it; name the real "
                           "path",
                           cur, name, (long)st.st_uid, (long)me);
            }
            tl = readlinkat(fd, name, target, sizeof target - 1);
            if (tl < 0) {
                int err = errno;
                close(fd);
                return why(msg, err, "cannot read the link %s/%s: %s", cur, name, strerror(err));
            }
            target[tl] = '\0';
            if (strlen(rest) + (size_t)tl + 2 > sizeof rest) {
                close(fd);
                return why(msg, ENAMETOOLONG, "%s: path too long", path);
            }
            /* the target, then what followed the link (a link that was the last component stays
             * the last: no slash after it) */
            size_t sep = rest[0] != '\0';
            memmove(rest + tl + sep, rest, strlen(rest) + 1);
            memcpy(rest, target, (size_t)tl);
            if (sep) {
                rest[tl] = '/';
            }
            if (target[0] == '/') {
                int nfd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                close(fd);
                if (nfd < 0) {
                    return why(msg, errno, "cannot open /: %s", strerror(errno));
                }
                fd = nfd;
                cur[0] = '\0';
            }
            continue;
        }
        if (!S_ISDIR(st.st_mode)) {
            if (file != NULL && rest[0] == '\0') {
                memcpy(file, name, n + 1); /* fd: the directory holding it */
                break;
            }
            close(fd);
            return why(msg, ENOTDIR, "%s/%s is not a directory", cur, name);
        }
        int nfd = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        int err = errno;
        close(fd);
        if (nfd < 0) {
            return why(msg, err, "cannot open %s/%s: %s", cur, name, strerror(err));
        }
        fd = nfd;
        if (made && fchmod(fd, 0700) != 0) { /* 0700 whatever the umask */
            err = errno;
            close(fd);
            return why(msg, err, "cannot set the mode of %s/%s: %s", cur, name, strerror(err));
        }
        if (strlen(cur) + n + 2 > sizeof cur) {
            close(fd);
            return why(msg, ENAMETOOLONG, "%s: path too long", path);
        }
        size_t cl = strlen(cur);
        snprintf(cur + cl, sizeof cur - cl, "/%s", name);
        if (!is_trusted(cur, trusted, ntrusted) && check_dir(fd, cur, 0, msg) != 0) {
            err = errno;
            close(fd);
            errno = err;
            return -1;
        }
    }
    snprintf(canon, FS_MAX_PATH, "%s", cur[0] ? cur : "/");
    if (!is_trusted(canon, trusted, ntrusted) && check_dir(fd, canon, file == NULL, msg) != 0) {
        int err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    return fd;
}

/* fd, opened with O_NONBLOCK so that a FIFO planted at its name could not block the open, when
 * it is a regular file: set back to blocking I/O (F_SETFL takes the open's own flags; it ignores
 * the access mode and the creation flags, so no F_GETFL is needed). Else -1, fd closed. */
static int regular_or_close(int fd, int flags) {
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return -1;
    }
    fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
    return fd;
}

/* ---- operations relative to a directory descriptor ---- */

/* Open name in dfd without following a link; must be a regular file. *created tells whether
 * this call made it (then its mode is set with fchmod). Also csrc/durable.c's opener. */
int rotor_fs_open_in(int dfd, const char *where, const char *name, int flags, mode_t mode,
                     int *created, char *msg) {
    int fd = -1;
    if (created != NULL) {
        *created = 0;
    }
    flags |= O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK;
    /* an existing file is opened without O_CREAT: an open that may create takes the directory's
     * lock, and would wait there behind a rename or a journal commit of a durable write */
    fd = openat(dfd, name, flags & ~O_CREAT, 0600);
    if (fd < 0 && errno == ENOENT && (flags & O_CREAT)) {
        fd = openat(dfd, name, flags | O_EXCL, 0600);
        if (fd >= 0) {
            if (fchmod(fd, mode) != 0) {
                int err = errno;
                close(fd);
                return why(msg, err, "cannot set the mode of %s/%s: %s", where, name,
                           strerror(err));
            }
            *created = 1;
        } else if (errno == EEXIST) {
            /* made meanwhile by someone else */
            fd = openat(dfd, name, flags & ~O_CREAT, 0600);
        }
    }
    if (fd < 0) {
        int err = errno;
        if (err == ELOOP) {
            return why(msg, err,
                       "%s/%s is a symbolic link: rotor follows no link inside this directory; "
                       "remove it",
                       where, name);
        }
        if (err == ENXIO) { /* a FIFO nobody reads (or a device), opened for writing */
            return why(msg, err, "%s/%s is not a regular file; remove it", where, name);
        }
        return why(msg, err, "cannot open %s/%s: %s", where, name, strerror(err));
    }
    if (regular_or_close(fd, flags) < 0) {
        return why(msg, EINVAL, "%s/%s is not a regular file; remove it", where, name);
    }
    return fd;
}

static int dir_write_atomic(int dfd, const char *where, const char *name, const char *data,
                            size_t len, mode_t mode, int keep_owner, uid_t uid, gid_t gid,
                            char *msg) {
    char tmp[NAME_MAX + 32];
    unsigned char rnd[6];
    int fd = -1, created = 0, err;
    if (strlen(name) + 20 > NAME_MAX) {
        return why(msg, ENAMETOOLONG, "%s/%s: the name is too long", where, name);
    }
    for (int tries = 0; fd < 0 && tries < 8; tries++) {
        if (RAND_bytes(rnd, sizeof rnd) != 1) {
            return why(msg, EIO, "cannot make a temporary name: RAND_bytes failed");
        }
        snprintf(tmp, sizeof tmp, "%s.tmp.%02x%02x%02x%02x%02x%02x", name, rnd[0], rnd[1], rnd[2],
                 rnd[3], rnd[4], rnd[5]);
        fd = rotor_fs_open_in(dfd, where, tmp, O_WRONLY | O_CREAT, 0600, &created, msg);
        if (fd >= 0 && !created) {
            close(fd); /* a name already taken: draw another */
            fd = -1;
        }
    }
    if (fd < 0) {
        return -1;
    }
    if (keep_owner && fchown(fd, uid, gid) != 0) {
        err = errno;
        close(fd);
        unlinkat(dfd, tmp, 0);
        return why(msg, err,
                   "cannot keep the owner %ld:%ld of %s/%s (%s): run rotor as root or as that "
                   "owner",
                   (long)uid, (long)gid, where, name, strerror(err));
    }
    if (fchmod(fd, mode) != 0 || rotor_write_all(fd, data, len) != 0 || fsync(fd) != 0) {
        err = errno;
        close(fd);
        unlinkat(dfd, tmp, 0);
        return why(msg, err, "cannot write %s/%s: %s", where, name, strerror(err));
    }
    if (close(fd) != 0) {
        err = errno;
        unlinkat(dfd, tmp, 0);
        return why(msg, err, "cannot write %s/%s: %s", where, name, strerror(err));
    }
    if (renameat(dfd, tmp, dfd, name) != 0) {
        err = errno;
        unlinkat(dfd, tmp, 0);
        return why(msg, err, "cannot rename into %s/%s: %s", where, name, strerror(err));
    }
    if (fsync(dfd) != 0) {
        return why(msg, errno, "cannot sync the directory %s: %s", where, strerror(errno));
    }
    return 0;
}

static int dir_append(int dfd, const char *where, const char *name, const char *data, size_t len,
                      mode_t mode, char *msg) {
    int created, err;
    int fd = rotor_fs_open_in(dfd, where, name, O_WRONLY | O_APPEND | O_CREAT, mode, &created, msg);
    if (fd < 0) {
        return -1;
    }
    if (rotor_write_all(fd, data, len) != 0 || fsync(fd) != 0) {
        err = errno;
        close(fd);
        return why(msg, err, "cannot append to %s/%s: %s", where, name, strerror(err));
    }
    close(fd);
    if (created && fsync(dfd) != 0) {
        return why(msg, errno, "cannot sync the directory %s: %s", where, strerror(errno));
    }
    return 0;
}

/* Read up to cap bytes of fd into buf, whatever EINTR, until cap or the end of the file (a file
 * that shrank meanwhile gives what is there): 0 with *got set, or -1 with errno. */
static int read_upto(int fd, char *buf, size_t cap, size_t *got) {
    *got = 0;
    while (*got < cap) {
        ssize_t r = read(fd, buf + *got, cap - *got);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0) {
            return -1;
        }
        if (r == 0) {
            break;
        }
        *got += (size_t)r;
    }
    return 0;
}

/* Read an open file (closed here): 1 with the contents pushed, -1 with the reason in msg. */
static int read_fd(lua_State *L, int fd, const char *where, const char *name, char *msg) {
    struct stat st;
    char *buf;
    size_t got = 0;
    int err;
    if (fstat(fd, &st) != 0) {
        err = errno;
        close(fd);
        return why(msg, err, "cannot stat %s%s: %s", where, name, strerror(err));
    }
    if (st.st_size > FS_MAX_READ) {
        close(fd);
        return why(msg, EFBIG, "cannot read %s%s: larger than 16 MiB", where, name);
    }
    size_t cap = (size_t)st.st_size + 1;
    buf = malloc(cap);
    if (buf == NULL) {
        close(fd);
        return why(msg, ENOMEM, "cannot read %s%s: out of memory", where, name);
    }
    if (read_upto(fd, buf, (size_t)st.st_size, &got) != 0) {
        err = errno;
        rotor_free_secure(buf, cap);
        close(fd);
        return why(msg, err, "cannot read %s%s: %s", where, name, strerror(err));
    }
    close(fd);
    lua_pushlstring(L, buf, got);
    rotor_free_secure(buf, cap);
    return 1;
}

/* Read name in dfd: 1 with the contents pushed, 0 when it does not exist, -1 on error. */
static int dir_read(lua_State *L, int dfd, const char *where, const char *name, char *msg) {
    char slash_name[NAME_MAX + 2];
    int fd = rotor_fs_open_in(dfd, where, name, O_RDONLY, 0, NULL, msg);
    if (fd < 0) {
        return errno == ENOENT ? 0 : -1;
    }
    snprintf(slash_name, sizeof slash_name, "/%s", name);
    return read_fd(L, fd, where, slash_name, msg);
}

/* Push the last n bytes (at most 4096) of name in dfd: a string, false when there is no such
 * file; -1 (msg set) when it cannot be opened under the rule of rotor_fs_open_in (a link, a FIFO or
 * any other non-regular file is refused, and nothing blocks on it) or read. */
static int dir_tail(lua_State *L, int dfd, const char *where, const char *name, lua_Integer n,
                    char *msg) {
    char buf[4096];
    int fd = rotor_fs_open_in(dfd, where, name, O_RDONLY, 0, NULL, msg);
    if (fd < 0) {
        if (errno != ENOENT) {
            return -1;
        }
        lua_pushboolean(L, 0);
        return 1;
    }
    struct stat st;
    size_t want = n < 0 ? 0 : n > (lua_Integer)sizeof buf ? sizeof buf : (size_t)n;
    ssize_t got = 0;
    if (fstat(fd, &st) == 0) {
        want = (off_t)want > st.st_size ? (size_t)st.st_size : want;
        got = want > 0 ? pread(fd, buf, want, st.st_size - (off_t)want) : 0;
    } else {
        got = -1;
    }
    int err = errno;
    close(fd);
    if (got < 0) {
        return why(msg, err, "cannot read %s/%s: %s", where, name, strerror(err));
    }
    lua_pushlstring(L, buf, (size_t)got);
    return 1;
}

static int dir_list(lua_State *L, int dfd, const char *where) {
    int fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = fd < 0 ? NULL : fdopendir(fd);
    struct dirent *e;
    int i = 0;
    if (d == NULL) {
        int err = errno;
        if (fd >= 0) {
            close(fd);
        }
        return push_errno(L, "cannot list", where, err);
    }
    lua_newtable(L);
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) {
            continue;
        }
        lua_pushstring(L, e->d_name);
        lua_rawseti(L, -2, ++i);
    }
    closedir(d);
    return 1;
}

/* Locks: flock on an open lock file; the holder writes its pid into it (a first line of fixed
 * width). What follows that line is the lock's note: a holder may leave one (lk:set_note) for the
 * next holder, who gets it with the lock (a client's claim: the slot that last claimed it). */

#define LOCK_PID_LEN 16 /* "%-15ld\n" */
#define LOCK_NOTE_MAX 512

static int dir_lock(lua_State *L, int dfd, const char *where, const char *name) {
    char msg[FS_WHY];
    char pid[32];
    int created;
    int fd = rotor_fs_open_in(dfd, where, name, O_RDWR | O_CREAT, 0600, &created, msg);
    if (fd < 0) {
        return push_fail(L, msg, errno);
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int err = errno;
        if (err == EWOULDBLOCK) {
            /* the holder writes its pid right after taking the lock: give it a moment */
            ssize_t n = 0;
            for (int tries = 0; tries < 20; tries++) {
                n = pread(fd, pid, sizeof pid - 1, 0);
                if (n > 0 && pid[n - 1] == '\n') {
                    break;
                }
                struct timespec ts = {0, 5000000L};
                nanosleep(&ts, NULL);
            }
            close(fd);
            lua_pushnil(L);
            lua_pushliteral(L, "locked");
            if (n > 0) {
                pid[n] = '\0';
                lua_pushinteger(L, (lua_Integer)strtol(pid, NULL, 10));
            } else {
                lua_pushnil(L);
            }
            return 3;
        }
        close(fd);
        return push_errno(L, "cannot lock", name, err);
    }
    fs_lock *lk = (fs_lock *)lua_newuserdata(L, sizeof *lk);
    lk->fd = fd;
    luaL_setmetatable(L, ROTOR_FS_LOCK_MT);
    /* the note the last holder left (after the pid line), up to its newline */
    char note[LOCK_NOTE_MAX + 1];
    ssize_t got = 0;
    struct stat st;
    int have = fstat(fd, &st) == 0;
    if (have && st.st_size > LOCK_PID_LEN) {
        got = pread(fd, note, LOCK_NOTE_MAX, LOCK_PID_LEN);
    }
    char *end = got > 0 ? memchr(note, '\n', (size_t)got) : NULL;
    /* the pid in a field of fixed width: rewritten in place by the next holder, with no truncation
     * (which frees the file's block for the write to allocate again, on every lock); the note
     * stays until a holder replaces it */
    int plen = snprintf(pid, sizeof pid, "%-15ld\n", (long)getpid());
    if (have && (st.st_size >= plen || ftruncate(fd, 0) == 0)) {
        (void)!pwrite(fd, pid, (size_t)plen, 0);
    }
    if (end != NULL && end > note) {
        lua_pushlstring(L, note, (size_t)(end - note));
        return 2;
    }
    return 1;
}

/* lk:set_note(text) -> true | nil, message: the note the next holder gets (one line, no newline) */
static int l_lock_set_note(lua_State *L) {
    fs_lock *lk = (fs_lock *)luaL_checkudata(L, 1, ROTOR_FS_LOCK_MT);
    size_t len;
    const char *text = luaL_checklstring(L, 2, &len);
    char buf[LOCK_NOTE_MAX + 1];
    if (len == 0 || len >= LOCK_NOTE_MAX || memchr(text, '\n', len) != NULL) {
        return luaL_argerror(L, 2, "a note of one line, 1-511 bytes, expected");
    }
    if (lk->fd < 0) {
        return luaL_error(L, "rotor.fs_lock: the lock was released");
    }
    memcpy(buf, text, len);
    buf[len] = '\n';
    if (pwrite(lk->fd, buf, len + 1, LOCK_PID_LEN) != (ssize_t)(len + 1) ||
        ftruncate(lk->fd, (off_t)(LOCK_PID_LEN + len + 1)) != 0) {
        int err = errno;
        lua_pushnil(L);
        lua_pushfstring(L, "cannot write the lock's note: %s", strerror(err));
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

static void lock_release(fs_lock *lk) {
    if (lk->fd >= 0) {
        flock(lk->fd, LOCK_UN);
        close(lk->fd);
        lk->fd = -1;
    }
}

static int l_lock_unlock(lua_State *L) {
    lock_release((fs_lock *)luaL_checkudata(L, 1, ROTOR_FS_LOCK_MT));
    lua_pushboolean(L, 1);
    return 1;
}

static int l_lock_held(lua_State *L) {
    fs_lock *lk = (fs_lock *)luaL_checkudata(L, 1, ROTOR_FS_LOCK_MT);
    lua_pushboolean(L, lk->fd >= 0);
    return 1;
}

static int l_lock_tostring(lua_State *L) {
    fs_lock *lk = (fs_lock *)luaL_checkudata(L, 1, ROTOR_FS_LOCK_MT);
    lua_pushstring(L, lk->fd >= 0 ? "rotor.fs_lock(held)" : "rotor.fs_lock(released)");
    return 1;
}

/* ---- the directory object ---- */

static fs_dir *check_dir_ud(lua_State *L) {
    fs_dir *d = (fs_dir *)luaL_checkudata(L, 1, ROTOR_FS_DIR_MT);
    if (d->fd < 0) {
        luaL_error(L, "rotor.fs_dir: the directory was closed");
    }
    return d;
}

static int l_fs_dir(lua_State *L) {
    const char *path = path_arg(L, 1);
    int create = lua_toboolean(L, 2);
    const char *trusted[16];
    int ntrusted = 0;
    char msg[FS_WHY];
    if (lua_istable(L, 3)) {
        for (lua_Integer i = 1; ntrusted < 16; i++) {
            lua_rawgeti(L, 3, i);
            if (lua_type(L, -1) != LUA_TSTRING) {
                lua_pop(L, 1);
                break;
            }
            trusted[ntrusted++] = lua_tostring(L, -1); /* kept alive by the table */
            lua_pop(L, 1);
        }
    }
    fs_dir *d = (fs_dir *)lua_newuserdata(L, sizeof *d);
    d->fd = -1;
    luaL_setmetatable(L, ROTOR_FS_DIR_MT);
    d->fd = trusted_dir(path, create, NULL, trusted, ntrusted, d->path, msg);
    if (d->fd < 0) {
        return push_fail(L, msg, errno);
    }
    return 1;
}

/* For csrc/durable.c: the descriptor of the rotor.fs_dir at idx, and its path. */
int rotor_fs_dir_fd(lua_State *L, int idx, const char **path) {
    fs_dir *d = (fs_dir *)luaL_checkudata(L, idx, ROTOR_FS_DIR_MT);
    if (d->fd < 0) {
        luaL_argerror(L, idx, "the directory was closed");
    }
    *path = d->path;
    return d->fd;
}

static int l_dir_read(lua_State *L) {
    fs_dir *d = check_dir_ud(L);
    char msg[FS_WHY];
    int rc = dir_read(L, d->fd, d->path, name_arg(L, 2), msg);
    if (rc < 0) {
        return push_fail(L, msg, errno);
    }
    if (rc == 0) {
        lua_pushboolean(L, 0);
    }
    return 1;
}

static int l_dir_tail(lua_State *L) {
    fs_dir *d = check_dir_ud(L);
    char msg[FS_WHY];
    const char *name = name_arg(L, 2);
    if (dir_tail(L, d->fd, d->path, name, luaL_checkinteger(L, 3), msg) < 0) {
        return push_fail(L, msg, errno);
    }
    return 1;
}

/* dir:write and dir:append: data a string, a secret, or a rope of pieces (rotor_dupbytes) */
static int dir_put(lua_State *L, int append) {
    fs_dir *d = check_dir_ud(L);
    const char *name = name_arg(L, 2);
    mode_t mode = mode_arg(L, 4, 0600);
    size_t len;
    char *copy = lua_istable(L, 3) ? rotor_dupbytes(L, 3, &len) : NULL;
    const char *data = copy != NULL ? copy : rotor_checkbytes(L, 3, &len);
    char msg[FS_WHY];
    int rc = append ? dir_append(d->fd, d->path, name, data, len, mode, msg)
                    : dir_write_atomic(d->fd, d->path, name, data, len, mode, 0, 0, 0, msg);
    int err = errno;
    rotor_free_secure(copy, len);
    if (rc != 0) {
        return push_fail(L, msg, err);
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int l_dir_write(lua_State *L) {
    return dir_put(L, 0);
}

static int l_dir_append(lua_State *L) {
    return dir_put(L, 1);
}

static int l_dir_lock(lua_State *L) {
    fs_dir *d = check_dir_ud(L);
    return dir_lock(L, d->fd, d->path, name_arg(L, 2));
}

static int l_dir_list(lua_State *L) {
    fs_dir *d = check_dir_ud(L);
    return dir_list(L, d->fd, d->path);
}

static int l_dir_remove(lua_State *L) {
    fs_dir *d = check_dir_ud(L);
    const char *name = name_arg(L, 2);
    if (unlinkat(d->fd, name, 0) != 0 && errno != ENOENT) {
        return push_errno(L, "cannot remove", name, errno);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* dir:chmod(mode): the directory itself, through its descriptor */
static int l_dir_chmod(lua_State *L) {
    fs_dir *d = check_dir_ud(L);
    if (fchmod(d->fd, mode_arg(L, 2, 0700)) != 0) {
        return push_errno(L, "cannot chmod", d->path, errno);
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int l_dir_path(lua_State *L) {
    lua_pushstring(L, check_dir_ud(L)->path);
    return 1;
}

static int l_dir_close(lua_State *L) {
    fs_dir *d = (fs_dir *)luaL_checkudata(L, 1, ROTOR_FS_DIR_MT);
    if (d->fd >= 0) {
        close(d->fd);
        d->fd = -1;
    }
    return 0;
}

/* ---- path-based functions (no trust rule: files the caller names) ---- */

/* Open the directory holding path; base receives the last component. */
static int open_parent(const char *path, char *dir, const char **base) {
    const char *slash = strrchr(path, '/');
    if (slash == NULL) {
        memcpy(dir, ".", 2);
        *base = path;
    } else {
        size_t n = slash == path ? 1 : (size_t)(slash - path);
        memcpy(dir, path, n);
        dir[n] = '\0';
        *base = slash + 1;
    }
    if (**base == '\0') {
        errno = EISDIR;
        return -1;
    }
    return open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
}

static int l_fs_write_atomic(lua_State *L) {
    const char *path = path_arg(L, 1);
    size_t len;
    const char *data = rotor_checkbytes(L, 2, &len);
    mode_t mode = mode_arg(L, 3, 0600);
    char dir[FS_MAX_PATH], msg[FS_WHY];
    const char *base;
    int dfd = open_parent(path, dir, &base);
    if (dfd < 0) {
        return push_errno(L, "cannot open the directory of", path, errno);
    }
    int rc = dir_write_atomic(dfd, dir, base, data, len, mode, 0, 0, 0, msg);
    int err = errno;
    close(dfd);
    if (rc != 0) {
        return push_fail(L, msg, err);
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int l_fs_append(lua_State *L) {
    const char *path = path_arg(L, 1);
    size_t len;
    const char *data = rotor_checkbytes(L, 2, &len);
    mode_t mode = mode_arg(L, 3, 0600);
    char dir[FS_MAX_PATH], msg[FS_WHY];
    const char *base;
    int dfd = open_parent(path, dir, &base);
    if (dfd < 0) {
        return push_errno(L, "cannot open the directory of", path, errno);
    }
    int rc = dir_append(dfd, dir, base, data, len, mode, msg);
    int err = errno;
    close(dfd);
    if (rc != 0) {
        return push_fail(L, msg, err);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* The last n bytes of the file at path (the directory's links followed, the file's not): as
 * dir:tail */
static int l_fs_tail(lua_State *L) {
    const char *path = path_arg(L, 1);
    lua_Integer n = luaL_checkinteger(L, 2);
    char dir[FS_MAX_PATH], msg[FS_WHY];
    const char *base;
    int dfd = open_parent(path, dir, &base);
    if (dfd < 0) {
        return push_errno(L, "cannot open the directory of", path, errno);
    }
    int rc = dir_tail(L, dfd, dir, base, n, msg);
    int err = errno;
    close(dfd);
    if (rc < 0) {
        return push_fail(L, msg, err);
    }
    return 1;
}

/* fs_read follows links: it reads files the user names (dotenv files, key files, an audit trail
 * read back), which must be regular files (a FIFO or a device is refused, never waited on). With
 * strict, the file itself is opened as a store's files are (rotor_fs_open_in: no link followed, a
 * regular file only, never blocking on a FIFO); the links on the way to its directory are
 * followed. For a reader that cannot apply the store's trust rule (an nginx worker reading a slot
 * file of a store another user writes). */
static int l_fs_read(lua_State *L) {
    const char *path = path_arg(L, 1);
    char msg[FS_WHY];
    if (lua_toboolean(L, 2)) {
        char dir[FS_MAX_PATH];
        const char *base;
        int dfd = open_parent(path, dir, &base);
        if (dfd < 0) {
            return push_errno(L, "cannot open the directory of", path, errno);
        }
        int rc = dir_read(L, dfd, dir, base, msg);
        int err = errno;
        close(dfd);
        if (rc == 0) {
            return push_errno(L, "cannot open", path, ENOENT);
        }
        return rc < 0 ? push_fail(L, msg, err) : 1;
    }
    /* links are followed, but the file must be a regular one, opened without blocking: a FIFO
     * planted at the path (a dotenv file in an application's directory) would else hold the
     * open, and the rotation, for ever */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        return push_errno(L, "cannot open", path, errno);
    }
    if (regular_or_close(fd, O_RDONLY | O_CLOEXEC) < 0) {
        lua_pushnil(L);
        lua_pushfstring(
            L, "%s is not a regular file (a FIFO, a device or a directory): name a regular file",
            path);
        lua_pushinteger(L, EINVAL);
        return 3;
    }
    if (read_fd(L, fd, path, "", msg) < 0) {
        return push_fail(L, msg, errno);
    }
    return 1;
}

/* Open the file path under the trust rule, for reading what rotor runs (a config file): the
 * directory holding it, and the directory holding each symbolic link on the way to it, pass the
 * rule of a store directory (trusted_dir, which follows the links); each such link and the file
 * are owned by root or the effective user, and the file is a regular one that group and others
 * cannot write. Returns the descriptor, or -1 with errno set and the reason in msg. */
#define NOT_REGULAR                                                                                \
    "%s is not a regular file (a pipe or FIFO, a device or a directory): name a regular file"
static int open_trusted_file(const char *path, char *msg) {
    char canon[FS_MAX_PATH], base[NAME_MAX + 1];
    uid_t me = geteuid();
    struct stat st;
    /* a pipe (/dev/stdin, --config <(...)) or a FIFO, named for what it is: its /proc link leads
     * to no path the walk below could follow */
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
        return why(msg, EINVAL, NOT_REGULAR, path);
    }
    int dfd = trusted_dir(path, 0, base, NULL, 0, canon, msg);
    if (dfd < 0) {
        return -1;
    }
    if (base[0] == '\0') {
        close(dfd);
        return why(msg, EISDIR, "%s is a directory: name a file", path);
    }
    int fd = rotor_fs_open_in(dfd, canon, base, O_RDONLY, 0, NULL, msg);
    int err = errno;
    close(dfd);
    if (fd < 0) {
        errno = err;
        return -1;
    }
    if (fstat(fd, &st) != 0) {
        err = errno;
        close(fd);
        return why(msg, err, "cannot stat %s/%s: %s", canon, base, strerror(err));
    }
    if (!ours(&st)) {
        close(fd);
        return why(msg, EPERM,
                   "%s/%s is owned by uid %ld, neither root nor the user rotor runs as "
                   "(uid %ld): that user could change what rotor runs; chown it to root or "
                   "uid %ld",
                   canon, base, (long)st.st_uid, (long)me, (long)me);
    }
    if (others_may_write(fd, &st)) {
        close(fd);
        return why(msg, EPERM,
                   "%s/%s is writable by group or others (mode %04o): another user could "
                   "change what rotor runs; chmod go-w %s/%s",
                   canon, base, (unsigned)(st.st_mode & 07777), canon, base);
    }
    return fd;
}

/* core.fs_read_trusted(path) -> string | nil, message, errno: a file rotor runs (a config file,
 * a script the host runs), read under the rule of open_trusted_file */
static int l_fs_read_trusted(lua_State *L) {
    const char *path = path_arg(L, 1);
    char msg[FS_WHY];
    int fd = open_trusted_file(path, msg);
    if (fd < 0 || read_fd(L, fd, path, "", msg) < 0) {
        return push_fail(L, msg, errno);
    }
    return 1;
}

/* core.fs_read_private(path) -> rotor.secret | nil, message, errno: a file that holds a secret
 * rotor reads (a sealing key), under the rule of open_trusted_file (nobody else could swap in a
 * key of their own), and neither group nor others may do anything with it, as ssh asks of a
 * private key: a key others can read opens every secret it sealed. Its bytes go from the file to
 * locked memory and into the secret, never through a Lua string. */
#define PRIVATE_MAX 4096
static int l_fs_read_private(lua_State *L) {
    const char *path = path_arg(L, 1);
    char msg[FS_WHY];
    struct stat st;
    int fd = open_trusted_file(path, msg);
    if (fd < 0) {
        return push_fail(L, msg, errno);
    }
    if (fstat(fd, &st) != 0) {
        int err = errno;
        close(fd);
        why(msg, err, "cannot stat %s: %s", path, strerror(err));
        return push_fail(L, msg, err);
    }
    if ((st.st_mode & 077) != 0) {
        close(fd);
        why(msg, EPERM,
            "%s is open to group or others (mode %04o): it holds a key that opens every secret "
            "it sealed; chmod 600 %s (in Kubernetes: defaultMode 0400 on the Secret's volume)",
            path, (unsigned)(st.st_mode & 07777), path);
        return push_fail(L, msg, EPERM);
    }
    if (st.st_size > PRIVATE_MAX) {
        close(fd);
        why(msg, EFBIG, "%s is larger than %d bytes: it is not a key; name the key file", path,
            PRIVATE_MAX);
        return push_fail(L, msg, EFBIG);
    }
    char *buf = rotor_locked_alloc(PRIVATE_MAX);
    if (buf == NULL) {
        close(fd);
        return push_fail(L, "cannot read a key: out of locked memory", ENOMEM);
    }
    size_t got = 0;
    int err = read_upto(fd, buf, PRIVATE_MAX, &got) != 0 ? errno : 0;
    close(fd);
    if (err != 0) {
        rotor_locked_free(buf, PRIVATE_MAX);
        why(msg, err, "cannot read %s: %s", path, strerror(err));
        return push_fail(L, msg, err);
    }
    rotor_secret_push(L, buf, got);
    rotor_locked_free(buf, PRIVATE_MAX);
    return 1;
}

static int l_fs_mkdir(lua_State *L) {
    const char *path = path_arg(L, 1);
    mode_t mode = mode_arg(L, 2, 0700);
    char buf[FS_MAX_PATH];
    size_t i, n = strlen(path);
    memcpy(buf, path, n + 1);
    for (i = 1; i <= n; i++) {
        if (buf[i] == '/' || buf[i] == '\0') {
            char c = buf[i];
            struct stat st;
            buf[i] = '\0';
            if (mkdir(buf, mode) != 0) {
                int err = errno;
                if (err != EEXIST || stat(buf, &st) != 0 || !S_ISDIR(st.st_mode)) {
                    return push_errno(L, "cannot create directory", buf, err);
                }
            }
            buf[i] = c;
        }
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int l_fs_exists(lua_State *L) {
    const char *path = path_arg(L, 1);
    struct stat st;
    if (stat(path, &st) != 0) {
        lua_pushboolean(L, 0);
        return 1;
    }
    lua_pushboolean(L, 1);
    lua_pushstring(L, S_ISDIR(st.st_mode) ? "directory" : S_ISREG(st.st_mode) ? "file" : "other");
    lua_pushinteger(L, (lua_Integer)(st.st_mode & 07777));
    return 3;
}

/* A program that starts rotor elsewhere (a subprocess given another directory) leaves its own
 * PWD in the environment: trusted only when it is the directory rotor runs in. */
static int l_fs_cwd(lua_State *L) {
    const char *pwd = getenv("PWD");
    struct stat a;
    struct stat b;
    if (pwd != NULL && pwd[0] == '/' && stat(pwd, &a) == 0 && stat(".", &b) == 0 &&
        a.st_dev == b.st_dev && a.st_ino == b.st_ino) {
        lua_pushstring(L, pwd);
        return 1;
    }
    char *dir = getcwd(NULL, 0);
    if (dir == NULL) {
        return push_errno(L, "cannot tell the working directory", ".", errno);
    }
    lua_pushstring(L, dir);
    free(dir);
    return 1;
}

static int l_fs_list(lua_State *L) {
    const char *path = path_arg(L, 1);
    int dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        return push_errno(L, "cannot list", path, errno);
    }
    int n = dir_list(L, dfd, path);
    close(dfd);
    return n;
}

static int l_fs_remove(lua_State *L) {
    const char *path = path_arg(L, 1);
    if (unlink(path) != 0 && errno != ENOENT) {
        return push_errno(L, "cannot remove", path, errno);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* core.fs_write_through(path, data[, mode_if_new]): path may be a symbolic link (followed only
 * when it is owned by root, the effective user or the owner of its target); the real file is
 * replaced atomically with its owner, group and mode kept (less any access for others: the file
 * holds a secret). A new file gets mode_if_new. */
static int l_fs_write_through(lua_State *L) {
    const char *path = path_arg(L, 1);
    size_t len;
    const char *data = rotor_checkbytes(L, 2, &len);
    mode_t mode = mode_arg(L, 3, 0600);
    char real[PATH_MAX], dir[FS_MAX_PATH], msg[FS_WHY];
    const char *base, *target = path;
    struct stat lst, st;
    int keep = 0, rc, err;
    uid_t uid = 0;
    gid_t gid = 0;
    if (lstat(path, &lst) == 0 && S_ISLNK(lst.st_mode)) {
        if (realpath(path, real) == NULL) {
            return push_errno(L, "cannot follow the link", path, errno);
        }
        if (stat(real, &st) != 0 || !S_ISREG(st.st_mode)) {
            lua_pushnil(L);
            lua_pushfstring(L, "%s is a link to %s, which is not a regular file", path, real);
            return 2;
        }
        if (lst.st_uid != 0 && lst.st_uid != geteuid() && lst.st_uid != st.st_uid) {
            lua_pushnil(L);
            lua_pushfstring(L,
                            "%s is a link owned by uid %d, neither root, the user rotor runs "
                            "as nor the owner of its target: rotor does not write through it",
                            path, (int)lst.st_uid);
            return 2;
        }
        target = real;
    }
    int dfd = open_parent(target, dir, &base);
    if (dfd < 0) {
        return push_errno(L, "cannot open the directory of", target, errno);
    }
    if (fstatat(dfd, base, &st, AT_SYMLINK_NOFOLLOW) == 0) {
        if (!S_ISREG(st.st_mode)) {
            close(dfd);
            lua_pushnil(L);
            lua_pushfstring(L, "%s is not a regular file", target);
            return 2;
        }
        mode = st.st_mode & 0770; /* a file holding a secret: never readable by others */
        uid = st.st_uid;
        gid = st.st_gid;
        keep = uid != geteuid() || gid != getegid();
    } else if (errno != ENOENT) {
        err = errno;
        close(dfd);
        return push_errno(L, "cannot stat", target, err);
    }
    rc = dir_write_atomic(dfd, dir, base, data, len, mode, keep, uid, gid, msg);
    err = errno;
    close(dfd);
    if (rc != 0) {
        return push_fail(L, msg, err);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* ---- processes ---- */

static void close_from(int lowfd) {
#ifdef SYS_close_range
    if (syscall(SYS_close_range, (unsigned)lowfd, ~0U, 0) == 0) {
        return;
    }
#endif
    long max = sysconf(_SC_OPEN_MAX);
    for (long fd = lowfd; fd < (max > 0 ? max : 65536); fd++) {
        close((int)fd);
    }
}

/* A child of core.spawn_start (rotor.child): its pid, whether it leads a process group of its
 * own (with a timeout), its deadline, what was written to its stdin, and whether it was reaped. */
#define ROTOR_CHILD_MT "rotor.child"
typedef struct {
    pid_t pid;
    int group;
    int reaped;
    int wrote;
    double timeout, deadline; /* CLOCK_MONOTONIC seconds; 0: none */
    char name[64];            /* argv[0], for messages */
} child_ud;

/* Send sig to the child, or to its process group when it leads one. */
static void signal_child(const child_ud *c, int sig) {
    kill(c->group ? -c->pid : c->pid, sig);
}

/* SIGKILL the child (its group) and reap it, its status in *status (may be NULL). */
static void kill_child(child_ud *c, int *status) {
    signal_child(c, SIGKILL);
    while (waitpid(c->pid, status, 0) < 0 && errno == EINTR) {
    }
    c->reaped = 1;
}

/* Stop the child (and its process group when it leads one): SIGTERM, then SIGKILL when it has
 * not exited 2 s later; reaped, its status in *status. */
static void stop_child(child_ud *c, int *status) {
    signal_child(c, SIGTERM);
    double until = rotor_mono_now() + 2;
    for (;;) {
        pid_t r = waitpid(c->pid, status, WNOHANG);
        if (r == c->pid || (r < 0 && errno != EINTR)) {
            c->reaped = 1;
            return;
        }
        if (rotor_mono_now() >= until) {
            kill_child(c, status);
            return;
        }
        struct timespec tick = {0, 10000000L}; /* 10 ms */
        nanosleep(&tick, NULL);
    }
}

/* Where the child is, without waiting: 0 while it runs; else the results pushed (as core.spawn
 * returns them). A child past its deadline is stopped: nil, "timed out ...", "timeout". When the
 * rotor host was interrupted (SIGINT, SIGTERM), the child is stopped at once: Ctrl-C reaches the
 * terminal's foreground process group, not the child's own, and the run must stop now rather than
 * when the command ends or times out; nil, "interrupted ...", "interrupted", unless it exited 0
 * meanwhile (it did its work: that result stands). The third value is the reason callers act on;
 * the message is for people. */
static int child_check(lua_State *L, child_ud *c) {
    int status = 0;
    pid_t r = waitpid(c->pid, &status, WNOHANG);
    if (r < 0 && errno != EINTR) {
        c->reaped = 1; /* gone: nothing to wait for */
        return push_errno(L, "cannot wait for", c->name, errno);
    }
    if (r == c->pid) {
        c->reaped = 1;
    } else if (c->deadline > 0 && rotor_mono_now() >= c->deadline) {
        stop_child(c, &status);
        lua_pushnil(L);
        lua_pushfstring(L, "timed out after %f s: stopped (SIGTERM, then SIGKILL)", c->timeout);
        lua_pushliteral(L, "timeout");
        return 3;
    } else if (rotor_is_interrupted()) {
        stop_child(c, &status);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            lua_pushnil(L);
            lua_pushstring(L, "interrupted: rotor got SIGINT or SIGTERM; the command was stopped "
                              "(SIGTERM to its process group, then SIGKILL)");
            lua_pushliteral(L, "interrupted");
            return 3;
        }
    } else {
        return 0;
    }
    lua_pushinteger(L, WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
    lua_pushboolean(L, c->wrote);
    return 2;
}

/* core.spawn_start{ argv = {...}, env = { "K=V", ... }, input = string | secret, timeout = s } ->
 * child | nil, message. The child gets exactly env, stdin from a pipe carrying input, stdout and
 * stderr of this process, no other descriptor, default signals. With timeout, it leads a process
 * group of its own, and child:poll() stops the group (SIGTERM, then SIGKILL 2 s later) once it
 * has run for timeout seconds: a deploy command that never ends cannot hold a rotation and its
 * lock for ever. input is written before this returns, and that write never waits: the pipe is
 * made large enough to hold it all (64 kB by default; up to the system's pipe-max-size, 1 MiB by
 * default; a larger input is refused before anything starts) and written without blocking, so a
 * command that reads nothing cannot hold rotor past its timeout. */
static int l_spawn_start(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    lua_getfield(L, 1, "argv"); /* 2 */
    luaL_argcheck(L, lua_istable(L, 2), 1, "argv: an array of strings expected");
    int nargv = (int)lua_rawlen(L, 2);
    luaL_argcheck(L, nargv >= 1 && nargv < 256, 1, "argv: 1 to 255 strings expected");
    lua_getfield(L, 1, "env"); /* 3 */
    int nenv = lua_istable(L, 3) ? (int)lua_rawlen(L, 3) : 0;
    luaL_argcheck(L, nenv < 1024, 1, "env: at most 1023 entries");
    lua_getfield(L, 1, "input"); /* 4 */
    size_t inlen = 0;
    const char *input = lua_isnil(L, 4) ? "" : rotor_checkbytes(L, 4, &inlen);
    lua_getfield(L, 1, "timeout"); /* 5 */
    double timeout = lua_isnil(L, 5) ? 0 : (double)luaL_checknumber(L, 5);
    luaL_argcheck(L, timeout == 0 || (timeout > 0 && timeout <= 86400), 1,
                  "timeout: seconds from 0 to 86400 expected");
    lua_pop(L, 1);
    const char **argv = lua_newuserdata(L, sizeof(char *) * (size_t)(nargv + nenv + 2)); /* 5 */
    const char **envp = argv + nargv + 1;
    for (int i = 0; i < nargv; i++) {
        lua_rawgeti(L, 2, i + 1);
        argv[i] = lua_tostring(L, -1);
        luaL_argcheck(L, argv[i] != NULL, 1, "argv: strings expected");
        lua_pop(L, 1); /* kept alive by the table */
    }
    argv[nargv] = NULL;
    for (int i = 0; i < nenv; i++) {
        lua_rawgeti(L, 3, i + 1);
        envp[i] = lua_tostring(L, -1);
        luaL_argcheck(L, envp[i] != NULL && strchr(envp[i], '=') != NULL, 1,
                      "env: \"NAME=value\" strings expected");
        lua_pop(L, 1);
    }
    envp[nenv] = NULL;
    child_ud *c = lua_newuserdata(L, sizeof(*c)); /* 6 */
    memset(c, 0, sizeof(*c));
    c->reaped = 1; /* nothing to stop until the fork below */
    snprintf(c->name, sizeof c->name, "%s", argv[0]);
    luaL_setmetatable(L, ROTOR_CHILD_MT);

    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) != 0) {
        return push_errno(L, "cannot start", argv[0], errno);
    }
    /* room for the whole input, then a write that never blocks (see above) */
    int room = fcntl(pfd[1], F_GETPIPE_SZ);
    if ((room < 0 || (size_t)room < inlen) &&
        (inlen > INT_MAX || fcntl(pfd[1], F_SETPIPE_SZ, (int)inlen) < (int)inlen)) {
        int err = errno;
        close(pfd[0]);
        close(pfd[1]);
        lua_pushnil(L);
        lua_pushfstring(L,
                        "cannot start %s: its input (%d bytes) is more than a pipe can hold here "
                        "(%s)",
                        argv[0], (int)(inlen > INT_MAX ? INT_MAX : inlen), strerror(err));
        return 2;
    }
    if (fcntl(pfd[1], F_SETFL, O_NONBLOCK) != 0) {
        int err = errno;
        close(pfd[0]);
        close(pfd[1]);
        return push_errno(L, "cannot start", argv[0], err);
    }
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    pid_t pid = fork();
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        signal(SIGPIPE, SIG_DFL);
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
        sigprocmask(SIG_SETMASK, &none, NULL);
        if (timeout > 0) {
            setpgid(0, 0);
        }
        if (dup2(pfd[0], 0) < 0) {
            _exit(127);
        }
        close_from(3);
        if (argv[0] != NULL) {
            execve(argv[0], (char *const *)argv, (char *const *)envp);
        }
        _exit(127);
    }
    int err = errno;
    close(pfd[0]);
    if (pid < 0) {
        close(pfd[1]);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        return push_errno(L, "cannot start", argv[0], err);
    }
    if (timeout > 0) {
        setpgid(pid, pid); /* as the child does: whichever runs first */
    }
    c->pid = pid;
    c->group = timeout > 0;
    c->reaped = 0;
    c->timeout = timeout;
    c->deadline = timeout > 0 ? rotor_mono_now() + timeout : 0;
    c->wrote = rotor_write_all(pfd[1], input, inlen) == 0;
    close(pfd[1]);
    /* a child that exits before reading its input raises SIGPIPE here: take it back */
    struct timespec zero = {0, 0};
    while (sigtimedwait(&block, NULL, &zero) > 0) {
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return 1;
}

/* child:poll() -> false while it runs | exit status (128 + signal), input written | nil,
 * "timed out ...", "timeout" | nil, "interrupted ...", "interrupted" | nil, message (see
 * child_check); the same again once it ended */
static int l_child_poll(lua_State *L) {
    child_ud *c = luaL_checkudata(L, 1, ROTOR_CHILD_MT);
    if (c->reaped) {
        return luaL_error(L, "child: already reaped (poll returned its end)");
    }
    int n = child_check(L, c);
    if (n == 0) {
        lua_pushboolean(L, 0);
        return 1;
    }
    return n;
}

/* __gc: a child nobody waited for (its task raised) is stopped and reaped: no zombie, no
 * command left running after rotor. */
static int l_child_gc(lua_State *L) {
    child_ud *c = luaL_checkudata(L, 1, ROTOR_CHILD_MT);
    if (!c->reaped) {
        kill_child(c, NULL);
    }
    return 0;
}

/* core.spawn{...} (the fields of spawn_start) -> exit status (128 + signal when killed), input
 * written | nil, message: spawn_start, then waiting for the child (polling every 10 ms) as
 * child:poll() sees it end. */
static int l_spawn(lua_State *L) {
    int n = l_spawn_start(L);
    if (n != 1) {
        return n;
    }
    child_ud *c = lua_touserdata(L, -1);
    for (;;) {
        int top = lua_gettop(L);
        n = child_check(L, c);
        if (n > 0) {
            return n;
        }
        lua_settop(L, top);
        struct timespec tick = {0, 10000000L}; /* 10 ms */
        nanosleep(&tick, NULL);
    }
}

static int l_getpid(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)getpid());
    return 1;
}

static int l_kill_self(lua_State *L) {
    (void)L;
    raise(SIGKILL);
    return 0; /* not reached */
}

void rotor_fs_open(lua_State *L) {
    static const luaL_Reg funcs[] = {
        {"fs_dir", l_fs_dir},
        {"fs_write_atomic", l_fs_write_atomic},
        {"fs_write_through", l_fs_write_through},
        {"fs_append", l_fs_append},
        {"fs_read", l_fs_read},
        {"fs_read_trusted", l_fs_read_trusted},
        {"fs_read_private", l_fs_read_private},
        {"fs_tail", l_fs_tail},
        {"fs_mkdir", l_fs_mkdir},
        {"fs_exists", l_fs_exists},
        {"fs_list", l_fs_list},
        {"fs_cwd", l_fs_cwd},
        {"fs_remove", l_fs_remove},
        {"spawn", l_spawn},
        {"spawn_start", l_spawn_start},
        {"getpid", l_getpid},
        {"kill_self", l_kill_self},
        {NULL, NULL},
    };
    static const luaL_Reg lock_methods[] = {{"unlock", l_lock_unlock},
                                            {"close", l_lock_unlock},
                                            {"held", l_lock_held},
                                            {"set_note", l_lock_set_note},
                                            {NULL, NULL}};
    static const luaL_Reg dir_methods[] = {{"read", l_dir_read},
                                           {"tail", l_dir_tail},
                                           {"write", l_dir_write},
                                           {"append", l_dir_append},
                                           {"lock", l_dir_lock},
                                           {"list", l_dir_list},
                                           {"remove", l_dir_remove},
                                           {"chmod", l_dir_chmod},
                                           {"path", l_dir_path},
                                           {"close", l_dir_close},
                                           {NULL, NULL}};
    if (luaL_newmetatable(L, ROTOR_FS_LOCK_MT)) {
        luaL_newlib(L, lock_methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_lock_unlock);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, l_lock_unlock);
        lua_setfield(L, -2, "__close");
        lua_pushcfunction(L, l_lock_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1);
    if (luaL_newmetatable(L, ROTOR_CHILD_MT)) {
        static const luaL_Reg child_methods[] = {{"poll", l_child_poll}, {NULL, NULL}};
        luaL_newlib(L, child_methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_child_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    if (luaL_newmetatable(L, ROTOR_FS_DIR_MT)) {
        luaL_newlib(L, dir_methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_dir_close);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, l_dir_close);
        lua_setfield(L, -2, "__close");
    }
    lua_pop(L, 1);
    luaL_setfuncs(L, funcs, 0);
}
