/* rotor.secret: secret bytes kept in C memory, zeroed when closed or collected.
 *
 * Every live secret is also on a process-wide list, so that core.redact() can strip any secret
 * the process holds from a message before it is shown (error messages, tracebacks). */
#include "rotor.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

/* one form of a secret in the redaction index (see "redaction" below) */
typedef struct redact_entry {
    const char *text; /* inside the owner's forms buffer */
    size_t len;
    uint64_t key; /* its first REDACT_KEY bytes */
    int kind;
    struct redact_entry *next; /* in its bucket */
} redact_entry;

struct rotor_secret {
    char *buf;
    size_t len;
    struct rotor_secret *prev, *next; /* the live list, newest first */
    int indexed;                      /* its forms are in the redaction index */
    char *forms;                      /* the bytes of its forms (zeroed when closed) */
    size_t forms_len;
    int nentries;
    redact_entry *entries;
};

static rotor_secret *live_head = NULL;
static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;

void rotor_zero(void *p, size_t len) {
    if (p != NULL && len > 0) {
        OPENSSL_cleanse(p, len);
    }
}

void rotor_free_secure(void *p, size_t len) {
    if (p != NULL) {
        rotor_zero(p, len);
        free(p);
    }
}

/* ---- best-effort mlock of the pages holding a large secret (see the arena below) ----
 * A page may hold several secrets (and other heap data): each page is locked when its first
 * secret arrives and unlocked when its last one leaves, counted in a small hash table (entries
 * are kept once made). mlock fails quietly beyond RLIMIT_MEMLOCK: the secret is then only
 * zeroed, as before. */

typedef struct {
    uintptr_t page; /* 0: empty */
    unsigned count;
    int locked;
} page_ref;

static page_ref *pages;
static size_t pages_cap, pages_used;
static uintptr_t page_size;
static pthread_mutex_t page_lock = PTHREAD_MUTEX_INITIALIZER;

static page_ref *page_find(uintptr_t page, int create);

static int pages_grow(void) {
    size_t ncap = pages_cap ? pages_cap * 2 : 256;
    page_ref *old = pages, *nt = calloc(ncap, sizeof(*nt));
    size_t ocap = pages_cap;
    if (nt == NULL) {
        return -1;
    }
    pages = nt;
    pages_cap = ncap;
    pages_used = 0;
    for (size_t i = 0; i < ocap; i++) {
        if (old[i].page != 0) {
            *page_find(old[i].page, 1) = old[i];
        }
    }
    free(old);
    return 0;
}

static page_ref *page_find(uintptr_t page, int create) {
    if (create && (pages_used + 1) * 2 > pages_cap && pages_grow() != 0) {
        return NULL;
    }
    if (pages == NULL) {
        return NULL;
    }
    size_t mask = pages_cap - 1, i = (size_t)((page / page_size) * 2654435761u) & mask;
    while (pages[i].page != 0 && pages[i].page != page) {
        i = (i + 1) & mask;
    }
    if (pages[i].page == 0) {
        if (!create) {
            return NULL;
        }
        pages[i].page = page;
        pages_used++;
    }
    return &pages[i];
}

static void secure_pages(const void *p, size_t len, int lock) {
    if (p == NULL || len == 0) {
        return;
    }
    pthread_mutex_lock(&page_lock);
    if (page_size == 0) {
        long ps = sysconf(_SC_PAGESIZE);
        page_size = ps > 0 ? (uintptr_t)ps : 4096;
    }
    const char *first = (const char *)p - ((uintptr_t)p & (page_size - 1));
    const char *end = (const char *)p + len;
    for (const char *pg = first; pg < end; pg += page_size) {
        page_ref *r = page_find((uintptr_t)pg, lock);
        if (r == NULL) {
            continue; /* out of memory for the table: this page stays unlocked */
        }
        if (lock) {
            if (r->count++ == 0) {
                r->locked = mlock(pg, page_size) == 0;
            }
        } else if (r->count > 0 && --r->count == 0 && r->locked) {
            munlock(pg, page_size);
            r->locked = 0;
        }
    }
    pthread_mutex_unlock(&page_lock);
}

/* Released when the module is unloaded (the table's pointer goes with it) */
__attribute__((destructor)) static void pages_fini(void) {
    pthread_mutex_lock(&page_lock);
    free(pages);
    pages = NULL;
    pages_cap = pages_used = 0;
    pthread_mutex_unlock(&page_lock);
}

/* ---- the locked arena: where secret bytes live ----
 * Blocks of 32 to 4096 bytes (a power of two per class) carved from 16 kB chunks that are mapped
 * apart from the heap, locked once (best effort, within RLIMIT_MEMLOCK) and left out of core
 * dumps. A freed block is zeroed and kept on its class's free list for the next secret: making
 * and closing secrets costs no system call once the arena holds enough chunks (locking each
 * secret's heap pages cost two, each splitting or merging the heap's mapping in the kernel: a
 * seventh of the event loop's time in a rotation batch). Secret bytes share no page with other
 * heap data. Chunks are kept until the module is unloaded. Larger blocks are malloc'd with their
 * pages locked, as before. Under AddressSanitizer and valgrind, free blocks and the unused tail
 * of a block are marked unaddressable, so an overflow or a use after free is still reported. */
#if defined(__SANITIZE_ADDRESS__)
#define ROTOR_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ROTOR_ASAN 1
#endif
#endif
#ifdef ROTOR_ASAN
#include <sanitizer/asan_interface.h>
#define ARENA_NOACCESS(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define ARENA_ACCESS(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#elif defined(__has_include)
#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#define ARENA_NOACCESS(p, n) VALGRIND_MAKE_MEM_NOACCESS((p), (n))
#define ARENA_ACCESS(p, n) VALGRIND_MAKE_MEM_DEFINED((p), (n))
#endif
#endif
#ifndef ARENA_NOACCESS
#define ARENA_NOACCESS(p, n) ((void)(p), (void)(n))
#define ARENA_ACCESS(p, n) ((void)(p), (void)(n))
#endif

#define ARENA_MIN_SHIFT 5 /* 32 bytes */
#define ARENA_CLASSES 8   /* up to 4096 bytes */
#define ARENA_CHUNK ((size_t)16384)

typedef struct arena_chunk {
    struct arena_chunk *next;
    void *base;
} arena_chunk;

typedef struct arena_block {
    struct arena_block *next; /* a free block holds the next free one's address */
} arena_block;

static arena_block *arena_free_list[ARENA_CLASSES];
static arena_chunk *arena_chunks;
static pthread_mutex_t arena_lock = PTHREAD_MUTEX_INITIALIZER;

static int arena_class(size_t n) {
    int c = 0;
    while (c < ARENA_CLASSES && ((size_t)1 << (ARENA_MIN_SHIFT + c)) < n) {
        c++;
    }
    return c; /* ARENA_CLASSES: too large for the arena */
}

/* A new chunk cut into blocks of class c, put on its free list; -1 when out of memory. */
static int arena_grow(int c) {
    arena_chunk *rec = malloc(sizeof(*rec));
    void *base =
        mmap(NULL, ARENA_CHUNK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (rec == NULL || base == MAP_FAILED) {
        free(rec);
        if (base != MAP_FAILED) {
            munmap(base, ARENA_CHUNK);
        }
        return -1;
    }
    (void)mlock(base, ARENA_CHUNK);
#ifdef MADV_DONTDUMP
    (void)madvise(base, ARENA_CHUNK, MADV_DONTDUMP);
#endif
    rec->base = base;
    rec->next = arena_chunks;
    arena_chunks = rec;
    size_t size = (size_t)1 << (ARENA_MIN_SHIFT + c);
    for (size_t off = ARENA_CHUNK; off >= size; off -= size) {
        arena_block *blk = (arena_block *)((char *)base + off - size); /* aligned to size */
        blk->next = arena_free_list[c];
        arena_free_list[c] = blk;
    }
    ARENA_NOACCESS(base, ARENA_CHUNK);
    return 0;
}

void *rotor_locked_alloc(size_t n) {
    if (n == 0) {
        n = 1;
    }
    int c = arena_class(n);
    if (c == ARENA_CLASSES) {
        void *p = calloc(1, n);
        if (p != NULL) {
            secure_pages(p, n, 1);
        }
        return p;
    }
    pthread_mutex_lock(&arena_lock);
    if (arena_free_list[c] == NULL && arena_grow(c) != 0) {
        pthread_mutex_unlock(&arena_lock);
        return NULL;
    }
    arena_block *blk = arena_free_list[c];
    ARENA_ACCESS(blk, sizeof(*blk));
    arena_free_list[c] = blk->next;
    blk->next = NULL; /* the block is all zero again */
    ARENA_NOACCESS(blk, sizeof(*blk));
    pthread_mutex_unlock(&arena_lock);
    ARENA_ACCESS(blk, n); /* the rest of the block stays unaddressable */
    return blk;
}

void rotor_locked_free(void *p, size_t n) {
    if (p == NULL) {
        return;
    }
    if (n == 0) {
        n = 1;
    }
    int c = arena_class(n);
    rotor_zero(p, n);
    if (c == ARENA_CLASSES) {
        secure_pages(p, n, 0);
        free(p);
        return;
    }
    pthread_mutex_lock(&arena_lock);
    arena_block *blk = p;
    ARENA_ACCESS(blk, sizeof(*blk));
    blk->next = arena_free_list[c];
    arena_free_list[c] = blk;
    ARENA_NOACCESS(p, (size_t)1 << (ARENA_MIN_SHIFT + c));
    pthread_mutex_unlock(&arena_lock);
}

/* Unmapped when the module is unloaded (every secret was closed with its Lua states) */
__attribute__((destructor)) static void arena_fini(void) {
    pthread_mutex_lock(&arena_lock);
    while (arena_chunks != NULL) {
        arena_chunk *next = arena_chunks->next;
        ARENA_ACCESS(arena_chunks->base, ARENA_CHUNK);
        rotor_zero(arena_chunks->base, ARENA_CHUNK);
        munmap(arena_chunks->base, ARENA_CHUNK);
        free(arena_chunks);
        arena_chunks = next;
    }
    memset(arena_free_list, 0, sizeof(arena_free_list));
    pthread_mutex_unlock(&arena_lock);
}

/* ---- rotor_buf ---- */

void rotor_buf_add(rotor_buf *b, const void *p, size_t n) {
    if (b->failed) {
        return;
    }
    if (b->data == NULL || b->len + n + 1 > b->cap) {
        size_t ncap = b->cap ? b->cap * 2 : 256;
        while (ncap < b->len + n + 1) {
            ncap *= 2;
        }
        char *nd = malloc(ncap);
        if (nd == NULL) {
            b->failed = 1;
            return;
        }
        if (b->data != NULL) {
            memcpy(nd, b->data, b->len);
            rotor_free_secure(b->data, b->cap);
        }
        b->data = nd;
        b->cap = ncap;
    }
    if (n > 0 && p != NULL) {
        memcpy(b->data + b->len, p, n);
    }
    b->len += n;
    b->data[b->len] = '\0';
}

void rotor_buf_adds(rotor_buf *b, const char *s) {
    rotor_buf_add(b, s, strlen(s));
}

void rotor_buf_free(rotor_buf *b) {
    rotor_free_secure(b->data, b->cap);
    b->data = NULL;
    b->len = b->cap = 0;
    b->failed = 0;
}

/* Percent-encoding into dst (at most 3n bytes); returns the length. Letters, digits and "-._"
 * stay as they are, and every other byte becomes %XX in hex's case, except:
 *   PCT_URI   RFC 3986: "~" stays too;
 *   PCT_FORM  application/x-www-form-urlencoded, as a token request carries id and secret (in
 *             its body, and inside a Basic header: RFC 6749 section 2.3.1): "*" stays too and a
 *             space becomes "+".
 * The redaction index makes every form of each secret (index_add). */
enum { PCT_URI, PCT_FORM };
static const char HEX_UPPER[] = "0123456789ABCDEF";
static size_t put_percent(char *dst, const char *p, size_t n, const char *hex, int mode) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == (mode == PCT_FORM ? '*' : '~')) {
            dst[o++] = (char)c;
        } else if (c == ' ' && mode == PCT_FORM) {
            dst[o++] = '+';
        } else {
            dst[o++] = '%';
            dst[o++] = hex[c >> 4];
            dst[o++] = hex[c & 15];
        }
    }
    return o;
}

void rotor_buf_add_formenc(rotor_buf *b, const char *p, size_t n) {
    char chunk[96]; /* 32 bytes of input at a time, zeroed after (it may hold a secret) */
    for (size_t i = 0; i < n; i += 32) {
        size_t m = n - i < 32 ? n - i : 32;
        rotor_buf_add(b, chunk, put_percent(chunk, p + i, m, HEX_UPPER, PCT_FORM));
    }
    rotor_zero(chunk, sizeof chunk);
}

/* ---- the secret userdata ---- */

static void index_remove(rotor_secret *s);

static void secret_close(rotor_secret *s) {
    if (s->buf == NULL) {
        return;
    }
    pthread_mutex_lock(&live_lock);
    index_remove(s);
    if (s->prev != NULL) {
        s->prev->next = s->next;
    } else if (live_head == s) {
        live_head = s->next;
    }
    if (s->next != NULL) {
        s->next->prev = s->prev;
    }
    s->prev = s->next = NULL;
    pthread_mutex_unlock(&live_lock);
    rotor_locked_free(s->buf, s->len + 1);
    s->buf = NULL;
    s->len = 0;
}

void rotor_secret_push(lua_State *L, const void *buf, size_t len) {
    rotor_secret *s = lua_newuserdata(L, sizeof(*s));
    memset(s, 0, sizeof(*s));
    luaL_setmetatable(L, ROTOR_SECRET_MT);
    s->buf = rotor_locked_alloc(len + 1);
    if (s->buf == NULL) {
        luaL_error(L, "rotor.secret: out of memory");
        return;
    }
    if (len > 0) {
        memcpy(s->buf, buf, len);
    }
    s->buf[len] = '\0';
    s->len = len;
    pthread_mutex_lock(&live_lock);
    s->next = live_head;
    if (live_head != NULL) {
        live_head->prev = s;
    }
    live_head = s;
    pthread_mutex_unlock(&live_lock);
}

static rotor_secret *check_secret(lua_State *L, int idx) {
    return luaL_checkudata(L, idx, ROTOR_SECRET_MT);
}

static rotor_secret *open_secret(lua_State *L, int idx) {
    rotor_secret *s = check_secret(L, idx);
    if (s->buf == NULL) {
        luaL_error(L, "rotor.secret: the secret was closed");
    }
    return s;
}

const char *rotor_bytes(lua_State *L, int idx, size_t *len, int *is_secret) {
    if (is_secret != NULL) {
        *is_secret = 0;
    }
    if (lua_type(L, idx) == LUA_TSTRING) {
        return lua_tolstring(L, idx, len);
    }
    rotor_secret *s = luaL_testudata(L, idx, ROTOR_SECRET_MT);
    if (s == NULL || s->buf == NULL) {
        return NULL;
    }
    if (is_secret != NULL) {
        *is_secret = 1;
    }
    *len = s->len;
    return s->buf;
}

const char *rotor_checkbytes(lua_State *L, int idx, size_t *len) {
    *len = 0;
    const char *p = rotor_bytes(L, idx, len, NULL);
    if (p == NULL) {
        luaL_argerror(L, idx, "string or open rotor.secret expected");
        return "";
    }
    return p;
}

/* one piece of a rope (see rotor_dupbytes): its bytes, or NULL when it is none */
static const char *rope_piece(lua_State *L, int idx, size_t *len) {
    idx = lua_absindex(L, idx);
    *len = 0;
    if (lua_type(L, idx) == LUA_TSTRING) {
        return lua_tolstring(L, idx, len);
    }
    if (!lua_istable(L, idx) || lua_rawgeti(L, idx, 1) != LUA_TSTRING) {
        return NULL;
    }
    size_t n;
    const char *s = lua_tolstring(L, -1, &n);
    lua_pop(L, 1); /* the table holds it */
    int ok_i, ok_j;
    lua_rawgeti(L, idx, 2);
    lua_Integer i = lua_tointegerx(L, -1, &ok_i);
    lua_rawgeti(L, idx, 3);
    lua_Integer j = lua_tointegerx(L, -1, &ok_j);
    lua_pop(L, 2);
    if (!ok_i || !ok_j || i < 1 || j > (lua_Integer)n || i > j + 1) {
        return NULL;
    }
    *len = (size_t)(j - i + 1);
    return s + i - 1;
}

char *rotor_dupbytes(lua_State *L, int idx, size_t *len) {
    idx = lua_absindex(L, idx);
    size_t total = 0, n = 0;
    const char *p = rotor_bytes(L, idx, &total, NULL);
    lua_Integer pieces = 0;
    if (p == NULL) {
        if (!lua_istable(L, idx)) {
            luaL_error(L, "a string, an open rotor.secret or an array of pieces expected, got %s",
                       luaL_typename(L, idx));
        }
        pieces = (lua_Integer)lua_rawlen(L, idx);
        for (lua_Integer k = 1; k <= pieces; k++) {
            lua_rawgeti(L, idx, k);
            if (rope_piece(L, -1, &n) == NULL || n > SIZE_MAX / 2 - total) {
                luaL_error(L, "piece %d: a string or { string, i, j } within it expected", (int)k);
            }
            total += n;
            lua_pop(L, 1);
        }
    }
    char *out = malloc(total > 0 ? total : 1);
    if (out == NULL) {
        luaL_error(L, "out of memory");
        return NULL;
    }
    if (p != NULL) {
        memcpy(out, p, total);
    }
    size_t at = 0;
    for (lua_Integer k = 1; k <= pieces; k++) {
        lua_rawgeti(L, idx, k);
        const char *piece = rope_piece(L, -1, &n);
        memcpy(out + at, piece, n);
        at += n;
        lua_pop(L, 1);
    }
    *len = total;
    return out;
}

static int l_secret_new(lua_State *L) {
    size_t len;
    const char *p = rotor_checkbytes(L, 1, &len);
    rotor_secret_push(L, p, len);
    return 1;
}

static int l_secret_reveal(lua_State *L) {
    rotor_secret *s = open_secret(L, 1);
    lua_pushlstring(L, s->buf, s->len);
    return 1;
}

static int l_secret_len(lua_State *L) {
    rotor_secret *s = open_secret(L, 1);
    lua_pushinteger(L, (lua_Integer)s->len);
    return 1;
}

static int l_secret_close(lua_State *L) {
    secret_close(check_secret(L, 1));
    return 0;
}

static int l_secret_closed(lua_State *L) {
    lua_pushboolean(L, check_secret(L, 1)->buf == NULL);
    return 1;
}

static int l_secret_tostring(lua_State *L) {
    rotor_secret *s = check_secret(L, 1);
    lua_pushstring(L, s->buf ? "rotor.secret(<redacted>)" : "rotor.secret(<closed>)");
    return 1;
}

static int l_secret_eq(lua_State *L) {
    rotor_secret *a = luaL_testudata(L, 1, ROTOR_SECRET_MT);
    rotor_secret *b = luaL_testudata(L, 2, ROTOR_SECRET_MT);
    int eq = a != NULL && b != NULL && a->buf != NULL && b->buf != NULL && a->len == b->len &&
             CRYPTO_memcmp(a->buf, b->buf, a->len) == 0;
    lua_pushboolean(L, eq);
    return 1;
}

/* s:equals(string_or_secret): constant-time comparison */
static int l_secret_equals(lua_State *L) {
    rotor_secret *s = open_secret(L, 1);
    size_t len;
    const char *p = rotor_checkbytes(L, 2, &len);
    lua_pushboolean(L, len == s->len && CRYPTO_memcmp(p, s->buf, len) == 0);
    return 1;
}

static int l_secret_gc(lua_State *L) {
    secret_close(check_secret(L, 1));
    return 0;
}

static int l_is_secret(lua_State *L) {
    lua_pushboolean(L, luaL_testudata(L, 1, ROTOR_SECRET_MT) != NULL);
    return 1;
}

static int l_hmac_sha256_hex(lua_State *L) {
    size_t klen, dlen;
    const char *k = rotor_checkbytes(L, 1, &klen);
    const char *d = rotor_checkbytes(L, 2, &dlen);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (HMAC(EVP_sha256(), k, (int)klen, (const unsigned char *)d, dlen, md, &mdlen) == NULL) {
        return luaL_error(L, "hmac_sha256_hex: HMAC failed");
    }
    char hex[2 * EVP_MAX_MD_SIZE + 1];
    static const char digits[] = "0123456789abcdef";
    for (unsigned int i = 0; i < mdlen; i++) {
        hex[(size_t)2 * i] = digits[md[i] >> 4];
        hex[(size_t)2 * i + 1] = digits[md[i] & 15];
    }
    lua_pushlstring(L, hex, 2 * (size_t)mdlen);
    return 1;
}

static int l_random_hex(lua_State *L) {
    lua_Integer n = luaL_optinteger(L, 1, 16);
    luaL_argcheck(L, n > 0 && n <= 256, 1, "between 1 and 256 bytes");
    unsigned char raw[256];
    char hex[513];
    static const char digits[] = "0123456789abcdef";
    if (RAND_bytes(raw, (int)n) != 1) {
        return luaL_error(L, "random_hex: RAND_bytes failed");
    }
    for (lua_Integer i = 0; i < n; i++) {
        hex[2 * i] = digits[raw[i] >> 4];
        hex[2 * i + 1] = digits[raw[i] & 15];
    }
    lua_pushlstring(L, hex, (size_t)(2 * n));
    rotor_zero(raw, sizeof(raw));
    return 1;
}

/* ---- redaction ---- */

/* The forms in which a secret can reach a message: as it is, JSON-escaped, percent-encoded
 * (RFC 3986, upper- and lower-case hex), form-encoded exactly as rotor's own token requests carry
 * it (put_percent PCT_FORM: "*" kept, "~" encoded, a space as "+"), and inside base64 and base64url
 * — of the secret, of its percent-encoding and of its form-encoding (RFC 6749 form-encodes id and
 * secret before a Basic header) — at each of the three alignments. Forms that come out the same
 * (a secret without "~", "*" or a space) are indexed once. A base64 form is the run of characters
 * that do not depend on the bytes around the secret; a match is widened to the whole run of base64
 * characters around it (e.g. a Basic header's "id:secret"). */
enum { FORM_PLAIN, FORM_B64 };
typedef struct {
    size_t off, len; /* in the scratch buffer of index_add */
    int kind;
} redact_form;
#define REDACT_FORMS 23

/* The form writers: each writes into dst (room for its bound) and returns the length written. */

static size_t put_json_escaped(char *dst, const char *p, size_t n) { /* bound: 2n */
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '/' || p[i] == '"' || p[i] == '\\') {
            dst[o++] = '\\';
        }
        dst[o++] = p[i];
    }
    return o;
}

/* base64 of m bytes, with the NUL EVP_EncodeBlock writes */
#define B64_ROOM(m) (4 * (((m) + 2) / 3) + 1)

/* The base64 characters fixed by the secret alone when it starts `shift` bytes into a group
 * (bound: B64_ROOM(n + 2)). raw: room for n + 2 bytes. */
static size_t put_b64_core(char *dst, unsigned char *raw, const char *p, size_t n, int shift) {
    size_t total = (size_t)shift + n;
    memset(raw, 0, (size_t)shift);
    memcpy(raw + shift, p, n);
    int elen = EVP_EncodeBlock((unsigned char *)dst, raw, (int)total);
    /* characters 0..first-1 carry prefix bits; the last group may carry suffix bits */
    size_t first = shift == 0 ? 0 : (size_t)(shift == 1 ? 2 : 3);
    size_t full = (total / 3) * 4; /* characters of complete groups */
    if (full <= first || elen < 0) {
        return 0;
    }
    memmove(dst, dst + first, full - first);
    return full - first;
}

/* The same characters in the base64url alphabet ('-' and '_' for '+' and '/'): p[0..n) as
 * put_b64_core wrote it, translated into dst. */
static size_t put_b64url(char *dst, const char *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c == '+') {
            c = '-';
        } else if (c == '/') {
            c = '_';
        }
        dst[i] = c;
    }
    return n;
}

static int is_b64(char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
           c == '/' || c == '=' || c == '-' || c == '_';
}

/* The index: every distinct form (of 6 bytes or more) of every live secret, in a hash table keyed
 * by its first 6 bytes. A secret's forms are made the first time core.redact runs after the
 * secret was created (secrets are added at the head of the live list, so the ones not yet indexed
 * are always its first ones), and removed, zeroed, when it is closed. A message is then scanned
 * once, whatever the number of live secrets: at each position, the bucket of the 6 bytes there. */
#define REDACT_KEY 6
static redact_entry **buckets;
static size_t nbuckets, nindexed; /* buckets: a power of two */

static uint64_t key_at(const char *p) {
    uint64_t k = 0;
    memcpy(&k, p, REDACT_KEY);
    return k;
}

static size_t bucket_of(uint64_t key) {
    return (size_t)((key * 0x9E3779B97F4A7C15ULL) >> 20) & (nbuckets - 1);
}

/* double the table (or make it); on failure the old one stays, only slower */
static void index_grow(void) {
    size_t n = nbuckets ? nbuckets * 2 : 1024;
    redact_entry **nb = calloc(n, sizeof(redact_entry *));
    if (nb == NULL) {
        return;
    }
    redact_entry **old = buckets;
    size_t oldn = nbuckets;
    buckets = nb;
    nbuckets = n;
    for (size_t i = 0; i < oldn; i++) {
        for (redact_entry *e = old[i], *next; e != NULL; e = next) {
            next = e->next;
            size_t b = bucket_of(e->key);
            e->next = buckets[b];
            buckets[b] = e;
        }
    }
    free(old);
}

static void index_remove(rotor_secret *s) {
    for (int i = 0; i < s->nentries; i++) {
        redact_entry *e = &s->entries[i];
        redact_entry **pp = &buckets[bucket_of(e->key)];
        while (*pp != NULL && *pp != e) {
            pp = &(*pp)->next;
        }
        if (*pp == e) {
            *pp = e->next;
            nindexed--;
        }
    }
    rotor_locked_free(s->forms, s->forms_len);
    rotor_free_secure(s->entries, (size_t)s->nentries * sizeof(redact_entry));
    s->forms = NULL;
    s->entries = NULL;
    s->forms_len = 0;
    s->nentries = 0;
    s->indexed = 0;
}

/* Make the forms of s and add them to the index; 0, or -1 when out of memory. The forms are
 * written into one scratch buffer (on the stack for the usual secret), zeroed after. */
static int index_add(rotor_secret *s) {
    if (s->len < REDACT_KEY) {
        s->indexed = 1;
        return 0;
    }
    if (nindexed + REDACT_FORMS > nbuckets) {
        index_grow();
    }
    if (nindexed + REDACT_FORMS > 2 * nbuckets) {
        return -1; /* no table, or one far too small: out of memory */
    }
    const size_t n = s->len;
    /* the bound of every form (raw, JSON, 2 percent, form, 6 base64 of each of 3 sources), and
     * raw room */
    const size_t need =
        n + 2 * n + 9 * n + 6 * B64_ROOM(n + 2) + 12 * B64_ROOM(3 * n + 2) + (3 * n + 2);
    char stack_scratch[4096];
    char *scratch = need <= sizeof stack_scratch ? stack_scratch : malloc(need);
    if (scratch == NULL) {
        return -1;
    }
    unsigned char *raw = (unsigned char *)scratch + need - (3 * n + 2);
    redact_form forms[REDACT_FORMS];
    size_t at = 0;
    int f = 0;
#define FORM(kind_, expr)                                                                          \
    do {                                                                                           \
        forms[f].off = at;                                                                         \
        forms[f].kind = (kind_);                                                                   \
        forms[f].len = (expr);                                                                     \
        at += forms[f].len;                                                                        \
        f++;                                                                                       \
    } while (0)
    FORM(FORM_PLAIN, (memcpy(scratch + at, s->buf, n), n));
    FORM(FORM_PLAIN, put_json_escaped(scratch + at, s->buf, n));
    FORM(FORM_PLAIN, put_percent(scratch + at, s->buf, n, HEX_UPPER, PCT_URI));
    FORM(FORM_PLAIN, put_percent(scratch + at, s->buf, n, "0123456789abcdef", PCT_URI));
    FORM(FORM_PLAIN, put_percent(scratch + at, s->buf, n, HEX_UPPER, PCT_FORM));
    static const int b64_sources[] = {0, 2, 4}; /* the secret, its percent- and form-encoding */
    for (int src = 0; src < 3; src++) {
        const redact_form base = forms[b64_sources[src]];
        /* a source equal to an earlier one (a secret with no byte to encode: most) has the same
         * base64 forms: not made twice */
        int seen = 0;
        for (int e = 0; e < src && !seen; e++) {
            const redact_form o = forms[b64_sources[e]];
            seen = o.len == base.len && memcmp(scratch + o.off, scratch + base.off, o.len) == 0;
        }
        for (int k = 0; k < 3 && !seen; k++) {
            FORM(FORM_B64, put_b64_core(scratch + at, raw, scratch + base.off, base.len, k));
            const redact_form std = forms[f - 1];
            FORM(FORM_B64, put_b64url(scratch + at, scratch + std.off, std.len));
        }
    }
    const int nforms = f;
#undef FORM
    /* the distinct forms long enough to be keyed */
    int keep[REDACT_FORMS] = {0}, nkeep = 0;
    size_t total = 0;
    for (int i = 0; i < nforms; i++) {
        int dup = forms[i].len < REDACT_KEY;
        for (int j = 0; j < nkeep && !dup; j++) {
            const redact_form *o = &forms[keep[j]];
            dup = o->len == forms[i].len &&
                  memcmp(scratch + o->off, scratch + forms[i].off, o->len) == 0;
        }
        if (!dup) {
            keep[nkeep++] = i;
            total += forms[i].len;
        }
    }
    int rc = -1;
    s->forms = rotor_locked_alloc(total);
    s->entries = calloc((size_t)nkeep, sizeof(redact_entry));
    if (s->forms == NULL || s->entries == NULL) {
        rotor_locked_free(s->forms, total);
        free(s->entries);
        s->forms = NULL;
        s->entries = NULL;
    } else {
        s->forms_len = total;
        size_t pos = 0;
        for (int i = 0; i < nkeep; i++) {
            const redact_form *t = &forms[keep[i]];
            redact_entry *e = &s->entries[i];
            memcpy(s->forms + pos, scratch + t->off, t->len);
            e->text = s->forms + pos;
            e->len = t->len;
            e->kind = t->kind;
            e->key = key_at(e->text);
            pos += t->len;
        }
        s->nentries = nkeep;
        for (int i = 0; i < nkeep; i++) {
            redact_entry *e = &s->entries[i];
            size_t b = bucket_of(e->key);
            e->next = buckets[b];
            buckets[b] = e;
            nindexed++;
        }
        s->indexed = 1;
        rc = 0;
    }
    /* the bytes written: the forms, what an encoding wrote past the last one (at most a base64
     * block of the longest source), and the raw room at the end */
    size_t written = at + B64_ROOM(3 * n + 2);
    rotor_zero(scratch, written < need ? written : need);
    rotor_zero(raw, 3 * n + 2);
    if (scratch != stack_scratch) {
        free(scratch);
    }
    return rc;
}

/* the longest form of a live secret that starts at text[at], or NULL */
static const redact_entry *match_at(const char *text, size_t len, size_t at) {
    uint64_t key = key_at(text + at);
    const redact_entry *best = NULL;
    for (const redact_entry *e = buckets[bucket_of(key)]; e != NULL; e = e->next) {
        if (e->key == key && e->len <= len - at && (best == NULL || e->len > best->len) &&
            memcmp(text + at, e->text, e->len) == 0) {
            best = e;
        }
    }
    return best;
}

/* Freed when the module is unloaded (secrets still open then keep their own buffers) */
__attribute__((destructor)) static void index_fini(void) {
    pthread_mutex_lock(&live_lock);
    free(buckets);
    buckets = NULL;
    nbuckets = nindexed = 0;
    for (rotor_secret *s = live_head; s != NULL; s = s->next) {
        s->nentries = 0; /* their entries are no longer in a table */
    }
    pthread_mutex_unlock(&live_lock);
}

/* core.redact(message): the message with every live secret (of 6 bytes or more) replaced by
 * <redacted>, in each of the forms above (the longest form found at a place wins; a base64
 * form takes the whole run of base64 characters around it). Used on every text rotor writes or
 * shows. */
static int l_redact(lua_State *L) {
    size_t mlen;
    const char *msg = luaL_checklstring(L, 1, &mlen);
    rotor_buf out = {0};
    int changed = 0, failed = 0;
    pthread_mutex_lock(&live_lock);
    for (rotor_secret *s = live_head; s != NULL && !s->indexed; s = s->next) {
        failed |= index_add(s) != 0;
    }
    size_t copied = 0; /* msg[0..copied) is in out */
    for (size_t i = 0; !failed && nindexed > 0 && i + REDACT_KEY <= mlen;) {
        const redact_entry *e = match_at(msg, mlen, i);
        if (e == NULL) {
            i++;
            continue;
        }
        size_t end = i + e->len;
        rotor_buf_add(&out, msg + copied, i - copied);
        if (e->kind == FORM_B64) {
            while (out.len > 0 && is_b64(out.data[out.len - 1]) && out.data[out.len - 1] != '=') {
                out.len--;
            }
            while (end < mlen && is_b64(msg[end])) {
                end++;
            }
        }
        rotor_buf_adds(&out, "<redacted>");
        copied = i = end;
        changed = 1;
    }
    pthread_mutex_unlock(&live_lock);
    if (changed) {
        rotor_buf_add(&out, msg + copied, mlen - copied);
    }
    if (failed || out.failed) {
        rotor_buf_free(&out);
        lua_pushliteral(L, "<message withheld: out of memory while redacting>");
        return 1;
    }
    if (changed) {
        lua_pushlstring(L, out.data, out.len);
    } else {
        lua_pushvalue(L, 1);
    }
    rotor_buf_free(&out);
    return 1;
}

void rotor_secret_open(lua_State *L) {
    static const luaL_Reg meth[] = {{"reveal", l_secret_reveal}, {"len", l_secret_len},
                                    {"close", l_secret_close},   {"closed", l_secret_closed},
                                    {"equals", l_secret_equals}, {NULL, NULL}};
    static const luaL_Reg mt[] = {
        {"__tostring", l_secret_tostring}, {"__eq", l_secret_eq},   {"__gc", l_secret_gc},
        {"__close", l_secret_gc},          {"__len", l_secret_len}, {NULL, NULL}};
    static const luaL_Reg funcs[] = {{"secret", l_secret_new},
                                     {"is_secret", l_is_secret},
                                     {"hmac_sha256_hex", l_hmac_sha256_hex},
                                     {"random_hex", l_random_hex},
                                     {"redact", l_redact},
                                     {NULL, NULL}};
    if (luaL_newmetatable(L, ROTOR_SECRET_MT)) {
        luaL_setfuncs(L, mt, 0);
        luaL_newlib(L, meth);
        lua_setfield(L, -2, "__index");
        lua_pushliteral(L, "rotor.secret");
        lua_setfield(L, -2, "__metatable");
    }
    lua_pop(L, 1);
    luaL_setfuncs(L, funcs, 0);
}
