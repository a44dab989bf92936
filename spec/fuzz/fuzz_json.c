/* The empty-array scan of rotor.json (core.json_mark_arrays) over any text: no read outside the
 * text, the text itself back when it holds no "]", and a second scan changes nothing (a marker
 * array is no empty array, and its quotes are balanced, so strings stay where they were).
 * The finishing pass after an encode (core.json_finish) over any text: no read outside it, never
 * longer, and the text itself back when it holds neither a backslash nor the marker.
 * The journal split (core.json_journal_split) over any text: no read outside it, and when it
 * splits, the entries are the text's own bytes after its opening, the rest no longer than what
 * follows them, and skipping the entries one by one (core.json_journal_skip) steps through them,
 * each step ending at an entry's first byte or at the end, after exactly as many as it counted.
 * (That cjson reads the entries as the same is spec/journal_spec.lua's differential check.) */
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
    lua_call(L, 1, 3);
    if (lua_isstring(L, -3)) {
        size_t elen, rlen;
        const char *entries = lua_tolstring(L, -3, &elen);
        lua_Integer count = lua_tointeger(L, -2);
        const char *rest = lua_tolstring(L, -1, &rlen);
        static const char open[] = "{\"journal\":[";
        if (rest == NULL || rest[0] != '{' || size < sizeof open - 1 + elen ||
            memcmp(text + sizeof open - 1, entries, elen) != 0 ||
            elen + sizeof open - 1 + rlen > size || (count == 0) != (elen == 0)) {
            abort();
        }
        lua_Integer at = 1;
        for (lua_Integer k = 0; k < count; k++) {
            lua_getfield(L, 1, "json_journal_skip");
            lua_pushvalue(L, -4);
            lua_pushinteger(L, at);
            lua_pushinteger(L, 1);
            lua_call(L, 3, 1);
            lua_Integer next = lua_tointeger(L, -1);
            lua_pop(L, 1);
            if (next <= at || next > (lua_Integer)elen + 1 ||
                (next <= (lua_Integer)elen && entries[next - 1] != '{')) {
                abort();
            }
            at = next;
        }
        if (at != (lua_Integer)elen + 1) {
            abort();
        }
    }
    lua_settop(L, 1);
    free(text);
    fuzz_collect(L);
    return 0;
}
