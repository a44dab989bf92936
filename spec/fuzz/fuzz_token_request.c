/* Token-request building (core.token_request): any id, secret, scope, grant type and extra
 * fields in any style. Errors are clean Lua errors; a form body decodes back to exactly the
 * fields given; a Basic header decodes to form(id):form(secret). */
#include "fuzz_common.h"

#include <openssl/evp.h>

/* the next '\0'-terminated piece of the input */
static const char *piece(const uint8_t **p, const uint8_t *end, size_t *n) {
    const uint8_t *s = *p;
    const uint8_t *z = s < end ? memchr(s, 0, (size_t)(end - s)) : NULL;
    *n = z ? (size_t)(z - s) : (size_t)(end - s);
    *p = z ? z + 1 : end;
    return (const char *)s;
}

/* the value of field name in a form body, decoded; 1 when found exactly once */
static int form_field(const char *body, size_t blen, const char *name, char *out, long *olen) {
    int found = 0;
    size_t i = 0;
    while (i < blen) {
        const char *amp = memchr(body + i, '&', blen - i);
        size_t e = amp ? (size_t)(amp - body) : blen;
        const char *eq = memchr(body + i, '=', e - i);
        if (eq == NULL) {
            abort(); /* every pair has a '=' */
        }
        char key[256];
        size_t raw = (size_t)(eq - (body + i));
        long kl = raw < sizeof(key) ? form_decode(body + i, raw, key) : -1;
        if (kl == (long)strlen(name) && memcmp(key, name, (size_t)kl) == 0) {
            *olen = form_decode(eq + 1, e - (size_t)(eq + 1 - body), out);
            found++;
        }
        i = e + 1;
    }
    return found == 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char *styles[] = {"basic", "form", "multipart", "json", "digest"};
    if (size < 2) {
        return 0;
    }
    const uint8_t *p = data + 2, *end = data + size;
    size_t idn, secn, scopen, grantn, ekn, evn;
    const char *id = piece(&p, end, &idn);
    const char *sec = piece(&p, end, &secn);
    const char *scope = piece(&p, end, &scopen);
    const char *grant = piece(&p, end, &grantn);
    const char *ek = piece(&p, end, &ekn);
    const char *ev = piece(&p, end, &evn);
    const char *style = styles[data[0] % 5];
    lua_State *L = fuzz_lua();
    lua_getfield(L, 1, "token_request");
    lua_createtable(L, 0, 8);
    lua_pushliteral(L, "https://fuzz.example/token");
    lua_setfield(L, -2, "url");
    lua_pushstring(L, style);
    lua_setfield(L, -2, "style");
    lua_pushlstring(L, id, idn);
    lua_setfield(L, -2, "client_id");
    if (data[1] & 1) {
        rotor_secret_push(L, sec, secn);
    } else {
        lua_pushlstring(L, sec, secn);
    }
    lua_setfield(L, -2, "client_secret");
    if (data[1] & 2) {
        lua_pushlstring(L, scope, scopen);
        lua_setfield(L, -2, "scope");
    }
    if (data[1] & 4) {
        lua_pushlstring(L, grant, grantn);
        lua_setfield(L, -2, "grant_type");
    }
    if (data[1] & 8) {
        lua_createtable(L, 1, 0);
        lua_createtable(L, 2, 0);
        lua_pushlstring(L, ek, ekn);
        lua_rawseti(L, -2, 1);
        if (data[1] & 16) {
            lua_pushboolean(L, 1); /* a bad value: must be a clean error */
        } else {
            lua_pushlstring(L, ev, evn);
        }
        lua_rawseti(L, -2, 2);
        lua_rawseti(L, -2, 1);
        lua_setfield(L, -2, "extra");
    }
    int bad_style = data[0] % 5 >= 3, bad_extra = (data[1] & 24) == 24;
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        if (!bad_style && !bad_extra) {
            abort(); /* a well-formed request must build */
        }
        fuzz_collect(L);
        return 0;
    }
    if (bad_style || bad_extra) {
        abort();
    }
    lua_getfield(L, -1, "body");
    size_t blen;
    int is_secret = 0;
    const char *body = rotor_bytes(L, -1, &blen, &is_secret);
    if (body == NULL || !is_secret) {
        abort();
    }
    if (strcmp(style, "form") == 0 && !(data[1] & 8)) {
        char *out = malloc(blen + 1);
        long olen = -1;
        if (!form_field(body, blen, "client_secret", out, &olen) || olen != (long)secn ||
            memcmp(out, sec, secn) != 0) {
            abort();
        }
        if (!form_field(body, blen, "client_id", out, &olen) || olen != (long)idn ||
            memcmp(out, id, idn) != 0) {
            abort();
        }
        free(out);
    }
    fuzz_collect(L);
    return 0;
}
