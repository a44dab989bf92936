/* OAuth2 client-credentials: building the token request, and the process-wide token cache.
 *
 * core.token_request{...} returns a request table for m:add whose body and Authorization header
 * are rotor.secret values, so the client secret never becomes a Lua string here, and no Lua
 * module is called from C.
 * The cache keeps tokens in C memory (zeroed when dropped) keyed by a string the caller makes of
 * endpoint, client and scope: a plain key-value store (get, put, invalidate, clear); single-flight
 * is Lua's (lua/rotor/singleflight.lua). A mutex guards it: OpenResty worker threads load this
 * module in several Lua states of one process. */
#include "rotor.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

/* ---- clocks ---- */

/* the monotonic clock in seconds: core.now, token lifetimes, durable-write timing, spawn's
 * deadline */
double rotor_mono_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int l_now(lua_State *L) {
    lua_pushnumber(L, rotor_mono_now());
    return 1;
}

static int l_wallclock(lua_State *L) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    lua_pushnumber(L, (double)ts.tv_sec + (double)ts.tv_nsec / 1e9);
    return 1;
}

/* core.sleep(s[, interruptible]) -> true, or false when interruptible and the rotor host got
 * SIGINT/SIGTERM first. A signal never cuts a sleep short otherwise: rotor's own waits (a store
 * write retried while a freshly minted secret exists only in memory, a Retry-After) are part of
 * the step that runs, and a step is finished before rotor stops (cut short, the write retries ran
 * out at once and the secret was lost). */
static int l_sleep(lua_State *L) {
    double s = luaL_checknumber(L, 1);
    int interruptible = lua_toboolean(L, 2);
    if (interruptible && rotor_is_interrupted()) {
        lua_pushboolean(L, 0); /* the signal came before the sleep: none at all */
        return 1;
    }
    if (s > 0) {
        struct timespec ts;
        ts.tv_sec = (time_t)s;
        ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
        while (nanosleep(&ts, &ts) != 0) {
            if (interruptible && rotor_is_interrupted()) {
                lua_pushboolean(L, 0);
                return 1;
            }
        }
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* ---- the token request ---- */

static const char *field_name(lua_State *L, int fields, const char *key, const char *def) {
    if (fields == 0) {
        return def;
    }
    lua_getfield(L, fields, key);
    const char *s = lua_tostring(L, -1);
    lua_pop(L, 1); /* the fields table keeps it alive */
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

/* The buffers that hold the client secret while a request is built. They live in a userdata
 * whose __gc zeroes them, so that an error raised half-way (out of memory) leaves no secret
 * byte behind once collected; the normal path zeroes them at once. */
typedef struct {
    rotor_buf body, auth, raw;
} token_bufs;

#define TOKEN_BUFS_MT "rotor.token_bufs"

static int token_bufs_gc(lua_State *L) {
    token_bufs *tb = luaL_checkudata(L, 1, TOKEN_BUFS_MT);
    rotor_buf_free(&tb->body);
    rotor_buf_free(&tb->auth);
    rotor_buf_free(&tb->raw);
    return 0;
}

/* RFC 6749 §2.3.1 / App. B: form-encode id and secret, join with ':', base64 */
static void basic_auth(token_bufs *tb, const char *id, size_t idlen, const char *sec,
                       size_t seclen) {
    rotor_buf_add_formenc(&tb->raw, id, idlen);
    rotor_buf_add(&tb->raw, ":", 1);
    rotor_buf_add_formenc(&tb->raw, sec, seclen);
    if (tb->raw.failed) {
        tb->auth.failed = 1;
        return;
    }
    size_t outlen = 4 * ((tb->raw.len + 2) / 3) + 1;
    char *b64 = malloc(outlen);
    if (b64 == NULL) {
        tb->auth.failed = 1;
        return;
    }
    int n = EVP_EncodeBlock((unsigned char *)b64, (unsigned char *)tb->raw.data, (int)tb->raw.len);
    rotor_buf_adds(&tb->auth, "Basic ");
    rotor_buf_add(&tb->auth, b64, (size_t)n);
    rotor_free_secure(b64, outlen);
    rotor_buf_free(&tb->raw);
}

/* The body of a token request: form-urlencoded pairs, or multipart/form-data parts. */
typedef struct {
    int multipart;
    char boundary[64];
    char ctype[128];
} body_enc;

static int body_enc_init(body_enc *b, int multipart) {
    b->multipart = multipart;
    b->boundary[0] = '\0';
    if (!multipart) {
        snprintf(b->ctype, sizeof(b->ctype), "application/x-www-form-urlencoded");
        return 0;
    }
    unsigned char rnd[12];
    if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
        return -1;
    }
    int off = snprintf(b->boundary, sizeof(b->boundary), "----rotor");
    for (size_t i = 0; i < sizeof(rnd); i++) {
        off += snprintf(b->boundary + off, sizeof(b->boundary) - (size_t)off, "%02x", rnd[i]);
    }
    snprintf(b->ctype, sizeof(b->ctype), "multipart/form-data; boundary=%s", b->boundary);
    return 0;
}

static void body_field(const body_enc *b, rotor_buf *out, const char *k, const char *v,
                       size_t vlen) {
    if (b->multipart) {
        multipart_part(out, b->boundary, k, v, vlen);
    } else {
        form_pair(out, k, v, vlen);
    }
}

static void body_finish(const body_enc *b, rotor_buf *out) {
    if (b->multipart) {
        rotor_buf_adds(out, "--");
        rotor_buf_adds(out, b->boundary);
        rotor_buf_adds(out, "--\r\n");
    }
}

/* The token request's fields, read and checked from the table at index 1 (every check that can
 * raise comes before a secret byte is copied). The strings point into that table. */
typedef struct {
    const char *url, *id, *sec, *scope, *grant;
    size_t idlen, seclen, scopelen, grantlen;
    const char *f_grant, *f_id, *f_secret, *f_scope;
    int basic, multipart;
    lua_Integer nextra;
    int first_extra; /* stack index of the first extra name; its value follows it */
} token_spec;

static void read_token_spec(lua_State *L, token_spec *t) {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    lua_getfield(L, 1, "url"); /* 2 */
    t->url = luaL_checkstring(L, 2);
    lua_getfield(L, 1, "style"); /* 3 */
    const char *style = luaL_optstring(L, 3, "basic");
    lua_getfield(L, 1, "client_id"); /* 4 */
    t->id = luaL_checklstring(L, 4, &t->idlen);
    lua_getfield(L, 1, "client_secret"); /* 5 */
    t->sec = rotor_bytes(L, 5, &t->seclen, NULL);
    if (t->sec == NULL) {
        luaL_error(L, "token_request: client_secret must be a string or rotor.secret");
    }
    lua_getfield(L, 1, "scope"); /* 6 */
    t->scopelen = 0;
    t->scope = lua_isnil(L, 6) ? NULL : luaL_checklstring(L, 6, &t->scopelen);
    lua_getfield(L, 1, "grant_type"); /* 7 */
    t->grant = luaL_optlstring(L, 7, "client_credentials", &t->grantlen);
    lua_getfield(L, 1, "fields"); /* 8 */
    int fields = lua_istable(L, 8) ? 8 : 0;
    lua_getfield(L, 1, "extra"); /* 9 */
    int extra = lua_istable(L, 9) ? 9 : 0;
    t->basic = strcmp(style, "basic") == 0;
    t->multipart = strcmp(style, "multipart") == 0;
    if (!t->basic && !t->multipart && strcmp(style, "form") != 0) {
        luaL_error(L, "token_request: unknown style '%s' (basic, form or multipart)", style);
    }
    t->f_grant = field_name(L, fields, "grant_type", "grant_type");
    t->f_id = field_name(L, fields, "client_id", "client_id");
    t->f_secret = field_name(L, fields, "client_secret", "client_secret");
    t->f_scope = field_name(L, fields, "scope", "scope");
    t->nextra = extra ? (lua_Integer)lua_rawlen(L, extra) : 0;
    luaL_checkstack(L, (int)(t->nextra < 200 ? 2 * t->nextra + 8 : 408), "token_request: extra");
    luaL_argcheck(L, t->nextra <= 200, 1, "token_request: at most 200 extra fields");
    t->first_extra = lua_gettop(L) + 1;
    for (lua_Integer i = 1; i <= t->nextra; i++) {
        lua_rawgeti(L, extra, i);
        if (!lua_istable(L, -1)) {
            luaL_error(L, "token_request: extra[%d] must be a {name, value} pair", (int)i);
        }
        lua_rawgeti(L, -1, 1);
        lua_rawgeti(L, -2, 2);
        lua_remove(L, -3);
        size_t vlen;
        if (lua_type(L, -2) != LUA_TSTRING || rotor_bytes(L, -1, &vlen, NULL) == NULL) {
            luaL_error(L, "token_request: extra[%d] needs a name and a string or secret", (int)i);
        }
    }
}

/* Push the request table for m:add: url, method, the body and the Authorization header as
 * rotor.secret values. */
static void push_token_request(lua_State *L, const char *url, const char *ctype, token_bufs *tb) {
    lua_createtable(L, 0, 4);
    int req = lua_gettop(L);
    lua_pushstring(L, url);
    lua_setfield(L, req, "url");
    lua_pushliteral(L, "POST");
    lua_setfield(L, req, "method");
    rotor_secret_push(L, tb->body.data, tb->body.len);
    lua_setfield(L, req, "body");
    lua_newtable(L);
    int harr = lua_gettop(L);
    int nh = 0;
    lua_pushstring(L, ctype);
    push_header(L, harr, &nh, "Content-Type", lua_gettop(L));
    lua_pop(L, 1);
    lua_pushliteral(L, "application/json");
    push_header(L, harr, &nh, "Accept", lua_gettop(L));
    lua_pop(L, 1);
    if (tb->auth.len > 0) {
        rotor_secret_push(L, tb->auth.data, tb->auth.len);
        push_header(L, harr, &nh, "Authorization", lua_gettop(L));
        lua_pop(L, 1);
    }
    lua_setfield(L, req, "headers");
}

/* core.token_request{url, style, client_id, client_secret, scope, grant_type, fields, extra}
 *   style: "basic" (id and secret in the Authorization header), "form" (in the body) or
 *   "multipart" (in a multipart/form-data body); grant_type: the grant's value
 *   ("client_credentials"); fields: the body's field names { grant_type=, client_id=,
 *   client_secret=, scope= }; extra: more fields { {name, value}, ... } (value string or secret).
 * -> a request table for m:add whose body and Authorization header are rotor.secret values. */
static int l_token_request(lua_State *L) {
    token_spec t;
    read_token_spec(L, &t);
    body_enc enc;
    if (body_enc_init(&enc, t.multipart) != 0) {
        return luaL_error(L, "token_request: RAND_bytes failed");
    }
    token_bufs *tb = lua_newuserdata(L, sizeof(*tb));
    memset(tb, 0, sizeof(*tb));
    if (luaL_newmetatable(L, TOKEN_BUFS_MT)) {
        lua_pushcfunction(L, token_bufs_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    int tbi = lua_gettop(L);

    body_field(&enc, &tb->body, t.f_grant, t.grant, t.grantlen);
    if (!t.basic) {
        body_field(&enc, &tb->body, t.f_id, t.id, t.idlen);
        body_field(&enc, &tb->body, t.f_secret, t.sec, t.seclen);
    }
    if (t.scope != NULL) {
        body_field(&enc, &tb->body, t.f_scope, t.scope, t.scopelen);
    }
    for (lua_Integer i = 0; i < t.nextra; i++) {
        int at = t.first_extra + 2 * (int)i;
        size_t vlen;
        const char *v = rotor_bytes(L, at + 1, &vlen, NULL);
        body_field(&enc, &tb->body, lua_tostring(L, at), v, vlen);
    }
    body_finish(&enc, &tb->body);
    if (t.basic) {
        basic_auth(tb, t.id, t.idlen, t.sec, t.seclen);
    }
    if (tb->body.failed || tb->auth.failed) {
        lua_pushcfunction(L, token_bufs_gc);
        lua_pushvalue(L, tbi);
        lua_call(L, 1, 0);
        return luaL_error(L, "token_request: out of memory");
    }
    push_token_request(L, t.url, enc.ctype, tb);
    rotor_buf_free(&tb->body);
    rotor_buf_free(&tb->auth);
    return 1;
}

/* ---- the token cache ---- */

/* A plain, secure key-value store: tokens in mlocked C memory, zeroed when dropped, and an
 * entry freed once its token expired (checked in the bucket each put touches). Who fetches a
 * token, and who waits for it, is decided in Lua (lua/rotor/singleflight.lua). */
#define NBUCKETS 256

typedef struct entry {
    char *key;
    size_t keylen;
    char *token;
    size_t toklen;
    double expires; /* monotonic */
    double ttl;     /* the lifetime it was put with */
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
    if (e->token != NULL) {
        rotor_locked_free(e->token, e->toklen + 1);
    }
    e->token = NULL;
    e->toklen = 0;
    e->expires = 0;
}

/* free the entries of bucket b whose token is gone or expired (the cache lock is held) */
static void evict_expired(unsigned b, double now) {
    entry **link = &buckets[b];
    while (*link != NULL) {
        entry *e = *link;
        if (e->token == NULL || e->expires <= now) {
            *link = e->next;
            drop_token(e);
            free(e->key);
            free(e);
        } else {
            link = &e->next;
        }
    }
}

/* core.token_get(key) -> token_secret, seconds_left, ttl | nil (none, or expired) */
static int l_token_get(lua_State *L) {
    size_t n;
    const char *k = luaL_checklstring(L, 1, &n);
    double now = rotor_mono_now();
    pthread_mutex_lock(&cache_lock);
    entry *e = find(k, n, 0);
    if (e != NULL && e->token != NULL && now < e->expires) {
        rotor_secret_push(L, e->token, e->toklen);
        lua_pushnumber(L, e->expires - now);
        lua_pushnumber(L, e->ttl);
        pthread_mutex_unlock(&cache_lock);
        return 3;
    }
    pthread_mutex_unlock(&cache_lock);
    lua_pushnil(L);
    return 1;
}

/* A token lifetime from a provider, clamped to [ROTOR_TTL_MIN, ROTOR_TTL_MAX] seconds: NaN, 0 or a
 * negative value would mean one token request per call, 1e400 a token cached forever. The
 * minimum is twice the default refresh margin (oauth.DEFAULT_MARGIN, 60 s), so a short-lived
 * token is still served from the cache; a 401 drops it early. */
double rotor_clamp_ttl(double ttl) {
    if (!(ttl >= ROTOR_TTL_MIN)) { /* also NaN */
        return ROTOR_TTL_MIN;
    }
    return ttl > ROTOR_TTL_MAX ? ROTOR_TTL_MAX : ttl;
}

/* core.token_put(key, token, expires_in_seconds) -> the lifetime kept (clamped) */
static int l_token_put(lua_State *L) {
    size_t n, tlen;
    const char *k = luaL_checklstring(L, 1, &n);
    const char *t = rotor_checkbytes(L, 2, &tlen);
    double ttl = rotor_clamp_ttl(luaL_checknumber(L, 3));
    char *copy = rotor_locked_alloc(tlen + 1);
    if (copy == NULL) {
        return luaL_error(L, "token cache: out of memory");
    }
    memcpy(copy, t, tlen);
    copy[tlen] = '\0';
    double now = rotor_mono_now();
    pthread_mutex_lock(&cache_lock);
    evict_expired(hash(k, n), now);
    entry *e = find(k, n, 1);
    if (e == NULL) {
        pthread_mutex_unlock(&cache_lock);
        rotor_locked_free(copy, tlen + 1);
        return luaL_error(L, "token cache: out of memory");
    }
    drop_token(e);
    e->token = copy;
    e->toklen = tlen;
    e->expires = now + ttl;
    e->ttl = ttl;
    pthread_mutex_unlock(&cache_lock);
    lua_pushnumber(L, ttl);
    return 1;
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
    evict_expired(hash(k, n), rotor_mono_now()); /* frees the emptied entry too */
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
                                     {"token_put", l_token_put},
                                     {"token_invalidate", l_token_invalidate},
                                     {"token_clear", l_token_clear},
                                     {"now", l_now},
                                     {"wallclock", l_wallclock},
                                     {"sleep", l_sleep},
                                     {NULL, NULL}};
    luaL_setfuncs(L, funcs, 0);
}
