/* The token cache (core.token_put/get/invalidate/clear): any sequence of operations on a few
 * keys, with any lifetime (NaN, infinities, negatives, huge). A kept lifetime is always within
 * [ROTOR_TTL_MIN, ROTOR_TTL_MAX]; a token read back is one that was put under that key, with at
 * most its lifetime left. */
#include "fuzz_common.h"

static double take_double(const uint8_t **p, const uint8_t *end) {
    double d = 0;
    if (end - *p >= (long)sizeof(d)) {
        memcpy(&d, *p, sizeof(d));
        *p += sizeof(d);
    }
    return d;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char *ops[] = {"token_put", "token_get", "token_invalidate", "token_clear"};
    lua_State *L = fuzz_lua();
    const uint8_t *p = data, *end = data + size;
    lua_getfield(L, 1, "token_clear");
    lua_call(L, 0, 0);
    while (end - p >= 2) {
        int op = p[0] % 5; /* 4: invalidate only if it still holds a given token */
        char key[2] = {(char)('a' + p[1] % 4), 0};
        p += 2;
        lua_getfield(L, 1, ops[op == 4 ? 2 : op]);
        lua_pushstring(L, key);
        int nargs = 1;
        if (op == 0 || op == 4) {
            size_t tl = end > p ? (size_t)(*p++ % 32) : 0;
            if ((size_t)(end - p) < tl) {
                tl = (size_t)(end - p);
            }
            /* every token starts with its key, so a read can be checked */
            char tok[40];
            tok[0] = key[0];
            memcpy(tok + 1, p, tl);
            p += tl;
            lua_pushlstring(L, tok, tl + 1);
            nargs = 2;
            if (op == 0) {
                lua_pushnumber(L, take_double(&p, end));
                nargs = 3;
            }
        } else if (op == 3) {
            lua_pop(L, 1);
            nargs = 0;
        }
        lua_call(L, nargs, 3);
        if (op == 0) {
            double kept = lua_tonumber(L, -3);
            if (!(kept >= ROTOR_TTL_MIN && kept <= ROTOR_TTL_MAX)) {
                abort();
            }
        } else if (op == 1 && !lua_isnil(L, -3)) {
            size_t n;
            const char *t = rotor_bytes(L, -3, &n, NULL);
            double left = lua_tonumber(L, -2), ttl = lua_tonumber(L, -1);
            if (t == NULL || n < 1 || t[0] != key[0] || !(left <= ttl) || !(ttl <= ROTOR_TTL_MAX)) {
                abort();
            }
        }
        lua_pop(L, 3);
    }
    fuzz_collect(L);
    return 0;
}
