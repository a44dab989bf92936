/* Sealing secrets at rest: AES-256-GCM under a 32-byte user key (OpenSSL libcrypto).
 *
 *   core.seal(key, plaintext[, aad])  -> base64(nonce[12] .. ciphertext .. tag[16])
 *   core.unseal(key, sealed[, aad])   -> rotor.secret | nil, reason
 *   core.seal_key_id(key)             -> 16 hex chars: HMAC-SHA256(key, "rotor seal key id
 * v1")[0..8) core.b64encode(s), core.b64decode(s) -> standard base64 (decode: nil on malformed
 * input)
 *
 * key and plaintext may be strings or rotor.secret values; the opened plaintext only ever
 * becomes a rotor.secret. Every buffer that held plaintext is zeroed before it is freed. */
#include "rotor.h"

#include <stdlib.h>
#include <string.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#define SEAL_KEY_LEN 32
#define SEAL_NONCE_LEN 12
#define SEAL_TAG_LEN 16

static const char *check_key(lua_State *L, int idx) {
    size_t klen;
    const char *k = rotor_checkbytes(L, idx, &klen);
    if (klen != SEAL_KEY_LEN) {
        luaL_error(L, "seal: the key must be 32 bytes, got %d", (int)klen);
    }
    return k;
}

/* Encode n bytes as base64 onto the Lua stack. */
static int push_b64(lua_State *L, const unsigned char *p, size_t n) {
    size_t outlen = 4 * ((n + 2) / 3) + 1;
    if (n > (size_t)1 << 30) {
        return luaL_error(L, "b64encode: input too large");
    }
    unsigned char *out = malloc(outlen);
    if (out == NULL) {
        return luaL_error(L, "b64encode: out of memory");
    }
    int len = EVP_EncodeBlock(out, p, (int)n);
    lua_pushlstring(L, (const char *)out, (size_t)len);
    free(out);
    return 1;
}

/* Decode base64 into a fresh buffer (caller frees with rotor_free_secure). NULL when malformed. */
static unsigned char *decode_b64(const char *s, size_t n, size_t *outlen) {
    if (n % 4 != 0 || n > (size_t)1 << 30) {
        return NULL;
    }
    unsigned char *out = malloc(n / 4 * 3 + 1);
    if (out == NULL) {
        return NULL;
    }
    int len = n > 0 ? EVP_DecodeBlock(out, (const unsigned char *)s, (int)n) : 0;
    if (len < 0) {
        free(out);
        return NULL;
    }
    /* EVP_DecodeBlock counts the padding as zero bytes */
    if (n > 0 && s[n - 1] == '=') {
        len--;
        if (s[n - 2] == '=') {
            len--;
        }
    }
    *outlen = (size_t)len;
    return out;
}

static int l_b64encode(lua_State *L) {
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    return push_b64(L, (const unsigned char *)s, n);
}

static int l_b64decode(lua_State *L) {
    size_t n, outlen = 0;
    const char *s = luaL_checklstring(L, 1, &n);
    unsigned char *out = decode_b64(s, n, &outlen);
    if (out == NULL) {
        lua_pushnil(L);
        return 1;
    }
    lua_pushlstring(L, (const char *)out, outlen);
    free(out);
    return 1;
}

static int l_seal_key_id(lua_State *L) {
    const char *k = check_key(L, 1);
    static const char label[] = "rotor seal key id v1";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (HMAC(EVP_sha256(), k, SEAL_KEY_LEN, (const unsigned char *)label, sizeof(label) - 1, md,
             &mdlen) == NULL) {
        return luaL_error(L, "seal_key_id: HMAC failed");
    }
    char hex[17];
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < 8; i++) {
        hex[2 * i] = digits[md[i] >> 4];
        hex[2 * i + 1] = digits[md[i] & 15];
    }
    lua_pushlstring(L, hex, 16);
    return 1;
}

static int l_seal(lua_State *L) {
    const char *key = check_key(L, 1);
    size_t plen, alen = 0;
    const char *plain = rotor_checkbytes(L, 2, &plen);
    const char *aad = luaL_optlstring(L, 3, "", &alen);
    if (plen > (size_t)1 << 24) {
        return luaL_error(L, "seal: the value is too large (16 MiB at most)");
    }
    size_t total = SEAL_NONCE_LEN + plen + SEAL_TAG_LEN;
    unsigned char *out = malloc(total);
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int ok = out != NULL && c != NULL && RAND_bytes(out, SEAL_NONCE_LEN) == 1;
    int n = 0;
    ok = ok && EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1 &&
         EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, SEAL_NONCE_LEN, NULL) == 1 &&
         EVP_EncryptInit_ex(c, NULL, NULL, (const unsigned char *)key, out) == 1;
    if (ok && alen > 0) {
        ok = EVP_EncryptUpdate(c, NULL, &n, (const unsigned char *)aad, (int)alen) == 1;
    }
    ok = ok && EVP_EncryptUpdate(c, out + SEAL_NONCE_LEN, &n, (const unsigned char *)plain,
                                 (int)plen) == 1;
    ok = ok && EVP_EncryptFinal_ex(c, out + SEAL_NONCE_LEN + n, &n) == 1 &&
         EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, SEAL_TAG_LEN, out + SEAL_NONCE_LEN + plen) ==
             1;
    EVP_CIPHER_CTX_free(c);
    if (!ok) {
        rotor_free_secure(out, total);
        return luaL_error(L, "seal: AES-256-GCM encryption failed");
    }
    push_b64(L, out, total);
    rotor_free_secure(out, total);
    return 1;
}

static int l_unseal(lua_State *L) {
    const char *key = check_key(L, 1);
    size_t slen, alen = 0, rawlen = 0;
    const char *sealed = luaL_checklstring(L, 2, &slen);
    const char *aad = luaL_optlstring(L, 3, "", &alen);
    unsigned char *raw = decode_b64(sealed, slen, &rawlen);
    if (raw == NULL || rawlen < SEAL_NONCE_LEN + SEAL_TAG_LEN) {
        free(raw);
        lua_pushnil(L);
        lua_pushliteral(L, "the sealed value is malformed");
        return 2;
    }
    size_t clen = rawlen - SEAL_NONCE_LEN - SEAL_TAG_LEN;
    unsigned char *plain = malloc(clen + 1);
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int n = 0, m = 0;
    int ok = plain != NULL && c != NULL &&
             EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1 &&
             EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, SEAL_NONCE_LEN, NULL) == 1 &&
             EVP_DecryptInit_ex(c, NULL, NULL, (const unsigned char *)key, raw) == 1;
    if (ok && alen > 0) {
        ok = EVP_DecryptUpdate(c, NULL, &n, (const unsigned char *)aad, (int)alen) == 1;
    }
    ok = ok && EVP_DecryptUpdate(c, plain, &n, raw + SEAL_NONCE_LEN, (int)clen) == 1 &&
         EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, SEAL_TAG_LEN, raw + SEAL_NONCE_LEN + clen) ==
             1;
    int verified = ok && EVP_DecryptFinal_ex(c, plain + n, &m) == 1;
    EVP_CIPHER_CTX_free(c);
    free(raw);
    if (!verified) {
        rotor_free_secure(plain, clen + 1);
        lua_pushnil(L);
        lua_pushstring(L, ok ? "the sealed value does not open with this key (altered, or "
                               "sealed for another slot)"
                             : "AES-256-GCM decryption failed");
        return 2;
    }
    rotor_secret_push(L, plain, (size_t)n + (size_t)m);
    rotor_free_secure(plain, clen + 1);
    return 1;
}

void rotor_seal_open(lua_State *L) {
    static const luaL_Reg funcs[] = {
        {"seal", l_seal},           {"unseal", l_unseal},       {"seal_key_id", l_seal_key_id},
        {"b64encode", l_b64encode}, {"b64decode", l_b64decode}, {NULL, NULL}};
    luaL_setfuncs(L, funcs, 0);
}
