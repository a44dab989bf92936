/* fs.c: durable file writes, reads, directories, per-slot locks and a few process helpers for
 * the stores and the rotation layer. Only API calls common to Lua 5.1 and 5.4 are used.
 *
 *   core.fs_write_atomic(path, data[, mode])  temp file in the same directory (mkstemp: O_EXCL,
 *                                            0600), write, fsync, rename, fsync the directory
 *   core.fs_append(path, data[, mode])        O_APPEND write + fsync (audit trails)
 *   core.fs_read(path)                        -> string | nil, message, errno
 *   core.fs_mkdir(path[, mode])               mkdir -p; components it creates get mode (0700)
 *   core.fs_chmod(path, mode)  core.fs_exists(path) -> bool, "file" | "directory" | "other"
 *   core.fs_list(dir) -> { names } (no "." or "..")   core.fs_remove(path)
 *   core.fs_lock(path) -> lock | nil, "locked", holder-pid | nil, message
 *       lock:unlock() / lock:close() / __gc / __close: one idempotent release
 *   core.getpid()  core.isatty(fd)  core.kill_self() (SIGKILL, for crash tests)
 *
 * Data may be a string or a rotor.secret (anything with a reveal method).
 */
#include "fs.h"

#include <lauxlib.h>

#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define FS_LOCK_MT "rotor.fs_lock"
#define FS_MAX_READ ((off_t)16 * 1024 * 1024) /* largest file fs_read loads */
#define FS_MAX_PATH 4096

typedef struct {
    int fd; /* -1 once released */
} fs_lock;

static void secure_zero(void *p, size_t n) {
    volatile unsigned char *v = p;
    while (n--) {
        *v++ = 0;
    }
}

static int push_errno(lua_State *L, const char *what, const char *path, int err) {
    lua_pushnil(L);
    lua_pushfstring(L, "%s %s: %s", what, path, strerror(err));
    lua_pushinteger(L, err);
    return 3;
}

/* The bytes of argument idx: a string, or a secret revealed through its reveal method. The
 * revealed string is left on the stack (at the top) so it stays alive while in use. */
static const char *data_arg(lua_State *L, int idx, size_t *len) {
    if (lua_type(L, idx) == LUA_TSTRING) {
        return lua_tolstring(L, idx, len);
    }
    if (lua_type(L, idx) == LUA_TUSERDATA) {
        lua_getfield(L, idx, "reveal");
        if (lua_isfunction(L, -1)) {
            lua_pushvalue(L, idx);
            if (lua_pcall(L, 1, 1, 0) == 0 && lua_type(L, -1) == LUA_TSTRING) {
                return lua_tolstring(L, -1, len);
            }
        }
        lua_pop(L, 1);
    }
    luaL_argerror(L, idx, "string or rotor.secret expected");
    return NULL;
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

static int write_all(int fd, const char *p, size_t n) {
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

/* fsync the directory holding path (so a rename or a new file survives a crash). */
static int fsync_parent(const char *path) {
    char dir[FS_MAX_PATH];
    const char *slash = strrchr(path, '/');
    int fd, rc;
    if (slash == NULL) {
        strcpy(dir, ".");
    } else if (slash == path) {
        strcpy(dir, "/");
    } else {
        size_t n = (size_t)(slash - path);
        memcpy(dir, path, n);
        dir[n] = '\0';
    }
    fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    rc = fsync(fd);
    close(fd);
    return rc;
}

static int l_fs_write_atomic(lua_State *L) {
    const char *path = path_arg(L, 1);
    mode_t mode = mode_arg(L, 3, 0600);
    size_t len = 0;
    const char *data = data_arg(L, 2, &len);
    char tmp[FS_MAX_PATH + 16];
    int fd, err;

    snprintf(tmp, sizeof tmp, "%s.tmp.XXXXXX", path);
    fd = mkstemp(tmp); /* O_CREAT|O_EXCL, 0600 */
    if (fd < 0) {
        return push_errno(L, "cannot create a temporary file for", path, errno);
    }
    if (fchmod(fd, mode) != 0 || write_all(fd, data, len) != 0 || fsync(fd) != 0) {
        err = errno;
        close(fd);
        unlink(tmp);
        return push_errno(L, "cannot write", path, err);
    }
    if (close(fd) != 0) {
        err = errno;
        unlink(tmp);
        return push_errno(L, "cannot write", path, err);
    }
    if (rename(tmp, path) != 0) {
        err = errno;
        unlink(tmp);
        return push_errno(L, "cannot rename into", path, err);
    }
    if (fsync_parent(path) != 0) {
        return push_errno(L, "cannot sync the directory of", path, errno);
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int l_fs_append(lua_State *L) {
    const char *path = path_arg(L, 1);
    mode_t mode = mode_arg(L, 3, 0600);
    size_t len = 0;
    const char *data = data_arg(L, 2, &len);
    int existed = access(path, F_OK) == 0;
    int err, fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, mode);
    if (fd < 0) {
        return push_errno(L, "cannot open", path, errno);
    }
    if (write_all(fd, data, len) != 0 || fsync(fd) != 0) {
        err = errno;
        close(fd);
        return push_errno(L, "cannot append to", path, err);
    }
    close(fd);
    if (!existed && fsync_parent(path) != 0) {
        return push_errno(L, "cannot sync the directory of", path, errno);
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int l_fs_read(lua_State *L) {
    const char *path = path_arg(L, 1);
    struct stat st;
    char *buf;
    size_t got = 0;
    int err, fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return push_errno(L, "cannot open", path, errno);
    }
    if (fstat(fd, &st) != 0) {
        err = errno;
        close(fd);
        return push_errno(L, "cannot stat", path, err);
    }
    if (st.st_size > FS_MAX_READ) {
        close(fd);
        return push_errno(L, "cannot read", path, EFBIG);
    }
    buf = malloc((size_t)st.st_size + 1);
    if (buf == NULL) {
        close(fd);
        return push_errno(L, "cannot read", path, ENOMEM);
    }
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0) {
            err = errno;
            secure_zero(buf, got);
            free(buf);
            close(fd);
            return push_errno(L, "cannot read", path, err);
        }
        if (r == 0) {
            break; /* the file shrank: return what is there */
        }
        got += (size_t)r;
    }
    close(fd);
    lua_pushlstring(L, buf, got);
    secure_zero(buf, got);
    free(buf);
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

static int l_fs_chmod(lua_State *L) {
    const char *path = path_arg(L, 1);
    mode_t mode = mode_arg(L, 2, 0600);
    if (chmod(path, mode) != 0) {
        return push_errno(L, "cannot chmod", path, errno);
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

static int l_fs_list(lua_State *L) {
    const char *path = path_arg(L, 1);
    struct dirent *e;
    int i = 0;
    DIR *d = opendir(path);
    if (d == NULL) {
        return push_errno(L, "cannot list", path, errno);
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

static int l_fs_remove(lua_State *L) {
    const char *path = path_arg(L, 1);
    if (unlink(path) != 0 && errno != ENOENT) {
        return push_errno(L, "cannot remove", path, errno);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* Locks: flock on an open lock file; the holder writes its pid into it. */

static void lock_release(fs_lock *lk) {
    if (lk->fd >= 0) {
        flock(lk->fd, LOCK_UN);
        close(lk->fd);
        lk->fd = -1;
    }
}

static int l_fs_lock(lua_State *L) {
    const char *path = path_arg(L, 1);
    fs_lock *lk;
    char pid[32];
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        return push_errno(L, "cannot open lock file", path, errno);
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
        return push_errno(L, "cannot lock", path, err);
    }
    lk = (fs_lock *)lua_newuserdata(L, sizeof *lk);
    lk->fd = fd;
    luaL_getmetatable(L, FS_LOCK_MT);
    lua_setmetatable(L, -2);
    snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) == 0) {
        (void)!pwrite(fd, pid, strlen(pid), 0);
    }
    return 1;
}

static int l_lock_unlock(lua_State *L) {
    fs_lock *lk = (fs_lock *)luaL_checkudata(L, 1, FS_LOCK_MT);
    lock_release(lk);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_lock_held(lua_State *L) {
    fs_lock *lk = (fs_lock *)luaL_checkudata(L, 1, FS_LOCK_MT);
    lua_pushboolean(L, lk->fd >= 0);
    return 1;
}

static int l_lock_tostring(lua_State *L) {
    fs_lock *lk = (fs_lock *)luaL_checkudata(L, 1, FS_LOCK_MT);
    lua_pushstring(L, lk->fd >= 0 ? "rotor.fs_lock(held)" : "rotor.fs_lock(released)");
    return 1;
}

/* Process helpers. */

static int l_getpid(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)getpid());
    return 1;
}

static int l_isatty(lua_State *L) {
    lua_Integer fd = luaL_optinteger(L, 1, 1);
    luaL_argcheck(L, fd >= 0 && fd <= INT_MAX, 1, "bad file descriptor");
    lua_pushboolean(L, isatty((int)fd));
    return 1;
}

static int l_kill_self(lua_State *L) {
    (void)L;
    raise(SIGKILL);
    return 0; /* not reached */
}

static const luaL_Reg fs_funcs[] = {
    {"fs_write_atomic", l_fs_write_atomic},
    {"fs_append", l_fs_append},
    {"fs_read", l_fs_read},
    {"fs_mkdir", l_fs_mkdir},
    {"fs_chmod", l_fs_chmod},
    {"fs_exists", l_fs_exists},
    {"fs_list", l_fs_list},
    {"fs_remove", l_fs_remove},
    {"fs_lock", l_fs_lock},
    {"getpid", l_getpid},
    {"isatty", l_isatty},
    {"kill_self", l_kill_self},
    {NULL, NULL},
};

static const luaL_Reg lock_methods[] = {
    {"unlock", l_lock_unlock},
    {"close", l_lock_unlock},
    {"held", l_lock_held},
    {NULL, NULL},
};

static void set_funcs(lua_State *L, const luaL_Reg *r) {
    for (; r->name != NULL; r++) {
        lua_pushcfunction(L, r->func);
        lua_setfield(L, -2, r->name);
    }
}

int rotor_fs_open(lua_State *L) {
    if (luaL_newmetatable(L, FS_LOCK_MT)) {
        lua_newtable(L);
        set_funcs(L, lock_methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, l_lock_unlock);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, l_lock_unlock);
        lua_setfield(L, -2, "__close");
        lua_pushcfunction(L, l_lock_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1);
    set_funcs(L, fs_funcs);
    return 0;
}
