/* rotor: the host executable. Its shape follows lua.c: a protected main, a message handler that
 * adds a traceback (with every live secret redacted), the `arg` table and clear exit codes.
 *
 *   rotor script.lua [args]     run a rotation script
 *   rotor -e 'code'             run a chunk
 *   rotor COMMAND ...           rotor.cli: every subcommand, the usage text, help and version
 *
 * rotor's modules are found next to the executable with no LUA_PATH or LUA_CPATH: in the
 * checkout build/rotor -> lua/ and build/5.4/rotor/core.so; installed bin/rotor ->
 * share/lua/5.4/ and lib/lua/5.4/rotor/core.so. rotor.core is built from the same objects as the
 * module and loaded on first require: linking libcurl into the host would make every start pay
 * for loading libcurl's ~35 shared libraries (measured: 7x the start-up of lua5.4, see make bench).
 */
#include "rotor.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

/* Set by the signal handler. Its address goes into the Lua registry (ROTOR_INTERRUPT_KEY) before
 * any script runs: rotor.core takes it from there when it is loaded, so core.interrupted() sees it.
 */
static volatile sig_atomic_t interrupted = 0;

#define EXIT_USAGE 2
#define EXIT_INTERRUPTED 130

static const char *progname = "rotor";

static void on_signal(int sig) {
    if (interrupted) {
        /* a second signal: stop now */
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    interrupted = sig;
    static const char msg[] =
        "\nrotor: stopping after the current step (send the signal again to abort now)\n";
    ssize_t w = write(STDERR_FILENO, msg, sizeof(msg) - 1);
    (void)w;
}

/* Message handler: the error as text, every live secret redacted, plus a traceback. */
static int msghandler(lua_State *L) {
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) {
            msg = lua_tostring(L, -1);
        } else {
            msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
        }
    }
    luaL_traceback(L, L, msg, 1);
    /* redact through rotor.core.redact; when the core was never loaded no secret exists */
    lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_getfield(L, -1, "rotor.core");
    lua_remove(L, -2);
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "redact");
        lua_remove(L, -2);
    }
    if (lua_isfunction(L, -1)) {
        lua_insert(L, -2);
        if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
            lua_pop(L, 1);
            lua_pushliteral(L, "(error message withheld: redaction failed)");
        }
    } else {
        lua_pop(L, 1);
    }
    return 1;
}

static int report(lua_State *L, int status) {
    if (status != LUA_OK) {
        const char *msg = lua_tostring(L, -1);
        msg = msg ? msg : "(error)";
        size_t n = strlen(progname);
        /* rotor's error values already start with "rotor: ": no "rotor: rotor: " */
        int prefixed = strncmp(msg, progname, n) == 0 && msg[n] == ':';
        fprintf(stderr, "%s%s%s\n", prefixed ? "" : progname, prefixed ? "" : ": ", msg);
        fflush(stderr);
        lua_pop(L, 1);
    }
    return status;
}

static int docall(lua_State *L, int narg, int nres) {
    int base = lua_gettop(L) - narg;
    lua_pushcfunction(L, msghandler);
    lua_insert(L, base);
    int status = lua_pcall(L, narg, nres, base);
    lua_remove(L, base);
    return status;
}

/* Directory of the running executable, for finding rotor's Lua modules. */
static void exe_dir(char *out, size_t n) {
    ssize_t len = readlink("/proc/self/exe", out, n - 1);
    if (len <= 0) {
        snprintf(out, n, ".");
        return;
    }
    out[len] = '\0';
    char *slash = strrchr(out, '/');
    if (slash != NULL) {
        *slash = '\0';
    }
}

static void setup_paths(lua_State *L) {
    char dir[PATH_MAX];
    exe_dir(dir, sizeof(dir));
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "path");
    lua_pushfstring(L,
                    "%s/../lua/?.lua;%s/../lua/?/init.lua;"
                    "%s/../share/lua/" LUA_VERSION_MAJOR "." LUA_VERSION_MINOR "/?.lua;"
                    "%s/../share/lua/" LUA_VERSION_MAJOR "." LUA_VERSION_MINOR "/?/init.lua;"
                    "%s",
                    dir, dir, dir, dir, lua_tostring(L, -1));
    lua_setfield(L, -3, "path");
    lua_pop(L, 1);
    lua_getfield(L, -1, "cpath");
    lua_pushfstring(L,
                    "%s/" LUA_VERSION_MAJOR "." LUA_VERSION_MINOR "/?.so;"
                    "%s/../lib/lua/" LUA_VERSION_MAJOR "." LUA_VERSION_MINOR "/?.so;%s",
                    dir, dir, lua_tostring(L, -1));
    lua_setfield(L, -3, "cpath");
    lua_pop(L, 2);
}

static void create_arg(lua_State *L, char **argv, int argc, int script) {
    lua_createtable(L, argc - script, script + 1);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i - script);
    }
    lua_setglobal(L, "arg");
}

/* Does rotor.cli own this first argument (a subcommand, an option, a word that is no script)?
 * rotor.cli holds every subcommand and the one usage text; the host runs scripts and -e. */
static int cli_owns(lua_State *L, const char *a1, int *status) {
    size_t n = strlen(a1);
    /* a path, a *.lua file or stdin is a script: no Lua module is needed to run it */
    if (strcmp(a1, "-") == 0 || strchr(a1, '/') != NULL ||
        (n > 4 && strcmp(a1 + n - 4, ".lua") == 0)) {
        return 0;
    }
    lua_getglobal(L, "require");
    lua_pushliteral(L, "rotor.cli");
    *status = docall(L, 1, 1);
    if (*status != LUA_OK) {
        return 0;
    }
    lua_getfield(L, -1, "owns");
    lua_pushstring(L, a1);
    *status = docall(L, 1, 1);
    if (*status != LUA_OK) {
        lua_remove(L, -2);
        return 0;
    }
    int owns = lua_toboolean(L, -1);
    lua_pop(L, 2);
    return owns;
}

/* Load the script fname as luaL_loadfile would (a first line starting with '#', such as
 * "#!/usr/bin/env rotor", skipped), but only when no other user could have changed it: the rule
 * of a config file (core.fs_read_trusted). A script run from cron as root is code with every
 * secret rotor holds in reach. */
static int load_script(lua_State *L, const char *fname) {
    lua_getglobal(L, "require");
    lua_pushliteral(L, "rotor.core");
    int status = docall(L, 1, 1);
    if (status != LUA_OK) {
        return status;
    }
    lua_getfield(L, -1, "fs_read_trusted");
    lua_remove(L, -2);
    lua_pushstring(L, fname);
    status = docall(L, 1, 2);
    if (status != LUA_OK) {
        return status;
    }
    if (!lua_isstring(L, -2)) {
        const char *why = lua_tostring(L, -1);
        lua_pushfstring(L, "cannot run %s: %s", fname, why ? why : "cannot read it");
        lua_replace(L, -3);
        lua_pop(L, 1);
        return LUA_ERRFILE;
    }
    lua_pop(L, 1);
    size_t n;
    const char *text = lua_tolstring(L, -1, &n);
    size_t skip = 0;
    if (n > 0 && text[0] == '#') {
        while (skip < n && text[skip] != '\n') {
            skip++; /* the newline stays: line numbers in messages are the file's */
        }
    }
    lua_pushfstring(L, "@%s", fname);
    status = luaL_loadbuffer(L, text + skip, n - skip, lua_tostring(L, -1));
    lua_remove(L, -2); /* the chunk name */
    lua_remove(L, -2); /* the text */
    return status;
}

static int pmain(lua_State *L) {
    int argc = (int)lua_tointeger(L, 1);
    char **argv = (char **)lua_touserdata(L, 2);
    int *exitcode = (int *)lua_touserdata(L, 3);
    luaL_openlibs(L);
    lua_pushlightuserdata(L, (void *)&interrupted);
    lua_setfield(L, LUA_REGISTRYINDEX, ROTOR_INTERRUPT_KEY);
    setup_paths(L);
    const char *a1 = argc < 2 ? NULL : argv[1];
    int status = LUA_OK;
    if (a1 != NULL && strcmp(a1, "-e") == 0) {
        if (argc < 3) {
            fprintf(stderr, "%s: -e needs an argument (rotor help)\n", progname);
            *exitcode = EXIT_USAGE;
            return 0;
        }
        create_arg(L, argv, argc, 2);
        status = luaL_loadbuffer(L, argv[2], strlen(argv[2]), "=(command line)");
        if (status == LUA_OK) {
            status = docall(L, 0, 0);
        }
    } else if (a1 == NULL || cli_owns(L, a1, &status)) {
        create_arg(L, argv, argc, 0);
        lua_getglobal(L, "require");
        lua_pushliteral(L, "rotor.cli");
        status = docall(L, 1, 1);
        if (status == LUA_OK) {
            lua_getfield(L, -1, "main");
            lua_createtable(L, argc - 1, 0);
            for (int i = 1; i < argc; i++) {
                lua_pushstring(L, argv[i]);
                lua_rawseti(L, -2, i);
            }
            status = docall(L, 1, 1);
            if (status == LUA_OK) {
                *exitcode = (int)luaL_optinteger(L, -1, 0);
                lua_pop(L, 1);
            }
        }
    } else if (status == LUA_OK) {
        create_arg(L, argv, argc, 1);
        status = strcmp(a1, "-") == 0 ? luaL_loadfile(L, NULL) : load_script(L, a1);
        if (status == LUA_OK) {
            int n = argc - 2;
            luaL_checkstack(L, n, "too many arguments to script");
            for (int i = 2; i < argc; i++) {
                lua_pushstring(L, argv[i]);
            }
            status = docall(L, n, 0);
        }
    }
    if (report(L, status) != LUA_OK) {
        *exitcode = interrupted ? EXIT_INTERRUPTED : EXIT_FAILURE;
    } else if (interrupted && *exitcode == 0) {
        *exitcode = EXIT_INTERRUPTED;
    }
    return 0;
}

/* rotor holds admin secrets: no core file may keep them, no process of the same user may read
 * its memory (/proc/PID/mem, ptrace, /proc/PID/environ), and libcurl never writes TLS keys to the
 * file SSLKEYLOGFILE names. Failures are ignored: these only narrow what could leak. */
static void harden_process(void) {
    struct rlimit none = {0, 0};
    (void)setrlimit(RLIMIT_CORE, &none);
    (void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    (void)unsetenv("SSLKEYLOGFILE");
}

int main(int argc, char **argv) {
    harden_process();
    if (argv[0] != NULL && argv[0][0]) {
        const char *s = strrchr(argv[0], '/');
        progname = s ? s + 1 : argv[0];
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    /* a deploy command that exits before reading its stdin must not kill rotor: the write fails
     * with EPIPE and is reported instead */
    signal(SIGPIPE, SIG_IGN);

    lua_State *L = luaL_newstate();
    if (L == NULL) {
        fprintf(stderr, "%s: cannot create the Lua state: not enough memory\n", progname);
        return EXIT_FAILURE;
    }
    int exitcode = 0;
    lua_pushcfunction(L, pmain);
    lua_pushinteger(L, argc);
    lua_pushlightuserdata(L, argv);
    lua_pushlightuserdata(L, &exitcode);
    int status = lua_pcall(L, 3, 0, 0);
    if (status != LUA_OK) {
        const char *msg = lua_tostring(L, -1);
        fprintf(stderr, "%s: %s\n", progname, msg ? msg : "(error)");
        exitcode = EXIT_FAILURE;
    }
    lua_close(L);
    fflush(stdout);
    return exitcode;
}
