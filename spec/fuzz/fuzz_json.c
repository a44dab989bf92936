/* The empty-array scan of rotor.json (core.json_mark_arrays) over any text: no read outside the
 * text, the text itself back when it holds no "]", and a second scan changes nothing (a marker
 * array is no empty array, and its quotes are balanced, so strings stay where they were).
 * The finishing pass after an encode (core.json_finish) over any text: no read outside it, never
 * longer, and the text itself back when it holds neither a backslash nor the marker.
 * The journal split (core.json_journal_split) over any text: no read outside it, and when it
 * splits, each part is an object's text, the parts and the rest are the text's own bytes. (That
 * cjson reads the parts as the same entries is spec/journal_spec.lua's differential check.) */
#include "fuzz_common.h"

#define MARK "[\"rotor-fuzz-mark\"]"

/* core[fn](s[0..n), MARK): its text and length */
static const char *call(lua_State *L, const char *fn, const char *s, size_t n, size_t *olen) {
    lua_getfield(L, 1, fn);
    lua_pushlstring(L, s, n);
    lua_pushliteral(L, MARK);
    lua_call(L, 2, 1);
    return lua_tolstring(L, -1, olen);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lua_State *L = fuzz_lua();
    /* a copy of exactly `size` bytes, so that ASan sees a read past the end */
    char *text = malloc(size ? size : 1);
    if (text == NULL) {
        return 0;
    }
    memcpy(text, data, size);
    size_t once_len, twice_len;
    const char *once = call(L, "json_mark_arrays", text, size, &once_len);
    if (memchr(text, ']', size) == NULL && (once_len != size || memcmp(once, text, size) != 0)) {
        abort();
    }
    const char *twice = call(L, "json_mark_arrays", once, once_len, &twice_len);
    if (twice_len != once_len || memcmp(once, twice, once_len) != 0) {
        abort();
    }
    size_t fin_len;
    const char *fin = call(L, "json_finish", text, size, &fin_len);
    if (fin_len > size ||
        (memchr(text, '\\', size) == NULL && memmem(text, size, MARK, sizeof(MARK) - 1) == NULL &&
         (fin_len != size || memcmp(fin, text, size) != 0))) {
        abort();
    }
    lua_getfield(L, 1, "json_journal_split");
    lua_pushlstring(L, text, size);
    lua_call(L, 1, 2);
    if (lua_istable(L, -2)) {
        size_t total = 0, rlen;
        const char *rest = lua_tolstring(L, -1, &rlen);
        for (lua_Integer i = 1; i <= (lua_Integer)lua_rawlen(L, -2); i++) {
            size_t plen;
            lua_rawgeti(L, -2, i);
            const char *part = lua_tolstring(L, -1, &plen);
            if (part == NULL || plen < 2 || part[0] != '{' || part[plen - 1] != '}' ||
                memmem(text, size, part, plen) == NULL) {
                abort();
            }
            total += plen;
            lua_pop(L, 1);
        }
        if (rest == NULL || rest[0] != '{' || total + rlen > size) {
            abort();
        }
    }
    lua_pop(L, 2);
    free(text);
    fuzz_collect(L);
    return 0;
}
