/* fs.h: the file-system primitives the stores and the rotation layer need (rotor.core).
 *
 * rotor_fs_open expects the core module table at the top of the stack, adds the fs_* functions,
 * getpid, isatty and kill_self to it, and leaves the stack as it found it. It returns 0.
 */
#ifndef ROTOR_FS_H
#define ROTOR_FS_H

#include <lua.h>

int rotor_fs_open(lua_State *L);

#endif
