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
 * Delta frames (jiomosa_delta.c), as a client with -d handles them: a JMF frame becomes the
 * picture held (decoded when it is a real JPEG and the harness was built with DELTA=1;
 * otherwise, so the fuzzer need not make a JPEG to get further, a generated picture of the
 * frame's size, up to 256x256), and a JMD message is parsed and applied to it. Images in a
 * JMD are decoded by the real libjpeg/libpng readers (DELTA=1 builds) unless they start with
 * "RAW1": then u16 width, u16 height and the RGB rows follow (a stand-in codec that lets the
 * fuzzer reach every drawing path).
 *
 * Beyond the sanitizers, CHECK() aborts when an invariant breaks: a message larger than the
 * limit, a buffer larger than the limit, bytes consumed that were not given; a parsed JMD
 * with a rectangle outside its picture; a rejected update that changed the picture; a failed
 * one that left it valid; an applied one whose pixels differ from a naive re-implementation
 * of the contract (checked when no two rectangles of an image overlap).
 * fuzz/seeds.py writes the seed corpus; mk/cfuzz.mk (`make fuzz-c`) runs it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jiomosa_delta.h"
#include "jiomosa_proto.h"
#ifdef JIOMOSA_DELTA
#include "jiomosa_image.h"
#endif

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

/* ------------------------------------------------------------------ delta frames */
#define PATTERN 0        /* the reader's format for a generated picture */
#define HARNESS_MAX 256  /* largest generated picture, each side */

struct harness_reader {
    struct jm_image_reader rd;
    struct jm_image_reader *real; /* libjpeg/libpng (DELTA=1), or NULL */
    int kind;                     /* 0 closed, 1 raw, 2 pattern, 3 real */
    const uint8_t *data;
    unsigned w, h, y;
    uint32_t seed;
};

static struct harness_reader g_reader;
static struct jm_picture g_pic;

static int h_open(void *state, int format, const uint8_t *data, size_t len, unsigned *w,
                  unsigned *h, char *why, size_t cap) {
    struct harness_reader *r = state;
    CHECK(r->kind == 0); /* jiomosa_delta.c closes every image it opened */
    r->y = 0;
    if (format == PATTERN) {
        r->kind = 2;
        *w = r->w;
        *h = r->h;
        return 0;
    }
    if (len >= 8 && memcmp(data, "RAW1", 4) == 0) {
        unsigned rw = (unsigned)data[4] << 8 | data[5], rh = (unsigned)data[6] << 8 | data[7];
        if ((uint64_t)rw * rh * 3 != len - 8) {
            snprintf(why, cap, "RAW1 of %ux%u in %zu bytes", rw, rh, len);
            return -1;
        }
        r->kind = 1;
        r->data = data + 8;
        r->w = *w = rw;
        r->h = *h = rh;
        return 0;
    }
    if (!r->real) {
        snprintf(why, cap, "no real decoders in this build");
        return -1;
    }
    if (r->real->open(r->real->state, format, data, len, w, h, why, cap) != 0) return -1;
    r->kind = 3;
    r->w = *w;
    r->h = *h;
    return 0;
}

static int h_row(void *state, uint8_t *row, char *why, size_t cap) {
    struct harness_reader *r = state;
    CHECK(r->kind != 0 && r->y < r->h); /* never a row past the image */
    unsigned y = r->y++;
    if (r->kind == 1) {
        memcpy(row, r->data + (size_t)y * r->w * 3, (size_t)r->w * 3);
    } else if (r->kind == 2) {
        for (unsigned x = 0; x < r->w; x++) {
            row[3 * x] = (uint8_t)(x * 7 + r->seed);
            row[3 * x + 1] = (uint8_t)(y * 13);
            row[3 * x + 2] = (uint8_t)(x ^ y);
        }
    } else if (r->real->read_row(r->real->state, row, why, cap) != 0) {
        r->kind = 0; /* the real reader closed itself */
        return -1;
    }
    touch(row, (size_t)r->w * 3);
    return 0;
}

static void h_close(void *state) {
    struct harness_reader *r = state;
    if (r->kind == 3) r->real->close(r->real->state);
    r->kind = 0;
}

static uint64_t hash(const uint8_t *p, size_t n) { /* FNV-1a */
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

static int overlap(const struct jm_delta_rect *a, const struct jm_delta_rect *b) {
    return a->x < b->x + b->w && b->x < a->x + a->w && a->y < b->y + b->h && b->y < a->y + a->h;
}

/* The contract (docs/protocol.md, delta frames), applied naively: whole images decoded, then
 * drawn. 1 if `after` is what it gives from `before`, or if rectangles of one image overlap
 * (their order is then up to the client); 0 if it differs. */
static int reference_matches(const struct jm_delta *d, const uint8_t *before, const uint8_t *after) {
    unsigned W = g_pic.width;
    size_t size = (size_t)W * g_pic.height * 3;
    uint8_t *ref = malloc(size ? size : 1);
    CHECK(ref != NULL);
    memcpy(ref, before, size);
    for (unsigned i = 0; i < d->n_copies; i++) {
        struct jm_delta_copy c;
        jm_delta_copy_at(d, i, &c);
        for (unsigned y = 0; y < c.h; y++)
            memcpy(ref + ((size_t)((long)(c.sy + y) + c.dy) * W + (size_t)((long)c.sx + c.dx)) * 3,
                   before + ((size_t)(c.sy + y) * W + c.sx) * 3, (size_t)c.w * 3);
    }
    int same = 1;
    const uint8_t *pos = d->images;
    for (unsigned i = 0; i < d->n_images && same; i++) {
        struct jm_delta_image img;
        jm_delta_image_at(&pos, &img);
        unsigned n = img.n_rects, drawn = 0, rows = 0;
        for (unsigned k = 0; k < n; k++) {
            struct jm_delta_rect a, b;
            jm_delta_rect_at(&img, k, &a);
            drawn |= a.w && a.h;
            if (a.w && a.h && a.ay + a.h > rows) rows = a.ay + a.h;
            for (unsigned j = 0; j < k && n <= 64; j++) {
                jm_delta_rect_at(&img, j, &b);
                if (a.w && a.h && b.w && b.h && overlap(&a, &b)) n = 65; /* not comparable */
            }
        }
        if (n > 64) {
            free(ref);
            return 1;
        }
        if (!drawn) continue;
        unsigned iw, ih;
        char why[128];
        CHECK(g_reader.rd.open(g_reader.rd.state, img.format, img.data, img.len, &iw, &ih, why,
                               sizeof why) == 0); /* it decoded in the client just now */
        uint8_t *pixels = malloc((size_t)iw * ih * 3);
        CHECK(pixels != NULL && rows <= ih);
        /* Only the rows drawn from: the client does not decode further, so the data after
         * them may be anything. */
        for (unsigned y = 0; y < rows; y++)
            CHECK(g_reader.rd.read_row(g_reader.rd.state, pixels + (size_t)y * iw * 3, why,
                                       sizeof why) == 0);
        g_reader.rd.close(g_reader.rd.state);
        for (unsigned k = 0; k < img.n_rects; k++) {
            struct jm_delta_rect r;
            jm_delta_rect_at(&img, k, &r);
            for (unsigned y = 0; y < r.h; y++)
                memcpy(ref + ((size_t)(r.y + y) * W + r.x) * 3,
                       pixels + ((size_t)(r.ay + y) * iw + r.ax) * 3, (size_t)r.w * 3);
        }
        free(pixels);
    }
    same = memcmp(ref, after, size) == 0;
    free(ref);
    return same;
}

static void key_frame(const struct jm_frame *f) {
    char why[256];
    int rc = jm_picture_load(&g_pic, &g_reader.rd, JM_IMG_JPEG, f->jpeg, f->jpeg_len, f->width,
                             f->height, f->seq, why, sizeof why);
    CHECK(g_reader.kind == 0);
    if (rc == JM_DELTA_OK) {
        CHECK(g_pic.valid && g_pic.seq == f->seq && g_pic.width == f->width);
        return;
    }
    CHECK(why[0] != '\0');
    if (rc == JM_DELTA_BROKEN) CHECK(!g_pic.valid);
    if (f->width && f->height && f->width <= HARNESS_MAX && f->height <= HARNESS_MAX) {
        g_reader.w = f->width; /* not a JPEG that decodes: a generated picture instead */
        g_reader.h = f->height;
        g_reader.seed = f->seq;
        CHECK(jm_picture_load(&g_pic, &g_reader.rd, PATTERN, NULL, 0, f->width, f->height,
                              f->seq, why, sizeof why) == JM_DELTA_OK);
    }
}

static void delta_message(const struct jm_msg *m) {
    struct jm_delta d;
    char why[256];
    why[0] = '\0';
    if (jm_delta_parse(m->data, m->len, &d, why, sizeof why) != 0) {
        CHECK(why[0] != '\0');
        return;
    }
    uint64_t area = (uint64_t)d.width * d.height, copied = 0, drawn = 0;
    CHECK(d.width && d.height && area <= JM_PICTURE_MAX_PIXELS);
    for (unsigned i = 0; i < d.n_copies; i++) {
        struct jm_delta_copy c;
        jm_delta_copy_at(&d, i, &c);
        CHECK(c.sx + c.w <= d.width && c.sy + c.h <= d.height);
        CHECK((long)c.sx + c.dx >= 0 && (long)c.sx + c.dx + (long)c.w <= (long)d.width);
        CHECK((long)c.sy + c.dy >= 0 && (long)c.sy + c.dy + (long)c.h <= (long)d.height);
        copied += (uint64_t)c.w * c.h;
    }
    const uint8_t *pos = d.images;
    for (unsigned i = 0; i < d.n_images; i++) {
        struct jm_delta_image img;
        jm_delta_image_at(&pos, &img);
        CHECK(img.next <= d.end && img.data + img.len == img.next);
        for (unsigned k = 0; k < img.n_rects; k++) {
            struct jm_delta_rect r;
            jm_delta_rect_at(&img, k, &r);
            CHECK(r.x + r.w <= d.width && r.y + r.h <= d.height);
            drawn += (uint64_t)r.w * r.h;
        }
        touch(img.data, img.len);
    }
    CHECK(pos == d.end && copied == d.copied_pixels && drawn == d.drawn_pixels);
    CHECK(copied <= area && drawn <= area);
    size_t size = g_pic.valid ? (size_t)g_pic.width * g_pic.height * 3 : 0;
    uint8_t *before = malloc(size ? size : 1);
    CHECK(before != NULL);
    if (size) memcpy(before, g_pic.rgb, size);
    uint64_t h0 = hash(before, size);
    uint32_t seq0 = g_pic.seq;
    int valid0 = g_pic.valid;
    int rc = jm_delta_apply(&g_pic, &d, &g_reader.rd, why, sizeof why);
    CHECK(g_reader.kind == 0);
    if (rc == JM_DELTA_OK) {
        CHECK(valid0 && g_pic.valid && g_pic.seq == d.seq);
        CHECK(reference_matches(&d, before, g_pic.rgb));
    } else if (rc == JM_DELTA_REJECTED) { /* the picture must be exactly as it was */
        CHECK(why[0] != '\0' && g_pic.valid == valid0 && g_pic.seq == seq0);
        CHECK(!valid0 || hash(g_pic.rgb, size) == h0);
    } else {
        CHECK(rc == JM_DELTA_BROKEN && !g_pic.valid && why[0] != '\0');
    }
    free(before);
}

static void binary_message(const struct jm_msg *m) {
    struct jm_frame f;
    if (m->len >= 3 && memcmp(m->data, JM_DELTA_MAGIC, 3) == 0) {
        delta_message(m);
        return;
    }
    if (!jm_frame_parse(m->data, m->len, &f)) return;
    CHECK(f.jpeg >= m->data + JM_FRAME_HEADER_MIN && f.jpeg_len >= 2);
    CHECK(f.jpeg + f.jpeg_len == m->data + m->len);
    CHECK(f.width <= 0xFFFF && f.height <= 0xFFFF && f.quality <= 0xFF);
    touch(f.jpeg, f.jpeg_len);
    key_frame(&f);
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
    if (!g_reader.rd.open) {
        g_reader.rd = (struct jm_image_reader){h_open, h_row, h_close, &g_reader};
#ifdef JIOMOSA_DELTA
        g_reader.real = jm_image_reader_new();
        CHECK(g_reader.real != NULL);
#endif
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
    jm_picture_free(&g_pic); /* each input is a connection of its own */
    return 0;
}
