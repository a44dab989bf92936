/* luaopen_rotor_core: the entry point of the C module rotor.core. */
#include "rotor.h"

#include <signal.h>
#include <string.h>
#include <unistd.h>
#if defined(__has_include)
#if __has_include("fs.h")
#include "fs.h"
#define ROTOR_HAVE_FS 1
#endif
#endif

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
    lua_pushboolean(L, isatty((int)fd));
    return 1;
}

int luaopen_rotor_core(lua_State *L) {
    lua_newtable(L);
    rotor_secret_open(L);
    rotor_http_open(L);
    rotor_token_open(L);
#ifdef ROTOR_HAVE_FS
    rotor_fs_open(L);
#endif
    static const luaL_Reg funcs[] = {{"interrupted", l_interrupted},
                                     {"clear_interrupt", l_clear_interrupt},
                                     {"isatty", l_isatty},
                                     {NULL, NULL}};
    luaL_setfuncs(L, funcs, 0);
    lua_pushliteral(L, ROTOR_VERSION);
    lua_setfield(L, -2, "version");
    return 1;
}
