/* Response header parsing (http.c's on_header, on_body): lines of any bytes, any length, any
 * count; the caps hold (at most max_headers headers and MAX_HEADER_BYTES bytes, at most max_body
 * body bytes) and every kept name is lower case, without a colon. */
#include "../../csrc/http.c"

#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    xfer x;
    memset(&x, 0, sizeof(x));
    x.max_headers = size > 0 ? 1 + data[0] % 40 : 1;
    x.max_body = size > 1 ? (size_t)data[1] * 8 : 0;
    const char *p = (const char *)data, *end = p + size;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) + 1 : (size_t)(end - p);
        /* libcurl hands the callback a copy it owns: so does this */
        char *line = malloc(n ? n : 1);
        memcpy(line, p, n);
        size_t got = on_header(line, 1, n, &x);
        free(line);
        if (got != n) {
            if (x.fail != FAIL_HEADER_CAP && x.fail != FAIL_NONE) {
                abort();
            }
            break;
        }
        p += n;
    }
    if (x.nheaders > x.max_headers) {
        abort();
    }
    for (int i = 0; i < x.nheaders; i++) {
        for (const char *c = x.headers[i].name; *c; c++) {
            if (*c == ':' || (*c >= 'A' && *c <= 'Z')) {
                abort();
            }
        }
    }
    on_body((char *)data, 1, size, &x);
    if (x.body.len > x.max_body) {
        abort();
    }
    free_headers(&x);
    rotor_buf_free(&x.body);
    return 0;
}
