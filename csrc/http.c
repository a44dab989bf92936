/* HTTP(S) transfers over libcurl's multi interface.
 *
 * A multi object owns a libcurl multi handle (its connection cache serves every transfer added
 * to it) and a share handle (DNS cache and TLS sessions). m:add(req) starts a transfer and
 * returns its id; m:poll(ms) drives every transfer and returns the results of those that
 * finished. No lua_State is kept by any callback: results are pushed by poll() itself.
 *
 * Every buffer that carried request or response bytes is zeroed before it is freed, since
 * request bodies, Authorization headers and some responses carry secrets. */
#include "rotor.h"

#include <ctype.h>
#include <curl/curl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define DEFAULT_MAX_BODY ((lua_Integer)1024 * 1024)
#define DEFAULT_MAX_HEADERS 100
#define MAX_HEADER_BYTES ((size_t)64 * 1024)
#define CA_CACHE_SECONDS 300L /* a changed bundle is read again within 5 minutes */
#define ONCE_MAX_IDLE 5L      /* s: a minting request reuses no connection idle longer */

enum fail_reason { FAIL_NONE = 0, FAIL_BODY_CAP, FAIL_HEADER_CAP, FAIL_INTERRUPTED };

/* a response header: its name (lower-cased) and value, trimmed, each NUL-terminated, at these
 * offsets of the transfer's header buffer (one zeroed allocation for them all) */
typedef struct hdr {
    size_t name, name_len, value, value_len;
} hdr;

/* What the last transfer left set on an easy handle: set = 0 after curl_easy_reset (or when
 * new); set = 1 when it carries the options every transfer sets the same way, with this CA
 * bundle and this proxy (each NULL when none was set; proxy "" for a direct transfer). Such a
 * handle is used again as it is for a transfer that wants the same bundle and proxy and nothing
 * else beyond what every transfer sets; any other is reset first. */
typedef struct easy_state {
    int set;
    char *cainfo, *proxy;
} easy_state;

typedef struct xfer {
    CURL *easy;
    easy_state st;     /* of easy */
    int rare;          /* it set an option beyond the shared ones: its handle is reset after it */
    int interruptible; /* abandoned when the rotor host gets SIGINT/SIGTERM (see abandon) */
    lua_Integer id;
    struct curl_slist *req_headers;
    rotor_buf req_body;
    char *userpwd;
    size_t userpwd_len;
    rotor_buf body;
    size_t max_body;
    hdr *headers;
    int nheaders, headers_cap, max_headers;
    size_t header_bytes;
    rotor_buf header_text; /* the names and values of headers[] */
    enum fail_reason fail;
    CURLcode result;
    int done;
    int prereq_calls;   /* how often libcurl was about to send it */
    int resend_refused; /* libcurl wanted to send it again: refused */
    char errbuf[CURL_ERROR_SIZE];
    struct xfer *next;
} xfer;

#define IDLE_MAX 64 /* easy handles kept for reuse: creating one per request costs CPU */
/* idle connections a multi handle keeps, unless core.multi(n) says otherwise. libcurl's own
 * default is four per easy handle added at that moment: a batch whose transfers thin out for a
 * while (its tasks waiting on the disk) had its HTTP/1.1 connections closed and made again, a
 * TLS handshake each (13 new connections per 400 mints at concurrency 16) */
#define MAXCONNECTS_DEFAULT 64

typedef struct multi {
    CURLM *multi;
    CURLSH *share;
    xfer *xfers;
    lua_Integer next_id;
    int running;
    CURL *idle[IDLE_MAX];
    easy_state idle_state[IDLE_MAX]; /* of idle[i] */
    int nidle;
} multi;

/* ---- global init, exactly once ---- */

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static CURLcode init_result = CURLE_OK;

static void do_global_init(void) {
    init_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

void rotor_global_init(void) {
    pthread_once(&init_once, do_global_init);
}

/* ---- loopback check ---- */

static int host_is_loopback(const char *h) {
    if (strcasecmp(h, "localhost") == 0 || strcmp(h, "[::1]") == 0 || strcmp(h, "::1") == 0) {
        return 1;
    }
    /* 127.0.0.0/8 in dotted-quad form */
    int a, b, c, d;
    char extra;
    if (sscanf(h, "%d.%d.%d.%d%c", &a, &b, &c, &d, &extra) == 4) {
        return a == 127 && b >= 0 && b < 256 && c >= 0 && c < 256 && d >= 0 && d < 256;
    }
    return 0;
}

/* The verdict on the last URL seen by this thread: a client sends most requests to the URLs it
 * sent the previous one to, and parsing a URL with curl_url costs about a twentieth of a whole
 * request's CPU. The verdict depends on the URL's text alone. A URL with a secret in it is not
 * rotor's (secrets go in headers and bodies); one with user information is not kept anyway. */
#define URL_MEMO_MAX 512
static __thread struct {
    char url[URL_MEMO_MAX];
    char scheme[16];
    int verdict; /* 0: empty */
} url_memo;

static int parse_loopback_url(const char *url, char *scheme, size_t scheme_len);

/* Returns 1 when url is https to a host that is not loopback, 2 when it is http or https to a
 * loopback host (never proxied), 0 when refused (http elsewhere, other schemes), -1 when
 * unparsable. The scheme is copied out for messages. */
int rotor_is_loopback_url(const char *url, char *scheme, size_t scheme_len) {
    if (url == NULL) {
        return -1;
    }
    size_t n = strlen(url);
    if (url_memo.verdict != 0 && n < URL_MEMO_MAX && memcmp(url_memo.url, url, n + 1) == 0) {
        snprintf(scheme, scheme_len, "%s", url_memo.scheme);
        return url_memo.verdict;
    }
    int verdict = parse_loopback_url(url, scheme, scheme_len);
    /* a URL with user information ('@') is never kept: it may carry a password */
    if (verdict != 0 && n < URL_MEMO_MAX && strlen(scheme) < sizeof url_memo.scheme &&
        strchr(url, '@') == NULL) {
        memcpy(url_memo.url, url, n + 1);
        snprintf(url_memo.scheme, sizeof url_memo.scheme, "%s", scheme);
        url_memo.verdict = verdict;
    }
    return verdict;
}

static int parse_loopback_url(const char *url, char *scheme, size_t scheme_len) {
    CURLU *u = curl_url();
    char *sch = NULL, *host = NULL;
    int ok = -1;
    if (u == NULL) {
        return -1;
    }
    if (curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_SCHEME, &sch, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK) {
        snprintf(scheme, scheme_len, "%s", sch);
        if (strcmp(sch, "https") == 0) {
            ok = host_is_loopback(host) ? 2 : 1;
        } else if (strcmp(sch, "http") == 0) {
            ok = host_is_loopback(host) ? 2 : 0;
        } else {
            ok = 0;
        }
    }
    curl_free(sch);
    curl_free(host);
    curl_url_cleanup(u);
    return ok;
}

/* core.url_policy(url) -> "https" (https to a host that is not loopback) | "loopback" (http or
 * https to a loopback host) | nil, why: the one home of the rule that plain http goes only to
 * loopback hosts, used by option checks in Lua and by every transfer (l_multi_add). */
static const char *url_refusal(int policy, const char *scheme);

static int l_url_policy(lua_State *L) {
    const char *url = luaL_checkstring(L, 1);
    char scheme[32] = "";
    int ok = rotor_is_loopback_url(url, scheme, sizeof(scheme));
    if (ok == 1 || ok == 2) {
        lua_pushstring(L, ok == 1 ? "https" : "loopback");
        return 1;
    }
    lua_pushnil(L);
    lua_pushstring(L, url_refusal(ok, scheme));
    return 2;
}

/* ---- transfer bookkeeping ---- */

static void zero_slist(struct curl_slist *l) {
    for (; l != NULL; l = l->next) {
        rotor_zero(l->data, strlen(l->data));
    }
}

static void free_headers(xfer *x) {
    rotor_buf_free(&x->header_text);
    free(x->headers);
    x->headers = NULL;
    x->nheaders = x->headers_cap = 0;
    x->header_bytes = 0;
}

static void easy_state_clear(easy_state *st) {
    free(st->cainfo);
    free(st->proxy);
    st->cainfo = st->proxy = NULL;
    st->set = 0;
}

static void xfer_free(xfer *x) {
    if (x->easy != NULL) {
        curl_easy_cleanup(x->easy);
    }
    easy_state_clear(&x->st);
    zero_slist(x->req_headers);
    curl_slist_free_all(x->req_headers);
    rotor_buf_free(&x->req_body);
    rotor_free_secure(x->userpwd, x->userpwd_len);
    rotor_buf_free(&x->body);
    free_headers(x);
    rotor_zero(x->errbuf, sizeof(x->errbuf));
    free(x);
}

/* Free a finished transfer, keeping its easy handle for the next one: as it is after a plain
 * transfer that went well, reset to libcurl's defaults after any other. */
static void xfer_release(multi *m, xfer *x) {
    if (x->easy != NULL && m->nidle < IDLE_MAX) {
        if (x->rare || x->result != CURLE_OK || !x->st.set) {
            curl_easy_reset(x->easy);
            easy_state_clear(&x->st);
        } else {
            /* nothing of this transfer stays pointed at: x and its buffers are freed below */
            curl_easy_setopt(x->easy, CURLOPT_PRIVATE, NULL);
            curl_easy_setopt(x->easy, CURLOPT_ERRORBUFFER, NULL);
            curl_easy_setopt(x->easy, CURLOPT_WRITEDATA, NULL);
            curl_easy_setopt(x->easy, CURLOPT_HEADERDATA, NULL);
            curl_easy_setopt(x->easy, CURLOPT_HTTPHEADER, NULL);
            curl_easy_setopt(x->easy, CURLOPT_POSTFIELDS, NULL);
            /* and back to a GET (setting POSTFIELDS made it a POST): a request without a body
             * on this handle (a DELETE) must not announce the previous POST's body size */
            curl_easy_setopt(x->easy, CURLOPT_HTTPGET, 1L);
        }
        m->idle[m->nidle] = x->easy;
        m->idle_state[m->nidle++] = x->st;
        x->st.cainfo = x->st.proxy = NULL;
        x->easy = NULL;
    }
    xfer_free(x);
}

static int same_string(const char *a, const char *b) {
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/* a copy of s (NULL stays NULL); 0, or -1 when out of memory */
static int copy_string(char **to, const char *s) {
    *to = NULL;
    if (s != NULL && (*to = strdup(s)) == NULL) {
        return -1;
    }
    return 0;
}

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *ud) {
    xfer *x = ud;
    size_t n = size * nmemb;
    if (x->body.len + n > x->max_body) {
        x->fail = FAIL_BODY_CAP;
        return 0; /* aborts with CURLE_WRITE_ERROR */
    }
    rotor_buf_add(&x->body, ptr, n);
    return x->body.failed ? 0 : n;
}

/* Append p[0..n), without leading blanks and trailing blanks or line ends, and a NUL to b;
 * returns its offset and sets *len (lower-cased when lower). */
static size_t add_trimmed(rotor_buf *b, const char *p, size_t n, int lower, size_t *len) {
    while (n > 0 && (p[0] == ' ' || p[0] == '\t')) {
        p++;
        n--;
    }
    while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t' || p[n - 1] == '\r' || p[n - 1] == '\n')) {
        n--;
    }
    size_t at = b->len;
    rotor_buf_add(b, p, n);
    rotor_buf_add(b, "", 1);
    if (lower && !b->failed) {
        for (char *c = b->data + at; *c; c++) {
            *c = (char)tolower((unsigned char)*c);
        }
    }
    *len = n;
    return at;
}

static size_t on_header(char *ptr, size_t size, size_t nmemb, void *ud) {
    xfer *x = ud;
    size_t n = size * nmemb;
    if (n >= 5 && strncmp(ptr, "HTTP/", 5) == 0) {
        free_headers(x); /* a new response (after 1xx): start over */
        return n;
    }
    const char *colon = memchr(ptr, ':', n);
    if (colon == NULL) {
        return n; /* the blank line, or junk */
    }
    x->header_bytes += n;
    if (x->nheaders >= x->max_headers || x->header_bytes > MAX_HEADER_BYTES) {
        x->fail = FAIL_HEADER_CAP;
        return 0;
    }
    if (x->nheaders == x->headers_cap) {
        int cap = x->headers_cap ? 2 * x->headers_cap : 16;
        if (cap > x->max_headers) {
            cap = x->max_headers;
        }
        hdr *nh = realloc(x->headers, (size_t)cap * sizeof(hdr));
        if (nh == NULL) {
            return 0;
        }
        x->headers = nh;
        x->headers_cap = cap;
    }
    hdr *h = &x->headers[x->nheaders];
    h->name = add_trimmed(&x->header_text, ptr, (size_t)(colon - ptr), 1, &h->name_len);
    h->value =
        add_trimmed(&x->header_text, colon + 1, n - (size_t)(colon - ptr) - 1, 0, &h->value_len);
    if (x->header_text.failed) {
        return 0;
    }
    x->nheaders++;
    return n;
}

/* libcurl calls this right before it sends the request, on a new or a reused connection. A
 * second call for the same transfer is a silent re-send: libcurl 7.88 retries a request whose
 * reused connection died before any reply came back (Curl_retry_request), although the server
 * may have processed it. For a request that must reach the server at most once, that second
 * send is refused: the transfer ends with CURLE_ABORTED_BY_CALLBACK and the outcome is unknown. */
static int on_prereq(void *ud, char *primary_ip, char *local_ip, int primary_port, int local_port) {
    xfer *x = ud;
    if (x->prereq_calls++ > 0) {
        x->resend_refused = 1;
        return CURL_PREREQFUNC_ABORT;
    }
    return CURL_PREREQFUNC_OK;
}

/* ---- building a request from a Lua table ---- */

#define MAX_SECONDS 86400                              /* timeouts: at most a day */
#define MAX_BODY_CAP ((lua_Integer)1024 * 1024 * 1024) /* max_body: at most 1 GiB */
#define MAX_HEADERS_CAP 10000

/* A duration in seconds, 0 < v <= MAX_SECONDS, as milliseconds; a clear error otherwise (a NaN,
 * a negative or a huge value would make the conversion to long undefined). */
static long opt_ms(lua_State *L, int t, const char *k, double def) {
    lua_getfield(L, t, k);
    double v = def;
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TNUMBER) {
            luaL_error(L, "request: %s must be a number of seconds", k);
        }
        v = lua_tonumber(L, -1);
    }
    lua_pop(L, 1);
    if (!(v > 0 && v <= MAX_SECONDS)) {
        luaL_error(L, "request: %s must be seconds, more than 0 and at most %d", k, MAX_SECONDS);
    }
    long ms = (long)(v * 1000.0);
    return ms > 0 ? ms : 1;
}

/* An integer option in [1, max], or def when absent; a clear error otherwise. */
static lua_Integer opt_count(lua_State *L, int t, const char *k, lua_Integer def, lua_Integer max) {
    lua_getfield(L, t, k);
    lua_Integer v = def;
    if (!lua_isnil(L, -1)) {
        int isint = 0;
        v = lua_tointegerx(L, -1, &isint);
        if (!isint || v < 1 || v > max) {
            luaL_error(L, "request: %s must be a whole number from 1 to %d", k, (int)max);
        }
    }
    lua_pop(L, 1);
    return v;
}

static const char *opt_string(lua_State *L, int t, const char *k) {
    lua_getfield(L, t, k);
    const char *s = lua_tostring(L, -1);
    lua_pop(L, 1); /* the table keeps the string alive */
    return s;
}

static int opt_bool(lua_State *L, int t, const char *k, int def) {
    lua_getfield(L, t, k);
    int v = lua_isnil(L, -1) ? def : lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

/* headers = { {name, value[, prefix]}, ... }; value a string or secret */
static int build_headers(lua_State *L, int t, xfer *x) {
    lua_getfield(L, t, "headers");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 1;
    }
    if (!lua_istable(L, -1)) {
        return luaL_error(L, "request: headers must be an array of {name, value} pairs");
    }
    int h = lua_gettop(L);
    lua_Integer n = (lua_Integer)lua_rawlen(L, h);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, h, i);
        if (!lua_istable(L, -1)) {
            return luaL_error(L, "request: headers[%d] must be a {name, value} pair", (int)i);
        }
        lua_rawgeti(L, -1, 1);
        lua_rawgeti(L, -2, 2);
        lua_getfield(L, -3, "prefix");
        size_t nlen, vlen, plen = 0;
        const char *name = lua_tolstring(L, -3, &nlen);
        const char *value = rotor_bytes(L, -2, &vlen, NULL);
        const char *prefix = lua_isnil(L, -1) ? NULL : lua_tolstring(L, -1, &plen);
        if (name == NULL || value == NULL || strpbrk(name, ":\r\n") != NULL ||
            memchr(value, '\r', vlen) != NULL || memchr(value, '\n', vlen) != NULL) {
            return luaL_error(L,
                              "request: headers[%d] needs a name and a string or secret value "
                              "without CR/LF",
                              (int)i);
        }
        rotor_buf line = {0};
        rotor_buf_add(&line, name, nlen);
        rotor_buf_add(&line, vlen + plen ? ": " : ";", vlen + plen ? 2 : 1);
        if (prefix != NULL) {
            rotor_buf_add(&line, prefix, plen);
        }
        rotor_buf_add(&line, value, vlen);
        struct curl_slist *nl = line.failed ? NULL : curl_slist_append(x->req_headers, line.data);
        rotor_buf_free(&line);
        if (nl == NULL) {
            return luaL_error(L, "request: out of memory");
        }
        x->req_headers = nl;
        lua_pop(L, 4);
    }
    lua_pop(L, 1);
    return 1;
}

static void push_error(lua_State *L, const char *kind, const char *msg) {
    lua_createtable(L, 0, 2);
    lua_pushstring(L, kind);
    lua_setfield(L, -2, "kind");
    lua_pushstring(L, msg);
    lua_setfield(L, -2, "message");
}

static multi *check_multi(lua_State *L) {
    multi *m = luaL_checkudata(L, 1, ROTOR_MULTI_MT);
    if (m->multi == NULL) {
        luaL_error(L, "rotor.multi: the handle was closed");
    }
    return m;
}

/* m:add(req) -> id, or nil, err when the request is refused before it starts */
/* A request as the caller's table gives it, checked: everything l_multi_add needs before it
 * touches a handle. The strings point into that table (on the Lua stack until the call returns);
 * libcurl copies the ones it keeps. */
typedef struct {
    const char *url, *method, *cainfo, *proxy, *user_agent, *aws_sigv4, *sslcert, *sslkey;
    const char *body, *userpwd;
    size_t body_len, userpwd_len;
    long timeout_ms, connect_ms, low_speed_s;
    lua_Integer max_body, max_headers;
    int direct, http2, once, fresh_connect, interruptible;
} req_spec;

/* The reason a URL is refused (policy <= 0 from rotor_is_loopback_url): one text for the option
 * checks (core.url_policy) and the transfers. */
static const char *url_refusal(int policy, const char *scheme) {
    if (policy < 0) {
        return "the URL cannot be parsed";
    }
    if (strcmp(scheme, "http") == 0) {
        return "plain http:// is accepted only for loopback hosts; use https://";
    }
    return "only https:// URLs are accepted";
}

/* Read and check the request table at idx into r: NULL, or the refusal (kind "config") of a URL
 * the policy does not allow. Raises on a malformed table (a programming error). */
static const char *parse_request(lua_State *L, int idx, req_spec *r) {
    memset(r, 0, sizeof(*r));
    r->url = opt_string(L, idx, "url");
    if (r->url == NULL) {
        luaL_error(L, "request: url is required");
    }
    char scheme[16] = "";
    int policy = rotor_is_loopback_url(r->url, scheme, sizeof(scheme));
    if (policy <= 0) {
        return url_refusal(policy, scheme);
    }
    /* a loopback target (every plain-http one is) never goes through a proxy: a proxy would
     * reach its own loopback, and see plain-http requests, credentials included, in clear */
    r->direct = policy == 2;
    r->timeout_ms = opt_ms(L, idx, "timeout", 30);
    r->connect_ms = opt_ms(L, idx, "connect_timeout", 10);
    r->low_speed_s = opt_ms(L, idx, "low_speed_time", 30) / 1000;
    r->max_body = opt_count(L, idx, "max_body", DEFAULT_MAX_BODY, MAX_BODY_CAP);
    r->max_headers = opt_count(L, idx, "max_headers", DEFAULT_MAX_HEADERS, MAX_HEADERS_CAP);
    r->method = opt_string(L, idx, "method");
    if (r->method == NULL) {
        r->method = "GET";
    }
    lua_getfield(L, idx, "body");
    if (!lua_isnil(L, -1)) {
        r->body = rotor_bytes(L, -1, &r->body_len, NULL);
        if (r->body == NULL) {
            luaL_error(L, "request: body must be a string or a rotor.secret");
        }
    }
    lua_pop(L, 1); /* the table still holds it */
    lua_getfield(L, idx, "userpwd");
    if (!lua_isnil(L, -1)) {
        r->userpwd = rotor_bytes(L, -1, &r->userpwd_len, NULL);
        if (r->userpwd == NULL) {
            luaL_error(L, "request: userpwd must be a string or a rotor.secret");
        }
    }
    lua_pop(L, 1);
    r->http2 = opt_bool(L, idx, "http2", 0);
    r->once = opt_bool(L, idx, "once", 0);
    r->fresh_connect = opt_bool(L, idx, "fresh_connect", 0);
    /* never a request sent at most once: abandoning it would leave its outcome unknown */
    r->interruptible = opt_bool(L, idx, "interruptible", 0) && !r->once;
    r->cainfo = opt_string(L, idx, "cainfo");
    r->proxy = opt_string(L, idx, "proxy");
    r->user_agent = opt_string(L, idx, "user_agent");
    r->aws_sigv4 = opt_string(L, idx, "aws_sigv4");
    r->sslcert = opt_string(L, idx, "sslcert");
    r->sslkey = opt_string(L, idx, "sslkey");
    return NULL;
}

/* Set up x's easy handle for r (the handle may be a reused one: every option a request may set
 * is set, or reset, here). 0, or -1 when out of memory. */
static int apply_request(multi *m, xfer *x, const req_spec *r) {
    CURL *e = x->easy;
    easy_state *st = &x->st;
    if (r->body != NULL) {
        rotor_buf_add(&x->req_body, r->body, r->body_len);
        if (x->req_body.failed) {
            return -1;
        }
    }
    x->max_body = (size_t)r->max_body;
    x->max_headers = (int)r->max_headers;
    /* the proxy this transfer wants: "" (none, whatever the environment says) for a loopback
     * target, else the request's (NULL: libcurl's default, the *_proxy variables) */
    const char *proxy = r->direct ? "" : r->proxy;
    if (st->set && !(same_string(st->cainfo, r->cainfo) && same_string(st->proxy, proxy))) {
        curl_easy_reset(e);
        easy_state_clear(st);
    }
    if (!st->set) {
        /* the options every transfer sets the same way, the CA bundle and the proxy */
        curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_SHARE, m->share);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
        curl_easy_setopt(e, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, NULL);
        if (r->cainfo != NULL) {
            curl_easy_setopt(e, CURLOPT_CAINFO, r->cainfo);
            /* that bundle alone: without the CA directory Debian's libcurl adds by default,
             * libcurl keeps the store it builds from the bundle (per multi handle, for
             * CA_CACHE_SECONDS) instead of reading and parsing the file again for every new
             * connection */
            curl_easy_setopt(e, CURLOPT_CAPATH, NULL);
            curl_easy_setopt(e, CURLOPT_CA_CACHE_TIMEOUT, CA_CACHE_SECONDS);
        }
        if (proxy != NULL) {
            curl_easy_setopt(e, CURLOPT_PROXY, proxy); /* "" also overrides *_proxy variables */
        }
        if (copy_string(&st->cainfo, r->cainfo) != 0 || copy_string(&st->proxy, proxy) != 0) {
            return -1;
        }
        st->set = 1;
    }
    curl_easy_setopt(e, CURLOPT_URL, r->url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, x);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, r->timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, r->connect_ms);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, r->low_speed_s > 0 ? r->low_speed_s : 1L);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION,
                     r->http2 ? (long)CURL_HTTP_VERSION_2TLS : (long)CURL_HTTP_VERSION_1_1);
    /* HTTP/2: wait for a connection that may multiplex rather than open one per transfer */
    curl_easy_setopt(e, CURLOPT_PIPEWAIT, r->http2 ? 1L : 0L);
    /* the options below leave the handle to be reset after the transfer */
    x->interruptible = r->interruptible;
    x->rare = r->sslcert != NULL || r->sslkey != NULL || r->once || r->fresh_connect ||
              r->aws_sigv4 != NULL || r->userpwd != NULL ||
              (strcmp(r->method, "GET") != 0 && strcmp(r->method, "POST") != 0);
    /* a client certificate and its key (PEM files), for servers that require one */
    if (r->sslcert != NULL) {
        curl_easy_setopt(e, CURLOPT_SSLCERT, r->sslcert);
    }
    if (r->sslkey != NULL) {
        curl_easy_setopt(e, CURLOPT_SSLKEY, r->sslkey);
    }
    curl_easy_setopt(e, CURLOPT_USERAGENT,
                     r->user_agent != NULL ? r->user_agent : "rotor/" ROTOR_VERSION);
    if (r->once) {
        /* a minting request on any connection (warm ones too): sent at most once */
        curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, on_prereq);
        curl_easy_setopt(e, CURLOPT_PREREQDATA, x);
        /* and only on a connection that was busy a moment ago: one idle longer may be the one a
         * server's keep-alive timeout closes as the request goes out (an ambiguous outcome) */
        curl_easy_setopt(e, CURLOPT_MAXAGE_CONN, ONCE_MAX_IDLE);
    }
    if (r->fresh_connect) {
        /* a minting request: a new connection, never reused, so libcurl cannot re-send it on a
         * keep-alive connection that turns out dead */
        curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
        curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
    }
    if (r->aws_sigv4 != NULL) {
        curl_easy_setopt(e, CURLOPT_AWS_SIGV4, r->aws_sigv4);
    }
    if (r->userpwd != NULL) {
        x->userpwd = malloc(r->userpwd_len + 1);
        if (x->userpwd == NULL) {
            return -1;
        }
        memcpy(x->userpwd, r->userpwd, r->userpwd_len);
        x->userpwd[r->userpwd_len] = '\0';
        x->userpwd_len = r->userpwd_len + 1;
        curl_easy_setopt(e, CURLOPT_USERPWD, x->userpwd);
    }
    if (strcmp(r->method, "GET") == 0) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else if (strcmp(r->method, "HEAD") == 0) {
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    } else {
        if (strcmp(r->method, "POST") != 0) {
            curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, r->method);
        }
        if (r->body != NULL || strcmp(r->method, "POST") == 0) {
            curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)x->req_body.len);
            curl_easy_setopt(e, CURLOPT_POSTFIELDS, x->req_body.data ? x->req_body.data : "");
        }
    }
    /* No Expect: 100-continue round trip. Not for SigV4: libcurl 7.88 signs the empty Expect
     * entry as a header it then never sends, so the signature would not match (bodies sent
     * with POSTFIELDS never trigger Expect anyway). */
    if (r->aws_sigv4 == NULL) {
        struct curl_slist *nl = curl_slist_append(x->req_headers, "Expect:");
        if (nl == NULL) {
            return -1;
        }
        x->req_headers = nl;
    }
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->req_headers);
    return 0;
}

/* m:add(request) -> id | nil, err (kind "config": a URL the policy refuses). The request table:
 * url, method, headers, body, timeout, connect_timeout, low_speed_time, max_body, max_headers,
 * http2, cainfo, sslcert, sslkey, proxy, user_agent, once, fresh_connect, aws_sigv4, userpwd
 * (doc/INTERNALS.md). */
static int l_multi_add(lua_State *L) {
    multi *m = check_multi(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    req_spec r;
    const char *refused = parse_request(L, 2, &r);
    if (refused != NULL) {
        lua_pushnil(L);
        push_error(L, "config", refused);
        return 2;
    }
    xfer *x = calloc(1, sizeof(*x));
    if (x == NULL) {
        return luaL_error(L, "request: out of memory");
    }
    if (m->nidle > 0) {
        x->easy = m->idle[--m->nidle];
        x->st = m->idle_state[m->nidle];
    } else {
        x->easy = curl_easy_init();
    }
    if (x->easy == NULL) {
        free(x);
        return luaL_error(L, "request: curl_easy_init failed");
    }
    /* link first so a raised error below cannot leak it: m:close() frees it */
    x->next = m->xfers;
    m->xfers = x;
    x->done = 1; /* not yet in the multi */
    build_headers(L, 2, x);
    if (apply_request(m, x, &r) != 0) {
        return luaL_error(L, "request: out of memory");
    }
    x->id = ++m->next_id;
    CURLMcode mc = curl_multi_add_handle(m->multi, x->easy);
    if (mc != CURLM_OK) {
        return luaL_error(L, "request: curl_multi_add_handle: %s", curl_multi_strerror(mc));
    }
    x->done = 0;
    lua_pushinteger(L, x->id);
    return 1;
}

static const char *error_kind(CURLcode rc) {
    switch (rc) {
    case CURLE_OPERATION_TIMEDOUT:
        return "timeout";
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_USE_SSL_FAILED:
        return "tls";
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
        return "config";
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_BAD_CONTENT_ENCODING:
        return "protocol";
    default:
        return "network";
    }
}

/* Push the result table of a finished transfer. */
static void push_result(lua_State *L, xfer *x) {
    CURL *e = x->easy;
    /* id, time, sent, status, headers, body, and the two fields rotor.http adds (attempts,
     * waited): sized once */
    lua_createtable(L, 0, 8);
    lua_pushinteger(L, x->id);
    lua_setfield(L, -2, "id");
    long status = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    curl_off_t pretransfer = 0;
    long reqsize = 0;
    curl_easy_getinfo(e, CURLINFO_PRETRANSFER_TIME_T, &pretransfer);
    curl_easy_getinfo(e, CURLINFO_REQUEST_SIZE, &reqsize);
    curl_off_t total = 0;
    curl_easy_getinfo(e, CURLINFO_TOTAL_TIME_T, &total);
    lua_pushnumber(L, (lua_Number)total / 1e6);
    lua_setfield(L, -2, "time");
    /* sent = false only when we know no byte of the request went out */
    lua_pushboolean(L, pretransfer > 0 || reqsize > 0 || status > 0 || x->prereq_calls > 0);
    lua_setfield(L, -2, "sent");
    if (x->result == CURLE_OK) {
        lua_pushinteger(L, status);
        lua_setfield(L, -2, "status");
    } else {
        char msg[CURL_ERROR_SIZE + 96];
        const char *kind = error_kind(x->result);
        if (x->resend_refused) {
            kind = "network";
            snprintf(msg, sizeof(msg),
                     "the connection closed before any reply; libcurl's attempt to send the "
                     "request again was refused (it is sent at most once)");
        } else if (x->fail == FAIL_BODY_CAP) {
            kind = "protocol";
            snprintf(msg, sizeof(msg), "the response body exceeds the limit of %zu bytes",
                     x->max_body);
        } else if (x->fail == FAIL_INTERRUPTED) {
            kind = "interrupted";
            snprintf(msg, sizeof(msg),
                     "stopped on a signal while the request was in flight (it was abandoned)");
        } else if (x->fail == FAIL_HEADER_CAP) {
            kind = "protocol";
            snprintf(msg, sizeof(msg), "the response has more than %d headers or %zu bytes of them",
                     x->max_headers, MAX_HEADER_BYTES);
        } else {
            snprintf(msg, sizeof(msg), "%s",
                     x->errbuf[0] ? x->errbuf : curl_easy_strerror(x->result));
        }
        push_error(L, kind, msg);
        lua_pushinteger(L, (lua_Integer)x->result);
        lua_setfield(L, -2, "curl_code");
        lua_setfield(L, -2, "error");
        if (status > 0) {
            lua_pushinteger(L, status);
            lua_setfield(L, -2, "status");
        }
    }
    lua_createtable(L, 0, x->nheaders);
    for (int i = 0; i < x->nheaders; i++) {
        const hdr *h = &x->headers[i];
        const char *text = x->header_text.data;
        lua_pushlstring(L, text + h->name, h->name_len);
        lua_pushvalue(L, -1);
        if (lua_rawget(L, -3) == LUA_TNIL) {
            lua_pop(L, 1);
            lua_pushlstring(L, text + h->value, h->value_len);
        } else {
            lua_pushliteral(L, ", ");
            lua_pushlstring(L, text + h->value, h->value_len);
            lua_concat(L, 3);
        }
        lua_rawset(L, -3);
    }
    lua_setfield(L, -2, "headers");
    lua_pushlstring(L, x->body.data ? x->body.data : "", x->body.len);
    lua_setfield(L, -2, "body");
}

static void unlink_xfer(multi *m, xfer *x) {
    for (xfer **p = &m->xfers; *p != NULL; p = &(*p)->next) {
        if (*p == x) {
            *p = x->next;
            return;
        }
    }
}

/* Collect finished transfers into the table at the top of the stack. */
static int collect(lua_State *L, multi *m, int n) {
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(m->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE) {
            continue;
        }
        xfer *x = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
        x->result = msg->data.result;
        curl_multi_remove_handle(m->multi, x->easy);
        x->done = 1;
        push_result(L, x);
        lua_rawseti(L, -2, ++n);
        unlink_xfer(m, x);
        xfer_release(m, x);
    }
    return n;
}

/* Once the rotor host got SIGINT/SIGTERM, end every unfinished transfer marked interruptible
 * (requests whose loss changes nothing at the provider: reads, token requests, a long poll of a
 * queue), each with a result of kind "interrupted", into the table at the top of the stack; the
 * others (a mint, a deletion) run to their end. Returns the new count. */
static int abandon(lua_State *L, multi *m, int n) {
    if (!rotor_is_interrupted()) {
        return n;
    }
    for (xfer **p = &m->xfers; *p != NULL;) {
        xfer *x = *p;
        if (x->done || !x->interruptible) {
            p = &x->next;
            continue;
        }
        curl_multi_remove_handle(m->multi, x->easy);
        x->done = 1;
        x->fail = FAIL_INTERRUPTED;
        x->result = CURLE_ABORTED_BY_CALLBACK;
        push_result(L, x);
        lua_rawseti(L, -2, ++n);
        *p = x->next;
        xfer_release(m, x);
    }
    return n;
}

/* m:poll(timeout_ms[, fd]) -> array of results (possibly empty); the wait also ends when fd
 * (e.g. a durable job's eventfd) becomes readable, or on a signal */
static int l_multi_poll(lua_State *L) {
    multi *m = check_multi(L);
    lua_Integer timeout = luaL_optinteger(L, 2, 0);
    lua_Integer fd = luaL_optinteger(L, 3, -1);
    struct curl_waitfd extra = {.fd = (curl_socket_t)fd, .events = CURL_WAIT_POLLIN, .revents = 0};
    if (timeout < 0) {
        timeout = 0;
    }
    lua_newtable(L);
    int n = 0;
    CURLMcode mc = curl_multi_perform(m->multi, &m->running);
    if (mc != CURLM_OK) {
        return luaL_error(L, "curl_multi_perform: %s", curl_multi_strerror(mc));
    }
    n = abandon(L, m, collect(L, m, n));
    if (n == 0 && timeout > 0) {
        mc =
            curl_multi_poll(m->multi, fd >= 0 ? &extra : NULL, fd >= 0 ? 1 : 0, (int)timeout, NULL);
        if (mc != CURLM_OK) {
            return luaL_error(L, "curl_multi_poll: %s", curl_multi_strerror(mc));
        }
        mc = curl_multi_perform(m->multi, &m->running);
        if (mc != CURLM_OK) {
            return luaL_error(L, "curl_multi_perform: %s", curl_multi_strerror(mc));
        }
        abandon(L, m, collect(L, m, n));
    }
    return 1;
}

static int l_multi_pending(lua_State *L) {
    multi *m = check_multi(L);
    int count = 0;
    for (xfer *x = m->xfers; x != NULL; x = x->next) {
        count += !x->done;
    }
    lua_pushinteger(L, count);
    return 1;
}

/* the one close routine: from :close(), __gc and __close */
static void multi_close(multi *m) {
    if (m->multi == NULL) {
        return;
    }
    while (m->xfers != NULL) {
        xfer *x = m->xfers;
        m->xfers = x->next;
        if (!x->done) {
            curl_multi_remove_handle(m->multi, x->easy);
        }
        xfer_free(x);
    }
    while (m->nidle > 0) {
        curl_easy_cleanup(m->idle[--m->nidle]);
        easy_state_clear(&m->idle_state[m->nidle]);
    }
    curl_multi_cleanup(m->multi);
    m->multi = NULL;
    if (m->share != NULL) {
        curl_share_cleanup(m->share);
        m->share = NULL;
    }
}

static int l_multi_close(lua_State *L) {
    multi_close(luaL_checkudata(L, 1, ROTOR_MULTI_MT));
    return 0;
}

static int l_multi_new(lua_State *L) {
    rotor_global_init();
    if (init_result != CURLE_OK) {
        return luaL_error(L, "curl_global_init failed: %s", curl_easy_strerror(init_result));
    }
    lua_Integer maxconn = luaL_optinteger(L, 1, 0);
    multi *m = lua_newuserdata(L, sizeof(*m));
    memset(m, 0, sizeof(*m));
    luaL_setmetatable(L, ROTOR_MULTI_MT);
    m->multi = curl_multi_init();
    m->share = curl_share_init();
    if (m->multi == NULL || m->share == NULL) {
        multi_close(m);
        return luaL_error(L, "rotor.multi: libcurl initialisation failed");
    }
    curl_share_setopt(m->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
    curl_share_setopt(m->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
    curl_multi_setopt(m->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
    curl_multi_setopt(m->multi, CURLMOPT_MAXCONNECTS,
                      maxconn > 0 ? (long)maxconn : (long)MAXCONNECTS_DEFAULT);
    return 1;
}

void rotor_http_open(lua_State *L) {
    static const luaL_Reg meth[] = {{"add", l_multi_add},
                                    {"poll", l_multi_poll},
                                    {"pending", l_multi_pending},
                                    {"close", l_multi_close},
                                    {NULL, NULL}};
    if (luaL_newmetatable(L, ROTOR_MULTI_MT)) {
        lua_pushcfunction(L, l_multi_close);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, l_multi_close);
        lua_setfield(L, -2, "__close");
        luaL_newlib(L, meth);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    lua_pushcfunction(L, l_multi_new);
    lua_setfield(L, -2, "multi");
    lua_pushcfunction(L, l_url_policy);
    lua_setfield(L, -2, "url_policy");
    rotor_global_init();
    /* curl_version_info, not curl_version(): the latter initialises LDAP/SASL, which leak */
    lua_pushstring(L, curl_version_info(CURLVERSION_NOW)->version);
    lua_setfield(L, -2, "curl_version");
}
