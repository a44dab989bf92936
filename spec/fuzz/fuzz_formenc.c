/* Form encoding (rotor_buf_add_formenc): the output uses only the unreserved set, '+' and %XX,
 * and decodes back to the input byte for byte. */
#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    rotor_buf b = {0};
    rotor_buf_add_formenc(&b, (const char *)data, size);
    if (b.failed) {
        rotor_buf_free(&b);
        return 0;
    }
    char *dec = malloc(b.len + 1);
    long n = form_decode(b.data ? b.data : "", b.len, dec);
    if (n != (long)size || (size > 0 && memcmp(dec, data, size) != 0)) {
        abort();
    }
    free(dec);
    rotor_buf_free(&b);
    return 0;
}
