/* rotor core: shared declarations for the C files of rotor.core. */
#ifndef ROTOR_H
#define ROTOR_H

#include <stddef.h>
#include <sys/types.h>
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>
#if LUA_VERSION_NUM < 503
#include "compat-5.3.h"
#endif

#define ROTOR_VERSION "0.1.0"
#define ROTOR_SECRET_MT "rotor.secret"
#define ROTOR_MULTI_MT "rotor.multi"
#define ROTOR_FS_LOCK_MT "rotor.fs_lock"
#define ROTOR_FS_DIR_MT "rotor.fs_dir"
/* registry key under which a host puts a light userdata: the address of its
 * volatile sig_atomic_t signal flag (non-zero once SIGINT/SIGTERM arrived) */
#define ROTOR_INTERRUPT_KEY "rotor.interrupt_flag"

/* secret.c */
typedef struct rotor_secret rotor_secret;
void rotor_secret_open(lua_State *L);
/* Push a new secret holding a copy of buf[0..len). */
void rotor_secret_push(lua_State *L, const void *buf, size_t len);
/* Bytes of a string or secret at idx (NULL if neither). The pointer is valid while the value
 * stays on the stack. is_secret is set when the value is a secret. */
const char *rotor_bytes(lua_State *L, int idx, size_t *len, int *is_secret);
/* Same, raising a type error naming the argument. */
const char *rotor_checkbytes(lua_State *L, int idx, size_t *len);
/* A malloc'd copy of the bytes at idx (free it with rotor_free_secure): a string, a secret, or a
 * rope, an array of pieces written one after another, each a string or { s, i, j } (the bytes
 * s:sub(i, j), 1 <= i <= j + 1 <= #s + 1), so that a large text made of parts reaches C without
 * being joined in Lua first. Raises on anything else, naming the piece. */
char *rotor_dupbytes(lua_State *L, int idx, size_t *len);
/* Memory for secret bytes: n zeroed bytes kept out of swap and core dumps (best effort, within
 * RLIMIT_MEMLOCK), from a locked arena apart from the heap (or malloc'd with its pages locked,
 * beyond 4 kB); NULL when out of memory. rotor_locked_free zeroes it and gives it back: n as
 * allocated. */
void *rotor_locked_alloc(size_t n);
void rotor_locked_free(void *p, size_t n);
/* Zero then free. */
void rotor_free_secure(void *p, size_t len);
void rotor_zero(void *p, size_t len);

/* A growable byte buffer whose contents are zeroed whenever it is resized or freed. */
typedef struct {
    char *data;
    size_t len, cap;
    int failed;
} rotor_buf;
void rotor_buf_add(rotor_buf *b, const void *p, size_t n);
void rotor_buf_adds(rotor_buf *b, const char *s);
void rotor_buf_free(rotor_buf *b);
/* application/x-www-form-urlencoded encoding (RFC 6749 App. B) */
void rotor_buf_add_formenc(rotor_buf *b, const char *p, size_t n);

/* http.c */
void rotor_http_open(lua_State *L);
/* 1: https elsewhere; 2: http or https to a loopback host (never proxied); 0: refused;
 * -1: unparsable */
int rotor_write_all(int fd, const char *p, size_t n);
/* token.c: CLOCK_MONOTONIC in seconds */
double rotor_mono_now(void);
int rotor_is_loopback_url(const char *url, char *scheme, size_t scheme_len);
void rotor_global_init(void);

/* fs.c: the store-directory trust rule, files, locks, child processes */
void rotor_fs_open(lua_State *L);
/* The descriptor of a rotor.fs_dir at idx (raises if it is not one, or closed), and its path. */
int rotor_fs_dir_fd(lua_State *L, int idx, const char **path);
/* Open name in the directory dfd (where: its path, for messages) without following a link, never
 * blocking on a FIFO: a regular file, or -1 with msg (ROTOR_FS_WHY bytes) naming the problem and
 * its fix. With O_CREAT it is made when missing (*created set, its mode set to mode). */
#define ROTOR_FS_WHY 768
int rotor_fs_open_in(int dfd, const char *where, const char *name, int flags, mode_t mode,
                     int *created, char *msg);

/* durable.c: group-committed durable writes on a thread (core.durable_start) */
void rotor_durable_open(lua_State *L);

/* token.c */
void rotor_token_open(lua_State *L);
/* token lifetimes (expires_in) are clamped to [ROTOR_TTL_MIN, ROTOR_TTL_MAX] seconds */
#define ROTOR_TTL_MIN 120.0
#define ROTOR_TTL_MAX 86400.0
double rotor_clamp_ttl(double ttl);

/* seal.c */
void rotor_seal_open(lua_State *L);

/* json.c: what rotor.json does around lua-cjson (core.json_prepare, json_normalise,
 * json_mark_arrays, json_finish) */
void rotor_json_open(lua_State *L);

/* signals, shared with main.c */
int rotor_is_interrupted(void);

#endif
