/*
 * libFuzzer harness for jiomosa-client's parsers (jiomosa_proto.c): everything the client does
 * with bytes a server — or anyone on a plain-http path — sends it.
 *
 * One input is one connection as the client sees it:
 *   byte 0  how the stream is cut into reads: 0 = one read, k = pieces of 1..251 bytes
 *           (the sizes vary with k), so frame headers and payloads split at every point
 *   byte 1  bit 0: the stream starts with the HTTP answer to the upgrade request (its head is
 *           checked as ws_connect does, with key "dGhlIHNhbXBsZSBub25jZQ==" of RFC 6455);
 *           bits 1-7: the client's message limit (-m), (1 + bits) KiB, so the limit is hit
 *   rest    the bytes from the server
 * Each complete message goes where the client sends it: texts to the JSON lookups and the
 * escaping printer, binaries to the JMF parser, closes to the close-code printer.
 *
 * Beyond the sanitizers, CHECK() aborts when an invariant of the decoder breaks: a message
 * larger than the limit, a buffer larger than the limit, bytes consumed that were not given.
 * fuzz/seeds.py writes the seed corpus; mk/cfuzz.mk (`make fuzz-c`) runs it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jiomosa_proto.h"

#define CHECK(x)                                                                         \
    do {                                                                                 \
        if (!(x)) {                                                                      \
            fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, __LINE__, #x);    \
            abort();                                                                     \
        }                                                                                \
    } while (0)

#define RFC_KEY "dGhlIHNhbXBsZSBub25jZQ=="
#define HEAD_MAX 4096 /* as HTTP_HEAD_MAX in jiomosa_client.c */

static FILE *sink(void) { /* where the client's printing goes: nowhere, but really written */
    static FILE *fp;
    if (!fp) fp = fopen("/dev/null", "w");
    CHECK(fp != NULL);
    return fp;
}

static volatile unsigned g_sum; /* reading every byte lets ASan see each out-of-bounds one */

static void touch(const uint8_t *p, size_t n) {
    unsigned s = 0;
    for (size_t i = 0; i < n; i++) s += p[i];
    g_sum += s;
}

/* Returns the length of the head (through the blank line), 0 if the client would refuse it. */
static size_t http_head(const uint8_t *data, size_t size) {
    size_t limit = size < HEAD_MAX - 1 ? size : HEAD_MAX - 1;
    size_t end = 0;
    for (size_t i = 3; i < limit && !end; i++)
        if (memcmp(data + i - 3, "\r\n\r\n", 4) == 0) end = i + 1;
    if (!end) return 0;
    char head[HEAD_MAX], value[64], why[128];
    memcpy(head, data, end);
    head[end] = '\0';
    int status = jm_http_status(head);
    CHECK(status == 0 || (status >= 100 && status <= 599));
    size_t length = jm_content_length(head);
    CHECK(length < 1000000000u);
    if (jm_header_value(head, "Transfer-Encoding", value, sizeof value))
        CHECK(strlen(value) < sizeof value);
    if (jm_ws_check_upgrade(head, RFC_KEY, why, sizeof why) == 0)
        CHECK(status == 101);
    else
        CHECK(why[0] != '\0');
    return end;
}

static void text_message(const struct jm_msg *m) {
    char event[64], escaped[96];
    CHECK(m->data[m->len] == '\0');
    CHECK(jm_utf8_valid(m->data, m->len));
    const char *json = (const char *)m->data;
    if (jm_json_string(json, "event", event, sizeof event)) CHECK(strlen(event) < sizeof event);
    jm_json_string(json, "session_id", event, sizeof event);
    (void)jm_session_id_valid(event);
    (void)jm_json_last_int(json, "id");
    jm_json_escape(json, escaped, sizeof escaped);
    CHECK(strlen(escaped) < sizeof escaped);
    jm_print_text(sink(), m->data, m->len);
}

static void binary_message(const struct jm_msg *m) {
    struct jm_frame f;
    if (!jm_frame_parse(m->data, m->len, &f)) return;
    CHECK(f.jpeg >= m->data + JM_FRAME_HEADER_MIN && f.jpeg_len >= 2);
    CHECK(f.jpeg + f.jpeg_len == m->data + m->len);
    CHECK(f.width <= 0xFFFF && f.height <= 0xFFFF && f.quality <= 0xFF);
    touch(f.jpeg, f.jpeg_len);
}

static void close_message(const struct jm_msg *m) {
    CHECK(m->len != 1 && m->len <= 125);
    CHECK(m->len == 0 ? m->close_code == 1005 : m->close_code >= 1000 && m->close_code < 5000);
    if (m->len > 2) jm_print_text(sink(), m->data + 2, m->len - 2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    unsigned cut = data[0], flags = data[1];
    data += 2;
    size -= 2;
    if (flags & 1) {
        size_t head = http_head(data, size);
        if (!head) return 0;
        /* The client stops at a bad upgrade answer; the frames are decoded regardless, so
         * the fuzzer need not find a SHA-1 preimage to reach the decoder. */
        data += head;
        size -= head;
    }
    struct jm_ws d;
    size_t limit = (size_t)(1 + (flags >> 1)) * 1024;
    jm_ws_init(&d, limit);
    CHECK(d.max_message == limit);
    size_t pos = 0;
    for (unsigned turn = 0; pos < size; turn++) {
        size_t n = size - pos;
        if (cut) {
            size_t piece = (size_t)(cut * (turn + 7u)) % 251u + 1u;
            if (piece < n) n = piece;
        }
        /* A piece copied to its own allocation: reading past it is an ASan report. */
        uint8_t *piece = malloc(n);
        CHECK(piece != NULL);
        memcpy(piece, data + pos, n);
        const uint8_t *p = piece;
        size_t left = n;
        int failed = 0;
        while (left) {
            struct jm_msg m;
            size_t used = 0;
            int rc = jm_ws_feed(&d, p, left, &used, &m);
            CHECK(used <= left);
            CHECK(d.len <= d.max_message && d.cap <= d.max_message);
            p += used;
            left -= used;
            if (rc == JM_WS_ERROR) {
                CHECK(d.error[0] != '\0');
                CHECK(d.fail_code == JM_CLOSE_PROTOCOL || d.fail_code == JM_CLOSE_BAD_DATA ||
                      d.fail_code == JM_CLOSE_TOO_BIG);
                size_t again = 1;
                CHECK(jm_ws_feed(&d, p, left, &again, &m) == JM_WS_ERROR && again == 0);
                failed = 1;
                break;
            }
            if (rc == JM_WS_MORE) {
                CHECK(left == 0);
                break;
            }
            CHECK(rc == JM_WS_MESSAGE && used > 0);
            CHECK(m.len <= (m.opcode >= 8 ? 125u : limit));
            touch(m.data, m.len);
            if (m.opcode == JM_OP_TEXT) text_message(&m);
            else if (m.opcode == JM_OP_BINARY) binary_message(&m);
            else if (m.opcode == JM_OP_CLOSE) close_message(&m);
            else CHECK(m.opcode == JM_OP_PING || m.opcode == JM_OP_PONG);
        }
        free(piece);
        pos += n - left;
        if (failed) break;
    }
    jm_ws_free(&d);
    return 0;
}
