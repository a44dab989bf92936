/* fork_durable.c: a program for spec/durable_spec.lua. It runs a group commit (rotor.core's
 * durable_start) in a Lua state, forks, and runs one more in the child, where the durable-write
 * thread of the parent does not exist; then one more in the parent. Each group waits at most 5 s.
 *   fork_durable DIR CPATH   (CPATH: package.cpath finding rotor.core)
 * Prints "parent true", "child true", "parent again true" (false for a group that did not end in
 * time or failed) and exits 0 when all three were written. Built by the spec with
 *   cc -o build/fork_durable spec/helpers/fork_durable.c $(pkg-config --cflags --libs lua5.4) */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *const group =
    "local dir, name = ...\n"
    "local core = require 'rotor.core'\n"
    "local d = assert(core.fs_dir(dir, true))\n"
    "local job = core.durable_start({ { 'atomic', d, name, name, 384 } })\n"
    "local t0, res = core.now(), nil\n"
    "repeat core.sleep(0.002); res = job:results() until res or core.now() - t0 > 5\n"
    "return res ~= nil and res[1] == true\n";

/* one group commit writing DIR/NAME: 1 when it ended in time and went well */
static int run_group(lua_State *L, const char *dir, const char *name) {
    if (luaL_loadstring(L, group) != LUA_OK) {
        fprintf(stderr, "%s\n", lua_tostring(L, -1));
        return 0;
    }
    lua_pushstring(L, dir);
    lua_pushstring(L, name);
    if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
        fprintf(stderr, "%s\n", lua_tostring(L, -1));
        lua_pop(L, 1);
        return 0;
    }
    int ok = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return ok;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: fork_durable DIR CPATH\n");
        return 2;
    }
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    lua_getglobal(L, "package");
    lua_pushstring(L, argv[2]);
    lua_setfield(L, -2, "cpath");
    lua_pop(L, 1);
    int ok = run_group(L, argv[1], "parent.json");
    printf("parent %s\n", ok ? "true" : "false");
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        int child = run_group(L, argv[1], "child.json");
        printf("child %s\n", child ? "true" : "false");
        fflush(stdout);
        lua_close(L);
        _exit(child ? 0 : 1);
    }
    int status = 1;
    if (pid < 0 || waitpid(pid, &status, 0) != pid) {
        status = 1;
    }
    int again = run_group(L, argv[1], "parent again.json");
    printf("parent again %s\n", again ? "true" : "false");
    lua_close(L);
    return ok && again && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}
