/* Shared by the libFuzzer harnesses of `make fuzz`: a Lua state with rotor.core loaded, and a
 * form-urlencoding decoder to check the encoder against. */
#ifndef ROTOR_FUZZ_COMMON_H
#define ROTOR_FUZZ_COMMON_H

#include "rotor.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int luaopen_rotor_core(lua_State *L);

/* The Lua state of this process, with rotor.core's table at index 1 after fuzz_top(). */
static lua_State *fuzz_lua(void) {
    static lua_State *L;
    if (L == NULL) {
        L = luaL_newstate();
        luaL_openlibs(L);
        luaL_requiref(L, "rotor.core", luaopen_rotor_core, 0);
        lua_setfield(L, LUA_REGISTRYINDEX, "fuzz.core");
    }
    lua_settop(L, 0);
    lua_getfield(L, LUA_REGISTRYINDEX, "fuzz.core");
    return L;
}

/* Collect now and then, so that every secret's __gc (zeroing) runs under the sanitizers. */
static void fuzz_collect(lua_State *L) {
    static unsigned n;
    lua_settop(L, 0);
    if (++n % 64 == 0) {
        lua_gc(L, LUA_GCCOLLECT, 0);
    }
}

static int hexval(int c) {
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}

/* Decode application/x-www-form-urlencoded bytes; returns the decoded length or -1 when the
 * input is not something the encoder could have produced. out holds at least n bytes. */
static long form_decode(const char *p, size_t n, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c == '+') {
            out[o++] = ' ';
        } else if (c == '%') {
            if (i + 2 >= n) {
                return -1;
            }
            int h = hexval(p[i + 1]), l = hexval(p[i + 2]);
            if (h < 0 || l < 0) {
                return -1;
            }
            out[o++] = (char)(h * 16 + l);
            i += 2;
        } else if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                   c == '-' || c == '.' || c == '_' || c == '*') {
            out[o++] = c;
        } else {
            return -1;
        }
    }
    return (long)o;
}

#endif
