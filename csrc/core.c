/* luaopen_rotor_core: the entry point of the C module rotor.core. */
#include "rotor.h"

#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

/* the host's signal flag (ROTOR_INTERRUPT_KEY in the registry), taken when the core is loaded;
 * NULL in hosts that have none (lua5.4, luajit, nginx) */
static volatile sig_atomic_t *interrupt_flag = NULL;

int rotor_is_interrupted(void) {
    return interrupt_flag != NULL && *interrupt_flag != 0;
}

static int l_interrupted(lua_State *L) {
    lua_pushboolean(L, rotor_is_interrupted());
    return 1;
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
    rotor_durable_open(L);
    rotor_seal_open(L);
    rotor_fs_open(L);
    rotor_json_open(L);
    lua_getfield(L, LUA_REGISTRYINDEX, ROTOR_INTERRUPT_KEY);
    if (lua_islightuserdata(L, -1)) {
        interrupt_flag = (volatile sig_atomic_t *)lua_touserdata(L, -1);
    }
    lua_pop(L, 1);
    static const luaL_Reg funcs[] = {
        {"interrupted", l_interrupted}, {"isatty", l_isatty}, {NULL, NULL}};
    luaL_setfuncs(L, funcs, 0);
    lua_pushliteral(L, ROTOR_VERSION);
    lua_setfield(L, -2, "version");
    return 1;
}
