/* luaopen_rotor_core: the entry point of the C module rotor.core. */
#include "rotor.h"

#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

/* Defined by the rotor host (main.c) and set by its SIGINT/SIGTERM handler; absent (NULL) when
 * the module is loaded by another host such as lua5.4 or nginx. */
extern volatile int rotor_host_interrupted __attribute__((weak));

int rotor_is_interrupted(void) {
    return &rotor_host_interrupted != NULL && rotor_host_interrupted != 0;
}

static int l_interrupted(lua_State *L) {
    lua_pushboolean(L, rotor_is_interrupted());
    return 1;
}

static int l_clear_interrupt(lua_State *L) {
    (void)L;
    if (&rotor_host_interrupted != NULL) {
        rotor_host_interrupted = 0;
    }
    return 0;
}

static int l_isatty(lua_State *L) {
    lua_Integer fd = luaL_optinteger(L, 1, 1);
    luaL_argcheck(L, fd >= 0 && fd <= INT_MAX, 1, "bad file descriptor");
    lua_pushboolean(L, isatty((int)fd));
    return 1;
}

int luaopen_rotor_core(lua_State *L) {
    /* libcurl writes TLS session keys to the file SSLKEYLOGFILE names, read when it first
     * initialises (rotor_http_open): rotor never honours it */
    unsetenv("SSLKEYLOGFILE");
    lua_newtable(L);
    rotor_secret_open(L);
    rotor_http_open(L);
    rotor_token_open(L);
    rotor_fs_open(L);
    static const luaL_Reg funcs[] = {{"interrupted", l_interrupted},
                                     {"clear_interrupt", l_clear_interrupt},
                                     {"isatty", l_isatty},
                                     {NULL, NULL}};
    luaL_setfuncs(L, funcs, 0);
    lua_pushliteral(L, ROTOR_VERSION);
    lua_setfield(L, -2, "version");
    return 1;
}
