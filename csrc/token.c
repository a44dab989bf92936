/* OAuth2 client-credentials: building the token request, and the process-wide token cache.
 *
 * core.token_request{...} returns a request table for m:add whose body and Authorization header
 * are rotor.secret values, so the client secret never becomes a Lua string here.
 * The cache keeps tokens in C memory (zeroed when dropped) keyed by a string the caller makes of
 * endpoint, client and scope; a "fetching" mark gives single-flight refresh. A mutex guards it:
 * OpenResty worker threads load this module in several Lua states of one process. */
#include "rotor.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

/* ---- clocks ---- */

static double mono_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int l_now(lua_State *L) {
    lua_pushnumber(L, mono_now());
    return 1;
}

static int l_wallclock(lua_State *L) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    lua_pushnumber(L, (double)ts.tv_sec + (double)ts.tv_nsec / 1e9);
    return 1;
}

static int l_sleep(lua_State *L) {
    double s = luaL_checknumber(L, 1);
    if (s > 0) {
        struct timespec ts;
        ts.tv_sec = (time_t)s;
        ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
        while (nanosleep(&ts, &ts) != 0 && !rotor_is_interrupted()) {
        }
    }
    return 0;
}

/* ---- the token request ---- */

static const char *field_name(lua_State *L, int fields, const char *key, const char *def) {
    if (fields == 0) {
        return def;
    }
    lua_getfield(L, fields, key);
    const char *s = lua_tostring(L, -1);
    lua_pop(L, 1);
    return s != NULL ? s : def;
}

static void form_pair(rotor_buf *b, const char *k, const char *v, size_t vlen) {
    if (b->len > 0) {
        rotor_buf_add(b, "&", 1);
    }
    rotor_buf_add_formenc(b, k, strlen(k));
    rotor_buf_add(b, "=", 1);
    rotor_buf_add_formenc(b, v, vlen);
}

static void multipart_part(rotor_buf *b, const char *boundary, const char *k, const char *v,
                           size_t vlen) {
    rotor_buf_adds(b, "--");
    rotor_buf_adds(b, boundary);
    rotor_buf_adds(b, "\r\nContent-Disposition: form-data; name=\"");
    rotor_buf_adds(b, k);
    rotor_buf_adds(b, "\"\r\n\r\n");
    rotor_buf_add(b, v, vlen);
    rotor_buf_adds(b, "\r\n");
}

static void push_header(lua_State *L, int arr, int *n, const char *name, int value_idx) {
    lua_createtable(L, 2, 0);
    lua_pushstring(L, name);
    lua_rawseti(L, -2, 1);
    lua_pushvalue(L, value_idx);
    lua_rawseti(L, -2, 2);
    lua_rawseti(L, arr, ++*n);
}

/* Encode a JSON object of string pairs through lua-cjson; returns its bytes in out. */
static void json_body(lua_State *L, rotor_buf *out, const char **keys, const char **vals,
                      const size_t *lens, int n) {
    lua_getglobal(L, "require");
    lua_pushliteral(L, "cjson");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "encode");
    lua_createtable(L, 0, n);
    for (int i = 0; i < n; i++) {
        lua_pushlstring(L, vals[i], lens[i]);
        lua_setfield(L, -2, keys[i]);
    }
    lua_call(L, 1, 1);
    size_t len;
    const char *s = lua_tolstring(L, -1, &len);
    rotor_buf_add(out, s, len);
    lua_pop(L, 2);
}

/* core.token_request{url, style, client_id, client_secret, scope, fields, extra} -> req */
static int l_token_request(lua_State *L) {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, "url");
    const char *url = luaL_checkstring(L, -1);
    lua_getfield(L, 1, "style");
    const char *style = luaL_optstring(L, -1, "basic");
    lua_getfield(L, 1, "client_id");
    size_t idlen;
    const char *id = luaL_checklstring(L, -1, &idlen);
    lua_getfield(L, 1, "client_secret");
    size_t seclen;
    const char *sec = rotor_bytes(L, -1, &seclen, NULL);
    if (sec == NULL) {
        return luaL_error(L, "token_request: client_secret must be a string or rotor.secret");
    }
    lua_getfield(L, 1, "scope");
    size_t scopelen = 0;
    const char *scope = lua_isnil(L, -1) ? NULL : luaL_checklstring(L, -1, &scopelen);
    lua_getfield(L, 1, "fields");
    int fields = lua_istable(L, -1) ? lua_gettop(L) : 0;
    lua_getfield(L, 1, "extra");
    int extra = lua_istable(L, -1) ? lua_gettop(L) : 0;

    const char *f_grant = field_name(L, fields, "grant_type", "grant_type");
    const char *f_id = field_name(L, fields, "client_id", "client_id");
    const char *f_secret = field_name(L, fields, "client_secret", "client_secret");
    const char *f_scope = field_name(L, fields, "scope", "scope");
    const char *grant = field_name(L, fields, "grant_value", "client_credentials");

    rotor_buf body = {0};
    rotor_buf auth = {0};
    const char *ctype = "application/x-www-form-urlencoded";
    char boundary[64] = "";
    char ctype_mp[128];

    if (strcmp(style, "basic") == 0 || strcmp(style, "form") == 0) {
        int basic = style[0] == 'b';
        form_pair(&body, f_grant, grant, strlen(grant));
        if (!basic) {
            form_pair(&body, f_id, id, idlen);
            form_pair(&body, f_secret, sec, seclen);
        }
        if (scope != NULL) {
            form_pair(&body, f_scope, scope, scopelen);
        }
        if (basic) {
            /* RFC 6749 §2.3.1 / App. B: form-encode id and secret, join with ':', base64 */
            rotor_buf raw = {0};
            rotor_buf_add_formenc(&raw, id, idlen);
            rotor_buf_add(&raw, ":", 1);
            rotor_buf_add_formenc(&raw, sec, seclen);
            if (!raw.failed) {
                size_t outlen = 4 * ((raw.len + 2) / 3) + 1;
                char *b64 = malloc(outlen);
                if (b64 != NULL) {
                    int n = EVP_EncodeBlock((unsigned char *)b64, (unsigned char *)raw.data,
                                            (int)raw.len);
                    rotor_buf_adds(&auth, "Basic ");
                    rotor_buf_add(&auth, b64, (size_t)n);
                    rotor_free_secure(b64, outlen);
                } else {
                    auth.failed = 1;
                }
            } else {
                auth.failed = 1;
            }
            rotor_buf_free(&raw);
        }
    } else if (strcmp(style, "multipart") == 0) {
        unsigned char rnd[12];
        if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
            return luaL_error(L, "token_request: RAND_bytes failed");
        }
        int off = snprintf(boundary, sizeof(boundary), "----rotor");
        for (size_t i = 0; i < sizeof(rnd); i++) {
            off += snprintf(boundary + off, sizeof(boundary) - (size_t)off, "%02x", rnd[i]);
        }
        multipart_part(&body, boundary, f_grant, grant, strlen(grant));
        multipart_part(&body, boundary, f_id, id, idlen);
        multipart_part(&body, boundary, f_secret, sec, seclen);
        if (scope != NULL) {
            multipart_part(&body, boundary, f_scope, scope, scopelen);
        }
        snprintf(ctype_mp, sizeof(ctype_mp), "multipart/form-data; boundary=%s", boundary);
        ctype = ctype_mp;
    } else if (strcmp(style, "json") == 0) {
        const char *keys[4] = {f_grant, f_id, f_secret, f_scope};
        const char *vals[4] = {grant, id, sec, scope};
        size_t lens[4] = {strlen(grant), idlen, seclen, scopelen};
        json_body(L, &body, keys, vals, lens, scope != NULL ? 4 : 3);
        ctype = "application/json";
    } else {
        return luaL_error(L, "token_request: unknown style '%s' (basic, form, multipart, json)",
                          style);
    }
    if (extra != 0) {
        lua_Integer n = (lua_Integer)lua_rawlen(L, extra);
        for (lua_Integer i = 1; i <= n; i++) {
            lua_rawgeti(L, extra, i);
            lua_rawgeti(L, -1, 1);
            lua_rawgeti(L, -2, 2);
            const char *k = luaL_checkstring(L, -2);
            size_t vlen;
            const char *v = rotor_checkbytes(L, -1, &vlen);
            if (boundary[0]) {
                multipart_part(&body, boundary, k, v, vlen);
            } else if (strcmp(style, "json") != 0) {
                form_pair(&body, k, v, vlen);
            }
            lua_pop(L, 3);
        }
    }
    if (boundary[0]) {
        rotor_buf_adds(&body, "--");
        rotor_buf_adds(&body, boundary);
        rotor_buf_adds(&body, "--\r\n");
    }
    if (body.failed || auth.failed) {
        rotor_buf_free(&body);
        rotor_buf_free(&auth);
        return luaL_error(L, "token_request: out of memory");
    }

    lua_createtable(L, 0, 5);
    int req = lua_gettop(L);
    lua_pushstring(L, url);
    lua_setfield(L, req, "url");
    lua_pushliteral(L, "POST");
    lua_setfield(L, req, "method");
    rotor_secret_push(L, body.data, body.len);
    lua_setfield(L, req, "body");
    lua_pushboolean(L, 1);
    lua_setfield(L, req, "secret_body");
    lua_newtable(L);
    int harr = lua_gettop(L);
    int nh = 0;
    lua_pushstring(L, ctype);
    push_header(L, harr, &nh, "Content-Type", lua_gettop(L));
    lua_pop(L, 1);
    lua_pushliteral(L, "application/json");
    push_header(L, harr, &nh, "Accept", lua_gettop(L));
    lua_pop(L, 1);
    if (auth.len > 0) {
        rotor_secret_push(L, auth.data, auth.len);
        push_header(L, harr, &nh, "Authorization", lua_gettop(L));
        lua_pop(L, 1);
    }
    lua_setfield(L, req, "headers");
    rotor_buf_free(&body);
    rotor_buf_free(&auth);
    return 1;
}

/* ---- the token cache ---- */

#define NBUCKETS 256
#define STALE_FETCH 60.0 /* a fetch mark older than this is ignored (its owner died) */

typedef struct entry {
    char *key;
    size_t keylen;
    char *token;
    size_t toklen;
    double expires; /* monotonic */
    double fetching_since;
    struct entry *next;
} entry;

static entry *buckets[NBUCKETS];
static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;

static unsigned hash(const char *k, size_t n) {
    unsigned h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h = (h ^ (unsigned char)k[i]) * 16777619u;
    }
    return h % NBUCKETS;
}

static entry *find(const char *k, size_t n, int create) {
    unsigned b = hash(k, n);
    for (entry *e = buckets[b]; e != NULL; e = e->next) {
        if (e->keylen == n && memcmp(e->key, k, n) == 0) {
            return e;
        }
    }
    if (!create) {
        return NULL;
    }
    entry *e = calloc(1, sizeof(*e));
    if (e == NULL) {
        return NULL;
    }
    e->key = malloc(n + 1);
    if (e->key == NULL) {
        free(e);
        return NULL;
    }
    memcpy(e->key, k, n);
    e->key[n] = '\0';
    e->keylen = n;
    e->next = buckets[b];
    buckets[b] = e;
    return e;
}

static void drop_token(entry *e) {
    rotor_free_secure(e->token, e->toklen);
    e->token = NULL;
    e->toklen = 0;
    e->expires = 0;
}

/* core.token_get(key, margin) -> token_secret, seconds_left | nil, "fetching" | nil */
static int l_token_get(lua_State *L) {
    size_t n;
    const char *k = luaL_checklstring(L, 1, &n);
    double margin = luaL_optnumber(L, 2, 0);
    double now = mono_now();
    pthread_mutex_lock(&cache_lock);
    entry *e = find(k, n, 0);
    if (e != NULL && e->token != NULL && now + margin < e->expires) {
        rotor_secret_push(L, e->token, e->toklen);
        lua_pushnumber(L, e->expires - now);
        pthread_mutex_unlock(&cache_lock);
        return 2;
    }
    int fetching = e != NULL && e->fetching_since > 0 && now - e->fetching_since < STALE_FETCH;
    pthread_mutex_unlock(&cache_lock);
    lua_pushnil(L);
    if (fetching) {
        lua_pushliteral(L, "fetching");
        return 2;
    }
    return 1;
}

/* core.token_begin(key) -> true when the caller must fetch; false when a fetch is under way */
static int l_token_begin(lua_State *L) {
    size_t n;
    const char *k = luaL_checklstring(L, 1, &n);
    double now = mono_now();
    pthread_mutex_lock(&cache_lock);
    entry *e = find(k, n, 1);
    if (e == NULL) {
        pthread_mutex_unlock(&cache_lock);
        return luaL_error(L, "token cache: out of memory");
    }
    int mine = !(e->fetching_since > 0 && now - e->fetching_since < STALE_FETCH);
    if (mine) {
        e->fetching_since = now;
    }
    pthread_mutex_unlock(&cache_lock);
    lua_pushboolean(L, mine);
    return 1;
}

/* core.token_put(key, token, expires_in_seconds) */
static int l_token_put(lua_State *L) {
    size_t n, tlen;
    const char *k = luaL_checklstring(L, 1, &n);
    const char *t = rotor_checkbytes(L, 2, &tlen);
    double ttl = luaL_checknumber(L, 3);
    char *copy = malloc(tlen + 1);
    if (copy == NULL) {
        return luaL_error(L, "token cache: out of memory");
    }
    memcpy(copy, t, tlen);
    copy[tlen] = '\0';
    pthread_mutex_lock(&cache_lock);
    entry *e = find(k, n, 1);
    if (e == NULL) {
        pthread_mutex_unlock(&cache_lock);
        rotor_free_secure(copy, tlen + 1);
        return luaL_error(L, "token cache: out of memory");
    }
    drop_token(e);
    e->token = copy;
    e->toklen = tlen;
    e->expires = mono_now() + ttl;
    e->fetching_since = 0;
    pthread_mutex_unlock(&cache_lock);
    return 0;
}

static int l_token_fail(lua_State *L) {
    size_t n;
    const char *k = luaL_checklstring(L, 1, &n);
    pthread_mutex_lock(&cache_lock);
    entry *e = find(k, n, 0);
    if (e != NULL) {
        e->fetching_since = 0;
    }
    pthread_mutex_unlock(&cache_lock);
    return 0;
}

/* core.token_invalidate(key[, token]): drop it (only if it still holds that token) */
static int l_token_invalidate(lua_State *L) {
    size_t n, tlen = 0;
    const char *k = luaL_checklstring(L, 1, &n);
    const char *t = lua_isnoneornil(L, 2) ? NULL : rotor_checkbytes(L, 2, &tlen);
    int dropped = 0;
    pthread_mutex_lock(&cache_lock);
    entry *e = find(k, n, 0);
    if (e != NULL && e->token != NULL &&
        (t == NULL || (tlen == e->toklen && memcmp(t, e->token, tlen) == 0))) {
        drop_token(e);
        dropped = 1;
    }
    pthread_mutex_unlock(&cache_lock);
    lua_pushboolean(L, dropped);
    return 1;
}

/* core.token_clear(): drop every cached token */
static int l_token_clear(lua_State *L) {
    (void)L;
    pthread_mutex_lock(&cache_lock);
    for (int b = 0; b < NBUCKETS; b++) {
        entry *e = buckets[b];
        while (e != NULL) {
            entry *nx = e->next;
            drop_token(e);
            free(e->key);
            free(e);
            e = nx;
        }
        buckets[b] = NULL;
    }
    pthread_mutex_unlock(&cache_lock);
    return 0;
}

/* Released at exit so valgrind sees no leak */
__attribute__((destructor)) static void token_cache_fini(void) {
    l_token_clear(NULL);
}

void rotor_token_open(lua_State *L) {
    static const luaL_Reg funcs[] = {{"token_request", l_token_request},
                                     {"token_get", l_token_get},
                                     {"token_begin", l_token_begin},
                                     {"token_put", l_token_put},
                                     {"token_fail", l_token_fail},
                                     {"token_invalidate", l_token_invalidate},
                                     {"token_clear", l_token_clear},
                                     {"now", l_now},
                                     {"wallclock", l_wallclock},
                                     {"sleep", l_sleep},
                                     {NULL, NULL}};
    luaL_setfuncs(L, funcs, 0);
}
