/* What rotor.json does around lua-cjson, in C:
 *
 *   core.json_prepare(v, leaf, array_mt, mark[, flat]) -> v2, marked
 *     v2 is v with each userdata u replaced by leaf(u) (when leaf is a function) and each empty
 *     table whose metatable is array_mt replaced by the one-element array {mark} (when array_mt is
 *     a table). Tables are copied only on the paths to a replacement (a copy is a plain table
 *     holding the same pairs); v itself is never changed. marked: a marker array went in.
 *     flat (optional): a table inside v whose elements are not walked (an array of flat objects,
 *     such as a record's journal: hundreds of entries that hold only strings).
 *   core.json_normalise(v, array_mt, mark) -> v | nil, message
 *     In place: floats with an integer value become integers (Lua 5.3+), and each one-element
 *     array holding exactly mark becomes an empty table with the metatable array_mt. A number
 *     that is not finite (cjson reads NaN, Infinity, and 1e999 as inf) makes it nil and a
 *     message: JSON cannot write such a number back, so nothing rotor decodes holds one.
 *   core.json_mark_arrays(text, marker_json) -> text2
 *     Each empty array of the text ("[" and "]" with only JSON whitespace between, outside
 *     strings) replaced by marker_json, before cjson decodes it.
 *   core.json_finish(text[, marker_json]) -> text2
 *     After cjson 2.1.0 encoded: each "\/" made "/" (it escapes every "/"), and each marker_json
 *     (when given) made "[]". text itself when there is neither.
 *   core.json_journal_split(text) -> entries, count, rest | nil
 *   core.json_journal_skip(entries, at, k) -> at2
 *     A record's journal split off its text without decoding it (see below).
 *
 * The walks stop descending below ROTOR_JSON_DEPTH levels (cjson refuses deeper values itself).
 * In Lua, these walks and scans cost several times cjson's own work on a store record, which is
 * encoded on every write and decoded on every read. */
#include "rotor.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#define ROTOR_JSON_DEPTH 64

typedef struct {
    int leaf;     /* stack index of the leaf function, or 0 */
    int array_mt; /* stack index of the array metatable, or 0 */
    int mark;     /* stack index of the marker string */
    int flat;     /* stack index of the table whose elements are not walked, or 0 */
    int marked;
} prep_ctx;

/* the empty table at idx carries array_mt */
static int is_empty_marked_array(lua_State *L, int idx, int array_mt) {
    if (!lua_getmetatable(L, idx)) {
        return 0;
    }
    int same = lua_rawequal(L, -1, array_mt);
    lua_pop(L, 1);
    if (!same) {
        return 0;
    }
    lua_pushnil(L);
    if (lua_next(L, idx)) {
        lua_pop(L, 2);
        return 0;
    }
    return 1;
}

/* Push the prepared form of the value at idx; returns whether it differs from that value. */
static int prepare(lua_State *L, prep_ctx *c, int idx, int depth) {
    int t = lua_type(L, idx);
    luaL_checkstack(L, 8, "json_prepare: too deep");
    if (t == LUA_TUSERDATA && c->leaf) {
        lua_pushvalue(L, c->leaf);
        lua_pushvalue(L, idx);
        lua_call(L, 1, 1);
        return !lua_rawequal(L, -1, idx);
    }
    if (t != LUA_TTABLE || depth > ROTOR_JSON_DEPTH) {
        lua_pushvalue(L, idx);
        return 0;
    }
    if (c->array_mt && is_empty_marked_array(L, idx, c->array_mt)) {
        lua_createtable(L, 1, 0);
        lua_pushvalue(L, c->mark);
        lua_rawseti(L, -2, 1);
        c->marked = 1;
        return 1;
    }
    if (c->flat && lua_rawequal(L, idx, c->flat)) {
        lua_pushvalue(L, idx);
        return 0;
    }
    int copy = 0; /* stack index of the copy, once made */
    lua_pushnil(L);
    int key = lua_gettop(L);
    while (lua_next(L, idx)) {
        int vt = lua_type(L, -1);
        /* strings, numbers and booleans (most of a record) are kept as they are */
        if (vt == LUA_TTABLE || (vt == LUA_TUSERDATA && c->leaf)) {
            int changed = prepare(L, c, lua_gettop(L), depth + 1);
            if (changed) {
                if (!copy) {
                    /* the copy goes below the traversal's key: made once, with every pair */
                    lua_newtable(L);
                    lua_pushnil(L);
                    while (lua_next(L, idx)) {
                        lua_pushvalue(L, -2);
                        lua_insert(L, -2);
                        lua_rawset(L, -4);
                    }
                    lua_insert(L, key);
                    copy = key;
                    key++;
                }
                /* stack: ... copy key value new */
                lua_pushvalue(L, key);
                lua_insert(L, -2);
                lua_rawset(L, copy);
            } else {
                lua_pop(L, 1);
            }
        }
        lua_pop(L, 1);
    }
    if (!copy) {
        lua_pushvalue(L, idx);
        return 0;
    }
    return 1;
}

static int l_json_prepare(lua_State *L) {
    prep_ctx c = {0, 0, 3, 0, 0};
    lua_settop(L, 5);
    if (lua_type(L, 5) == LUA_TTABLE) {
        c.flat = 5;
    }
    if (lua_type(L, 2) == LUA_TFUNCTION) {
        c.leaf = 2;
    }
    if (lua_type(L, 3) == LUA_TTABLE) {
        c.array_mt = 3;
        luaL_checktype(L, 4, LUA_TSTRING);
        c.mark = 4;
    }
    (void)prepare(L, &c, 1, 0);
    lua_pushboolean(L, c.marked);
    return 2;
}

/* the table at idx is exactly { mark } */
static int is_marker_array(lua_State *L, int idx, int mark) {
    if (lua_rawgeti(L, idx, 1) != LUA_TSTRING || !lua_rawequal(L, -1, mark)) {
        lua_pop(L, 1);
        return 0;
    }
    lua_pop(L, 1);
    lua_pushnil(L);
    int n = 0;
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (++n > 1) {
            lua_pop(L, 1);
            return 0;
        }
    }
    return 1;
}

/* the number at idx is a float with an integer value (*out): Lua 5.3+, where decoded numbers are
 * floats; LuaJIT has one number type */
static int integral_float(lua_State *L, int idx, lua_Integer *out) {
#if LUA_VERSION_NUM >= 503
    int isint = 0;
    *out = lua_isinteger(L, idx) ? 0 : lua_tointegerx(L, idx, &isint);
    return isint;
#else
    (void)L;
    (void)idx;
    (void)out;
    return 0;
#endif
}

/* the number at idx is NaN or infinite */
static int not_finite(lua_State *L, int idx) {
#if LUA_VERSION_NUM >= 503
    if (lua_isinteger(L, idx)) {
        return 0;
    }
#endif
    return !isfinite((double)lua_tonumber(L, idx));
}

/* 0, or -1 at the first number that is not finite (the walk stops there) */
static int normalise(lua_State *L, int idx, int array_mt, int mark, int depth) {
    luaL_checkstack(L, 6, "json_normalise: too deep");
    if (depth > ROTOR_JSON_DEPTH) {
        return 0;
    }
    if (array_mt && is_marker_array(L, idx, mark)) {
        lua_pushnil(L);
        lua_rawseti(L, idx, 1);
        lua_pushvalue(L, array_mt);
        lua_setmetatable(L, idx);
        return 0;
    }
    lua_Integer i;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        int vt = lua_type(L, -1);
        if (vt == LUA_TTABLE) {
            if (normalise(L, lua_gettop(L), array_mt, mark, depth + 1) != 0) {
                return -1;
            }
        } else if (vt == LUA_TNUMBER && integral_float(L, -1, &i)) {
            /* an existing field may be assigned during the traversal */
            lua_pushvalue(L, -2);
            lua_pushinteger(L, i);
            lua_rawset(L, idx);
        } else if (vt == LUA_TNUMBER && not_finite(L, -1)) {
            return -1;
        }
        lua_pop(L, 1);
    }
    return 0;
}

static int not_finite_error(lua_State *L) {
    lua_pushnil(L);
    lua_pushliteral(L, "malformed JSON: a number that is not finite (NaN, Infinity, or beyond the "
                       "range of a double, such as 1e999)");
    return 2;
}

static int l_json_normalise(lua_State *L) {
    lua_settop(L, 3);
    int array_mt = 0;
    if (lua_type(L, 2) == LUA_TTABLE) {
        luaL_checktype(L, 3, LUA_TSTRING);
        array_mt = 2;
    }
    if (lua_type(L, 1) == LUA_TTABLE && normalise(L, 1, array_mt, 3, 0) != 0) {
        return not_finite_error(L);
    }
    lua_Integer i;
    if (lua_type(L, 1) == LUA_TNUMBER && integral_float(L, 1, &i)) {
        lua_pushinteger(L, i);
        return 1;
    }
    if (lua_type(L, 1) == LUA_TNUMBER && not_finite(L, 1)) {
        return not_finite_error(L);
    }
    lua_settop(L, 1);
    return 1;
}

static int is_json_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* the offset of the first ']' closing an empty array at or after i, outside strings; *open is
 * set to the offset of its '[' (n when there is none) */
static size_t next_empty_array(const char *s, size_t n, size_t i, size_t *open) {
    int in_string = 0;
    for (; i < n; i++) {
        char ch = s[i];
        if (in_string) {
            if (ch == '\\') {
                i++; /* the escaped character */
            } else if (ch == '"') {
                in_string = 0;
            }
        } else if (ch == '"') {
            in_string = 1;
        } else if (ch == '[') {
            size_t j = i + 1;
            while (j < n && is_json_space(s[j])) {
                j++;
            }
            if (j < n && s[j] == ']') {
                *open = i;
                return j;
            }
        }
    }
    *open = n;
    return n;
}

/* whether the text may hold an empty array: a ']' with only JSON whitespace between it and a
 * '[' before it (strings not told apart: a maybe). memchr skips the rest, where the full scan
 * looks at every byte; most texts (a store record, a token answer) have none. */
static int may_have_empty_array(const char *s, size_t n) {
    for (const char *p = memchr(s, ']', n); p != NULL;
         p = memchr(p + 1, ']', n - (size_t)(p + 1 - s))) {
        const char *q = p;
        while (q > s && is_json_space(q[-1])) {
            q--;
        }
        if (q > s && q[-1] == '[') {
            return 1;
        }
    }
    return 0;
}

/* core.json_mark_arrays(text, marker_json) -> text with each empty array outside strings replaced
 * by marker_json (text itself when it has none; an unterminated string ends the scan, and cjson
 * reports it) */
static int l_json_mark_arrays(lua_State *L) {
    size_t n, mlen;
    const char *s = luaL_checklstring(L, 1, &n);
    const char *mark = luaL_checklstring(L, 2, &mlen);
    if (!may_have_empty_array(s, n)) {
        lua_settop(L, 1);
        return 1;
    }
    size_t open;
    size_t close = next_empty_array(s, n, 0, &open);
    if (open == n) {
        lua_settop(L, 1);
        return 1;
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    size_t pos = 0;
    while (open < n) {
        luaL_addlstring(&b, s + pos, open - pos);
        luaL_addlstring(&b, mark, mlen);
        pos = close + 1;
        close = next_empty_array(s, n, pos, &open);
    }
    luaL_addlstring(&b, s + pos, n - pos);
    luaL_pushresult(&b);
    return 1;
}

/* core.json_finish(text[, marker_json]) -> text2 (see the top). The text is cjson's: "\/" is
 * the escape of "/" wherever it stands (an escape pair is skipped whole, so the "\" of "\\" is
 * never taken for the start of one), and marker_json, which holds quotes, can only stand where
 * cjson wrote the marker array (a quote inside a string is escaped). */
static int l_json_finish(lua_State *L) {
    size_t n, mlen = 0;
    const char *s = luaL_checklstring(L, 1, &n);
    const char *mark = luaL_optlstring(L, 2, NULL, &mlen);
    const char *end = s + n;
    const char *bs = memchr(s, '\\', n);
    const char *mk = mark != NULL && mlen > 0 ? memmem(s, n, mark, mlen) : NULL;
    if (bs == NULL && mk == NULL) {
        lua_settop(L, 1);
        return 1;
    }
    luaL_Buffer b;
    char *out = luaL_buffinitsize(L, &b, n); /* the text never grows: one allocation */
    size_t o = 0;
    const char *pos = s; /* copied up to here */
    /* jump from backslash to backslash (memchr) and from marker to marker (memmem); a marker
     * holds no backslash, and one found inside an escape pair cannot be (see above) */
    while (bs != NULL || mk != NULL) {
        if (bs != NULL && (mk == NULL || bs < mk)) {
            if (bs + 1 < end && bs[1] == '/') {
                memcpy(out + o, pos, (size_t)(bs - pos));
                o += (size_t)(bs - pos);
                out[o++] = '/';
                pos = bs + 2;
            }
            const char *next = bs + 2; /* the escape pair is skipped whole */
            bs = next < end ? memchr(next, '\\', (size_t)(end - next)) : NULL;
            if (mk != NULL && mk < next) {
                mk = memmem(next, (size_t)(end - next), mark, mlen);
            }
        } else {
            memcpy(out + o, pos, (size_t)(mk - pos));
            o += (size_t)(mk - pos);
            out[o++] = '[';
            out[o++] = ']';
            pos = mk + mlen;
            mk = memmem(pos, (size_t)(end - pos), mark, mlen);
        }
    }
    memcpy(out + o, pos, (size_t)(end - pos));
    o += (size_t)(end - pos);
    luaL_pushresultsize(&b, o);
    return 1;
}

/* ---- a record's journal, split without decoding it ----
 *
 *   core.json_journal_split(text) -> entries, count, rest | nil
 *     For a record as rotor's file store writes it, {"journal":[E1,...,En]<,REST>}, where each
 *     entry Ei is an object of string members only (strings without a control byte, with the
 *     escapes \" \\ \/ \b \f \n \r \t and \uXXXX outside the surrogates): the text
 *     "E1,...,En" ("" when n is 0), n, and the text of the rest of the record, "{REST}" ("{}"
 *     when there is none). nil for any other text, which the caller then decodes whole: whatever
 *     this accepts is JSON that cjson reads as the same entries, so the entries' text can be
 *     written back as it was read, and decoded only when someone reads the journal. No string is
 *     made per entry: a slot rotated for long holds hundreds of them, read with it on every
 *     rotation. (The entries hold no secret: the record's versions stay in the rest.)
 *   core.json_journal_skip(entries, at, k) -> at2
 *     The index after k entries from at (the first byte of an entry in a text split returned),
 *     past the comma that follows the last of them: the next entry's first byte, or #entries + 1
 *     when none is left. Raises when fewer than k entries start at at. */
#define JOURNAL_OPEN "{\"journal\":["

static int is_hex(char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* The index of the first quote, backslash or control byte in s[i..n), or n. Eight bytes at a
 * time where the byte order allows (a slot's journal, tens of kilobytes of strings, is split on
 * every rotation: byte by byte this was the split's whole cost): in a word v, (x - 1) & ~x sets a
 * byte's top bit where the byte of x was 0, and (v - 0x20) & ~v where the byte of v was below 0x20;
 * only bytes above the first flagged one can be flagged falsely (by a borrow), so the lowest
 * flag is exact. */
static size_t next_special(const char *s, size_t n, size_t i) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    const uint64_t ones = 0x0101010101010101ULL, tops = 0x8080808080808080ULL;
    for (; n - i >= 8; i += 8) {
        uint64_t v;
        memcpy(&v, s + i, 8);
        uint64_t q = v ^ (ones * '"'), b = v ^ (ones * '\\');
        uint64_t hit = (((q - ones) & ~q) | ((b - ones) & ~b) | ((v - ones * 0x20) & ~v)) & tops;
        if (hit != 0) {
            return i + (size_t)(__builtin_ctzll(hit) / 8);
        }
    }
#endif
    for (; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\' || c < 0x20) {
            break;
        }
    }
    return i;
}

/* the end of the string starting at s[i] == '"' (the index after its closing quote), or 0 */
static size_t scan_string(const char *s, size_t n, size_t i) {
    for (i = next_special(s, n, i + 1); i < n; i = next_special(s, n, i + 1)) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"') {
            return i + 1;
        }
        if (c < 0x20) {
            return 0;
        }
        if (c == '\\') {
            if (++i >= n) {
                return 0;
            }
            c = (unsigned char)s[i];
            if (c == 'u') {
                if (i + 4 >= n || !is_hex(s[i + 1]) || !is_hex(s[i + 2]) || !is_hex(s[i + 3]) ||
                    !is_hex(s[i + 4])) {
                    return 0;
                }
                /* \uD800-\uDFFF: a surrogate, which a decoder may pair or refuse */
                if ((s[i + 1] == 'd' || s[i + 1] == 'D') && strchr("89abAB", s[i + 2]) != NULL) {
                    return 0;
                }
                i += 4;
            } else if (strchr("\"\\/bfnrt", c) == NULL || c == '\0') {
                return 0;
            }
        }
    }
    return 0;
}

/* the end of the flat object starting at s[i] == '{' (the index after its '}'), or 0 */
static size_t scan_flat_object(const char *s, size_t n, size_t i) {
    i++;
    if (i < n && s[i] == '}') {
        return i + 1;
    }
    for (;;) {
        if (i >= n || s[i] != '"' || (i = scan_string(s, n, i)) == 0) {
            return 0;
        }
        if (i >= n || s[i] != ':') {
            return 0;
        }
        i++;
        if (i >= n || s[i] != '"' || (i = scan_string(s, n, i)) == 0) {
            return 0;
        }
        if (i >= n) {
            return 0;
        }
        if (s[i] == '}') {
            return i + 1;
        }
        if (s[i] != ',') {
            return 0;
        }
        i++;
    }
}

/* the entry at s[i]: the index after it and the comma that follows (the next entry's first
 * byte), or after it where no comma follows; 0 when s[i] starts no entry */
static size_t next_entry(const char *s, size_t n, size_t i) {
    size_t end = i < n && s[i] == '{' ? scan_flat_object(s, n, i) : 0;
    if (end != 0 && end < n && s[end] == ',') {
        end++;
    }
    return end;
}

static int l_json_journal_split(lua_State *L) {
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    size_t open = sizeof JOURNAL_OPEN - 1;
    if (n < open + 2 || memcmp(s, JOURNAL_OPEN, open) != 0) {
        lua_pushnil(L);
        return 1;
    }
    size_t i = open;
    lua_Integer count = 0;
    while (s[i] != ']') {
        size_t next = next_entry(s, n, i);
        /* a comma leads to another entry ("[{},]" is no JSON), else the array ends ("[{}{}]") */
        if (next == 0 || next >= n || s[next] != (s[next - 1] == ',' ? '{' : ']')) {
            lua_pushnil(L);
            return 1;
        }
        count++;
        i = next;
    }
    /* s[i] == ']': the entries are s[open..i) */
    lua_pushlstring(L, s + open, i - open);
    lua_pushinteger(L, count);
    i++;
    if (i + 1 == n && s[i] == '}') {
        lua_pushliteral(L, "{}");
        return 3;
    }
    if (i < n && s[i] == ',') {
        /* "{" and the rest: cjson judges it */
        luaL_Buffer b;
        luaL_buffinit(L, &b);
        luaL_addchar(&b, '{');
        luaL_addlstring(&b, s + i + 1, n - i - 1);
        luaL_pushresult(&b);
        return 3;
    }
    lua_settop(L, 1);
    lua_pushnil(L);
    return 1;
}

static int l_json_journal_skip(lua_State *L) {
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    lua_Integer at = luaL_checkinteger(L, 2);
    lua_Integer k = luaL_checkinteger(L, 3);
    luaL_argcheck(L, at >= 1 && (size_t)at <= n, 2, "an index in the text expected");
    luaL_argcheck(L, k >= 0, 3, "a count of entries expected");
    size_t i = (size_t)at - 1;
    for (lua_Integer e = 0; e < k; e++) {
        size_t next = next_entry(s, n, i);
        if (next == 0) {
            return luaL_error(L, "json_journal_skip: no journal entry at byte %d", (int)i + 1);
        }
        i = next;
    }
    lua_pushinteger(L, (lua_Integer)i + 1);
    return 1;
}

void rotor_json_open(lua_State *L) {
    static const luaL_Reg funcs[] = {{"json_prepare", l_json_prepare},
                                     {"json_normalise", l_json_normalise},
                                     {"json_mark_arrays", l_json_mark_arrays},
                                     {"json_finish", l_json_finish},
                                     {"json_journal_split", l_json_journal_split},
                                     {"json_journal_skip", l_json_journal_skip},
                                     {NULL, NULL}};
    luaL_setfuncs(L, funcs, 0);
}
