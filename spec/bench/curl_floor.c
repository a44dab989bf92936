/* spec/bench/curl_floor.c: libcurl's own floor for part 1 of make bench.
 *
 *   curl_floor URL CA TOKEN_FILE N CONCURRENCY HTTP2(0|1)
 *
 * N authenticated GETs of URL, at most CONCURRENCY at once, on one libcurl multi handle with
 * easy handles reused (as rotor's core does), HTTP/1.1 (a connection per transfer in flight) or
 * HTTP/2 (multiplexed on one connection, PIPEWAIT); TLS verified against CA. No Lua, no
 * redaction, no response table: what libcurl itself costs per request on this machine, so that
 * rotor's ratio to wrk can be split into libcurl's part and rotor's. Prints
 * "CURL_FLOOR <requests> <seconds> <failed>". The token is read from a file (never argv). */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static size_t discard(char *p, size_t size, size_t n, void *u) {
    (void)p;
    (void)u;
    return size * n;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: curl_floor URL CA TOKEN_FILE N CONCURRENCY HTTP2\n");
        return 2;
    }
    const char *url = argv[1], *ca = argv[2];
    long n = atol(argv[4]), conc = atol(argv[5]);
    int h2 = atoi(argv[6]);
    char token[8192], header[8300];
    FILE *f = fopen(argv[3], "rb");
    if (f == NULL || n <= 0 || conc <= 0 || conc > 1024) {
        fprintf(stderr, "curl_floor: bad arguments or unreadable token file\n");
        return 2;
    }
    size_t tl = fread(token, 1, sizeof token - 1, f);
    fclose(f);
    token[tl] = '\0';
    snprintf(header, sizeof header, "Authorization: Bearer %s", token);
    memset(token, 0, sizeof token);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    struct curl_slist *headers = curl_slist_append(NULL, header);
    memset(header, 0, sizeof header);
    CURLM *m = curl_multi_init();
    curl_multi_setopt(m, CURLMOPT_PIPELINING, h2 ? CURLPIPE_MULTIPLEX : CURLPIPE_NOTHING);
    CURL **easy = calloc((size_t)conc, sizeof *easy);
    long started = 0, done = 0, failed = 0;
    double t0 = now();
    for (long i = 0; i < conc && started < n; i++, started++) {
        easy[i] = curl_easy_init();
        curl_easy_setopt(easy[i], CURLOPT_URL, url);
        curl_easy_setopt(easy[i], CURLOPT_CAINFO, ca);
        curl_easy_setopt(easy[i], CURLOPT_HTTPHEADER, headers);
        curl_easy_setopt(easy[i], CURLOPT_WRITEFUNCTION, discard);
        curl_easy_setopt(easy[i], CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(easy[i], CURLOPT_PIPEWAIT, h2 ? 1L : 0L);
        curl_easy_setopt(easy[i], CURLOPT_HTTP_VERSION,
                         h2 ? (long)CURL_HTTP_VERSION_2TLS : (long)CURL_HTTP_VERSION_1_1);
        curl_multi_add_handle(m, easy[i]);
    }
    while (done < n) {
        int running = 0, left = 0;
        curl_multi_perform(m, &running);
        CURLMsg *msg;
        while ((msg = curl_multi_info_read(m, &left)) != NULL) {
            if (msg->msg != CURLMSG_DONE) {
                continue;
            }
            CURL *e = msg->easy_handle;
            long status = 0;
            curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
            if (msg->data.result != CURLE_OK || status != 200) {
                failed++;
            }
            done++;
            curl_multi_remove_handle(m, e);
            if (started < n) {
                started++;
                curl_multi_add_handle(m, e); /* the same easy handle, reused */
            }
        }
        if (done < n) {
            curl_multi_poll(m, NULL, 0, 1000, NULL);
        }
    }
    double dt = now() - t0;
    printf("CURL_FLOOR %ld %.6f %ld\n", n, dt, failed);
    for (long i = 0; i < conc; i++) {
        if (easy[i] != NULL) {
            curl_easy_cleanup(easy[i]);
        }
    }
    free(easy);
    curl_multi_cleanup(m);
    curl_slist_free_all(headers);
    curl_global_cleanup();
    return failed == 0 ? 0 : 1;
}
