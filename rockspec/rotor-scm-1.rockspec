-- rotor: rotate OAuth2 client secrets at SaaS providers (C core over libcurl + Lua module).
--
-- From a checkout (offline; Debian's lua-cjson already provides the runtime dependency):
--   luarocks --tree DIR --lua-version 5.4 make rockspec/rotor-scm-1.rockspec --deps-mode=none
-- For LuaJIT (a Lua 5.1 ABI; OpenResty), build against LuaJIT's headers:
--   luarocks --tree DIR --lua-version 5.1 make rockspec/rotor-scm-1.rockspec --deps-mode=none \
--     LUA_INCDIR=/usr/include/luajit-2.1
rockspec_format = "3.0"
package = "rotor"
version = "scm-1"

source = {
   -- `luarocks make` builds the checkout it runs in; this is where `luarocks build` would fetch
   url = "git+https://example.org/rotor/rotor.git",
   branch = "main",
}

description = {
   summary = "Rotate OAuth2 client secrets at SaaS providers without locking anyone out",
   detailed = [[
rotor rotates the OAuth2 client secrets of Paylocity, Spreetail, Genesys Cloud and Amazon
SP-API credentials with a staged, crash-safe workflow. A C core (rotor.core) does HTTP, TLS,
concurrency and token caching over libcurl; the Lua module exposes the providers' operations,
the rotation workflow, stores, and OpenResty glue (rotor.ngx). With Lua 5.4 the rock also
installs the `rotor` executable.
]],
   license = "MIT",
   labels = { "oauth2", "secrets", "rotation", "libcurl", "openresty" },
}

supported_platforms = { "linux" }

dependencies = {
   "lua >= 5.1",
   "lua-cjson",
}

-- Only the library is looked up here: LuaRocks searches for headers in CURL_DIR/include alone,
-- and Debian and Ubuntu keep curl/curl.h in the multiarch include directory, which the compiler
-- searches by itself. `make rock-build` checks that the compiler finds curl/curl.h and says what
-- to install (or to pass CURL_INCDIR=) when it does not.
external_dependencies = {
   CURL = {
      library = "curl",
   },
}

build = {
   type = "make",
   build_target = "rock-build",
   install_target = "rock-install",
   -- LUA_VERSION (5.1 for LuaJIT) is read by the Makefile from LUA_INCDIR/lua.h: LuaRocks has
   -- no variable for it. LUA_LIBDIR and LUA_VERSION may be given on the command line.
   build_variables = {
      CC = "$(CC)",
      CFLAGS = "$(CFLAGS)",
      LIBFLAG = "$(LIBFLAG)",
      LUA_INCDIR = "$(LUA_INCDIR)",
      CURL_INCDIR = "$(CURL_INCDIR)",
      CURL_LIBDIR = "$(CURL_LIBDIR)",
   },
   install_variables = {
      LUA_INCDIR = "$(LUA_INCDIR)",
      CURL_INCDIR = "$(CURL_INCDIR)",
      CURL_LIBDIR = "$(CURL_LIBDIR)",
      PREFIX = "$(PREFIX)",
      INST_PREFIX = "$(PREFIX)",
      INST_LUADIR = "$(LUADIR)",
      INST_LIBDIR = "$(LIBDIR)",
      INST_BINDIR = "$(BINDIR)",
   },
}

test = {
   type = "busted",
}
