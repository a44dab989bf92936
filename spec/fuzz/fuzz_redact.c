/* Redaction (core.redact): any message and up to 4 live secrets (made of digits, so the
 * replacement text cannot recreate one). No secret of 6 bytes or more survives in the output,
 * and a message holding none, in no form (raw, escaped, percent-encoded, base64: a message
 * without letters or base64 signs holds no base64 form), comes back unchanged. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    lua_State *L = fuzz_lua();
    const uint8_t *p = data, *end = data + size;
    char secrets[4][64];
    size_t lens[4];
    int ns = 0;
    while (ns < 4 && end - p >= 1 && *p < 64) {
        size_t n = *p++ % 40;
        if ((size_t)(end - p) < n) {
            n = (size_t)(end - p);
        }
        for (size_t i = 0; i < n; i++) {
            secrets[ns][i] = (char)('0' + p[i] % 10);
        }
        lens[ns] = n;
        p += n;
        rotor_secret_push(L, secrets[ns], n);
        ns++;
    }
    int top = lua_gettop(L);
    /* the message: the rest, with the secrets' digits mixed in where a byte says so */
    rotor_buf msg = {0};
    while (p < end) {
        if (*p >= 0xF0 && ns > 0) {
            int k = *p % ns;
            rotor_buf_add(&msg, secrets[k], lens[k]);
        } else {
            rotor_buf_add(&msg, p, 1);
        }
        p++;
    }
    int held = 0;
    for (size_t i = 0; i < msg.len; i++) {
        char c = msg.data[i];
        held |= (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '+' || c == '/';
    }
    for (int k = 0; k < ns; k++) {
        held |=
            lens[k] >= 6 && msg.len > 0 && memmem(msg.data, msg.len, secrets[k], lens[k]) != NULL;
    }
    lua_getfield(L, 1, "redact");
    lua_pushlstring(L, msg.data ? msg.data : "", msg.len);
    lua_call(L, 1, 1);
    size_t olen;
    const char *out = lua_tolstring(L, -1, &olen);
    for (int k = 0; k < ns; k++) {
        if (lens[k] >= 6 && olen > 0 && memmem(out, olen, secrets[k], lens[k]) != NULL) {
            abort();
        }
    }
    if (!held && (olen != msg.len || (olen > 0 && memcmp(out, msg.data, olen) != 0))) {
        abort();
    }
    rotor_buf_free(&msg);
    for (int i = top; i > 1; i--) {
        lua_getfield(L, i, "close");
        lua_pushvalue(L, i);
        lua_call(L, 1, 0);
    }
    fuzz_collect(L);
    return 0;
}
