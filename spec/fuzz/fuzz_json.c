/* The empty-array scan of rotor.json (core.json_mark_arrays) over any text: no read outside the
 * text, the text itself back when it holds no "]", and a second scan changes nothing (a marker
 * array is no empty array, and its quotes are balanced, so strings stay where they were). */
#include "fuzz_common.h"

#define MARK "[\"rotor-fuzz-mark\"]"

static const char *mark(lua_State *L, const char *s, size_t n, size_t *olen) {
    lua_getfield(L, 1, "json_mark_arrays");
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
    const char *once = mark(L, text, size, &once_len);
    if (memchr(text, ']', size) == NULL && (once_len != size || memcmp(once, text, size) != 0)) {
        abort();
    }
    const char *twice = mark(L, once, once_len, &twice_len);
    if (twice_len != once_len || memcmp(once, twice, once_len) != 0) {
        abort();
    }
    free(text);
    fuzz_collect(L);
    return 0;
}
