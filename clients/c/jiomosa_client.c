/*
 * jiomosa-client: the reference device client for Jiomosa.
 *
 * What a small device (an RTOS board, a feature phone) needs to use the cloud browser, in one
 * file of C with POSIX sockets and nothing else: it creates a session over REST (loading the
 * URL given on the command line), streams it over the plain-WebSocket path
 * (GET /api/session/{id}/stream; its own minimal RFC 6455 client), writes the JPEG frames to
 * disk, and sends a click. Built with -DJIOMOSA_SDL (make SDL=1) it also shows the frames in a
 * window and forwards mouse, wheel and keys. docs/clients.md and docs/protocol.md describe it.
 *
 * Memory: one receive buffer that grows to the largest message (a frame is tens to a few
 * hundred KB) plus a 16 KB socket buffer; nothing is queued. Peak RSS is printed at exit.
 *
 * Output (stdout, one line each, for people and scripts):
 *   session ID
 *   frame seq=N width=W height=H quality=Q bytes=B age_ms=A
 *   event {...json text message...}
 *   done frames=N bytes=B seconds=S peak_rss_kb=K
 * Exit status: 0 finished (frame/time limit, or the server ended the session), 1 usage,
 * 2 network/HTTP error, 3 protocol error.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#ifdef JIOMOSA_SDL
#include <SDL.h>
#include <SDL_image.h>
#endif

#define MAX_MESSAGE (16u * 1024u * 1024u) /* refuse larger WebSocket messages */
#define HTTP_MAX (64u * 1024u)            /* largest REST answer read */
#define FRAME_MAGIC "JMF"
#define FRAME_HEADER_MIN 24

enum { EXIT_OK = 0, EXIT_USAGE = 1, EXIT_NET = 2, EXIT_PROTO = 3 };

/* ------------------------------------------------------------------ options */
struct options {
    char host[300];
    char port[16];
    char prefix[256]; /* path prefix of the streamer, "" or "/something" */
    const char *url;
    const char *session_id;
    const char *out_dir;
    int latest_only;
    long max_frames;
    double max_seconds;
    int click;
    long click_x, click_y;
    int width, height;
    int quality, fps;
    int keep;
    int verbose;
};

static volatile sig_atomic_t g_stop = 0;
static void on_signal(int sig) { (void)sig; g_stop = 1; }

static void die(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("jiomosa-client: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(code);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t epoch_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ------------------------------------------------------------------ randomness */
static uint64_t g_rng;
static void rng_init(void) {
    int fd = open("/dev/urandom", O_RDONLY);
    if (fd < 0 || read(fd, &g_rng, sizeof g_rng) != (ssize_t)sizeof g_rng) {
        g_rng = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    }
    if (fd >= 0) close(fd);
    if (!g_rng) g_rng = 0x9E3779B97F4A7C15ull;
}
static uint32_t rng_next(void) { /* xorshift64*: masks need to be unpredictable, not secret */
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return (uint32_t)((g_rng * 0x2545F4914F6CDD1Dull) >> 32);
}

/* ------------------------------------------------------------------ SHA-1 and base64 */
struct sha1 { uint32_t h[5]; uint64_t len; uint8_t buf[64]; size_t n; };

static uint32_t rol(uint32_t v, int b) { return (v << b) | (v >> (32 - b)); }

static void sha1_block(struct sha1 *s, const uint8_t *p) {
    uint32_t w[80], a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3], e = s->h[4];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 80; i++) w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20) { f = (b & c) | (~b & d); k = 0x5A827999; }
        else if (i < 40) { f = b ^ c ^ d; k = 0x6ED9EBA1; }
        else if (i < 60) { f = (b & c) | (b & d) | (c & d); k = 0x8F1BBCDC; }
        else { f = b ^ c ^ d; k = 0xCA62C1D6; }
        uint32_t t = rol(a, 5) + f + e + k + w[i];
        e = d; d = c; c = rol(b, 30); b = a; a = t;
    }
    s->h[0] += a; s->h[1] += b; s->h[2] += c; s->h[3] += d; s->h[4] += e;
}

static void sha1_init(struct sha1 *s) {
    static const uint32_t h0[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    memcpy(s->h, h0, sizeof h0);
    s->len = 0;
    s->n = 0;
}

static void sha1_update(struct sha1 *s, const void *data, size_t len) {
    const uint8_t *p = data;
    s->len += len;
    while (len--) {
        s->buf[s->n++] = *p++;
        if (s->n == 64) { sha1_block(s, s->buf); s->n = 0; }
    }
}

static void sha1_final(struct sha1 *s, uint8_t out[20]) {
    uint64_t bits = s->len * 8;
    uint8_t pad = 0x80, zero = 0, lenbuf[8];
    sha1_update(s, &pad, 1);
    while (s->n != 56) sha1_update(s, &zero, 1);
    for (int i = 0; i < 8; i++) lenbuf[i] = (uint8_t)(bits >> (56 - 8 * i));
    sha1_update(s, lenbuf, 8);
    for (int i = 0; i < 20; i++) out[i] = (uint8_t)(s->h[i / 4] >> (24 - 8 * (i % 4)));
}

static void base64(const uint8_t *in, size_t n, char *out) {
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        *out++ = tab[v >> 18]; *out++ = tab[(v >> 12) & 63];
        *out++ = tab[(v >> 6) & 63]; *out++ = tab[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0);
        *out++ = tab[v >> 18]; *out++ = tab[(v >> 12) & 63];
        *out++ = i + 1 < n ? tab[(v >> 6) & 63] : '=';
        *out++ = '=';
    }
    *out = '\0';
}

/* ------------------------------------------------------------------ sockets */
static int tcp_connect(const struct options *o) {
    struct addrinfo hints, *res, *ai;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(o->host, o->port, &hints, &res);
    if (rc != 0) die(EXIT_NET, "cannot resolve %s: %s", o->host, gai_strerror(rc));
    int fd = -1;
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
        if (fd < 0) continue;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) break;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) die(EXIT_NET, "cannot connect to %s:%s: %s", o->host, o->port, strerror(errno));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = {30, 0}; /* a silent server cannot hang us forever */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return fd;
}

static int send_some(int fd, const void *data, size_t len) { /* 0, or -1 and errno */
    const uint8_t *p = data;
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static void send_all(int fd, const void *data, size_t len) {
    if (send_some(fd, data, len) != 0) die(EXIT_NET, "send failed: %s", strerror(errno));
}

/* Buffered reading: the bytes after the HTTP headers belong to the first WebSocket frames. */
struct reader { int fd; uint8_t buf[16384]; size_t pos, len; };

static int reader_fill(struct reader *r) {
    if (r->pos < r->len) return 1;
    for (;;) {
        ssize_t n = recv(r->fd, r->buf, sizeof r->buf, 0);
        if (n < 0 && errno == EINTR) {
            if (g_stop) return 0;
            continue;
        }
        if (n <= 0) return 0;
        r->pos = 0;
        r->len = (size_t)n;
        return 1;
    }
}

static int read_exact(struct reader *r, void *dst, size_t len) {
    uint8_t *p = dst;
    while (len) {
        if (!reader_fill(r)) return 0;
        size_t take = r->len - r->pos < len ? r->len - r->pos : len;
        memcpy(p, r->buf + r->pos, take);
        r->pos += take;
        p += take;
        len -= take;
    }
    return 1;
}

/* Reads HTTP response headers (up to the blank line) into out; returns the status code. */
static int read_http_head(struct reader *r, char *out, size_t cap) {
    size_t n = 0;
    while (n + 1 < cap) {
        if (!read_exact(r, out + n, 1)) break;
        n++;
        if (n >= 4 && memcmp(out + n - 4, "\r\n\r\n", 4) == 0) break;
    }
    out[n] = '\0';
    int status = 0;
    if (sscanf(out, "HTTP/1.%*d %d", &status) != 1) return 0;
    return status;
}

static const char *header_value(const char *head, const char *name, char *out, size_t cap) {
    size_t nl = strlen(name);
    for (const char *line = strstr(head, "\r\n"); line && line[2]; line = strstr(line + 2, "\r\n")) {
        const char *h = line + 2;
        if (strncasecmp(h, name, nl) == 0 && h[nl] == ':') {
            h += nl + 1;
            while (*h == ' ' || *h == '\t') h++;
            size_t i = 0;
            while (h[i] && h[i] != '\r' && i + 1 < cap) { out[i] = h[i]; i++; }
            out[i] = '\0';
            return out;
        }
    }
    return NULL;
}

/* ------------------------------------------------------------------ tiny JSON helpers */
/* The string value of "key" in a flat JSON text (enough for the server's answers). */
static int json_string(const char *json, const char *key, char *out, size_t cap) {
    char pat[80];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *p = strstr(json, pat);
    if (!p) return 0;
    p += strlen(pat);
    while (*p == ' ' || *p == ':') p++;
    if (*p != '"') return 0;
    p++;
    size_t i = 0;
    while (*p && *p != '"' && i + 1 < cap) {
        if (*p == '\\' && p[1]) p++;
        out[i++] = *p++;
    }
    out[i] = '\0';
    return *p == '"';
}

/* The last integer value of "key" (the envelope's top-level "id" comes last). */
static long json_last_int(const char *json, const char *key) {
    char pat[80];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = NULL;
    for (const char *q = strstr(json, pat); q; q = strstr(q + 1, pat)) p = q;
    return p ? strtol(p + strlen(pat), NULL, 10) : -1;
}

static void json_escape(const char *in, char *out, size_t cap) {
    size_t i = 0;
    for (; *in && i + 7 < cap; in++) {
        unsigned char c = (unsigned char)*in;
        if (c == '"' || c == '\\') { out[i++] = '\\'; out[i++] = (char)c; }
        else if (c < 0x20) i += (size_t)snprintf(out + i, cap - i, "\\u%04x", c);
        else out[i++] = (char)c;
    }
    out[i] = '\0';
}

/* ------------------------------------------------------------------ REST */
static int http_json(const struct options *o, const char *method, const char *path,
                     const char *body, char *resp, size_t cap) {
    int fd = tcp_connect(o);
    char head[1024];
    size_t blen = body ? strlen(body) : 0;
    int n = snprintf(head, sizeof head,
                     "%s %s%s HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\n"
                     "Accept: application/json\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n",
                     method, o->prefix, path, o->host, o->port, blen);
    if (n < 0 || (size_t)n >= sizeof head) die(EXIT_USAGE, "request line too long");
    send_all(fd, head, (size_t)n);
    if (blen) send_all(fd, body, blen);
    struct reader *r = calloc(1, sizeof *r);
    if (!r) die(EXIT_NET, "out of memory");
    r->fd = fd;
    char rhead[4096], value[64];
    int status = read_http_head(r, rhead, sizeof rhead);
    if (header_value(rhead, "Transfer-Encoding", value, sizeof value))
        die(EXIT_PROTO, "chunked HTTP answers are not supported");
    size_t got = 0;
    while (got + 1 < cap && reader_fill(r)) { /* Connection: close: the body ends at EOF */
        size_t take = r->len - r->pos;
        if (take > cap - 1 - got) take = cap - 1 - got;
        memcpy(resp + got, r->buf + r->pos, take);
        r->pos += take;
        got += take;
    }
    resp[got] = '\0';
    free(r);
    close(fd);
    return status;
}

static void create_session(const struct options *o, char *id, size_t cap) {
    char url[2048], body[2400], resp[HTTP_MAX];
    json_escape(o->url, url, sizeof url);
    if (o->width && o->height)
        snprintf(body, sizeof body, "{\"url\":\"%s\",\"width\":%d,\"height\":%d,\"mobile\":%s}",
                 url, o->width, o->height, o->width < 800 ? "true" : "false");
    else
        snprintf(body, sizeof body, "{\"url\":\"%s\"}", url);
    int status = http_json(o, "POST", "/api/session/create", body, resp, sizeof resp);
    if (status != 201 || !json_string(resp, "session_id", id, cap))
        die(EXIT_NET, "session create failed (HTTP %d): %s", status, resp);
    printf("session %s\n", id);
    fflush(stdout);
}

static void close_session(const struct options *o, const char *id) {
    char path[512], resp[4096];
    snprintf(path, sizeof path, "/api/session/%s/close", id);
    int status = http_json(o, "POST", path, "{}", resp, sizeof resp);
    if (o->verbose) fprintf(stderr, "close: HTTP %d %s\n", status, resp);
}

/* ------------------------------------------------------------------ WebSocket */
enum { OP_CONT = 0, OP_TEXT = 1, OP_BINARY = 2, OP_CLOSE = 8, OP_PING = 9, OP_PONG = 10 };

/* Client frames are masked (RFC 6455 5.3); payloads here are small control/JSON texts.
 * Returns 0, or -1 if the connection is gone. */
static int ws_try_send(int fd, int opcode, const void *data, size_t len) {
    uint8_t head[14];
    size_t h = 0;
    head[h++] = (uint8_t)(0x80 | opcode);
    if (len < 126) {
        head[h++] = (uint8_t)(0x80 | len);
    } else if (len < 65536) {
        head[h++] = 0x80 | 126;
        head[h++] = (uint8_t)(len >> 8);
        head[h++] = (uint8_t)len;
    } else {
        head[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--) head[h++] = (uint8_t)((uint64_t)len >> (8 * i));
    }
    uint32_t m = rng_next();
    uint8_t mask[4] = {(uint8_t)(m >> 24), (uint8_t)(m >> 16), (uint8_t)(m >> 8), (uint8_t)m};
    memcpy(head + h, mask, 4);
    h += 4;
    if (send_some(fd, head, h) != 0) return -1;
    const uint8_t *p = data;
    uint8_t chunk[1024];
    for (size_t off = 0; off < len;) {
        size_t n = len - off < sizeof chunk ? len - off : sizeof chunk;
        for (size_t i = 0; i < n; i++) chunk[i] = p[off + i] ^ mask[(off + i) & 3];
        if (send_some(fd, chunk, n) != 0) return -1;
        off += n;
    }
    return 0;
}

static void ws_send(int fd, int opcode, const void *data, size_t len) {
    if (ws_try_send(fd, opcode, data, len) != 0)
        die(EXIT_NET, "send failed: %s", strerror(errno));
}

static void ws_send_text(int fd, const char *text) { ws_send(fd, OP_TEXT, text, strlen(text)); }

static void ws_connect(const struct options *o, struct reader *r, const char *id) {
    uint8_t nonce[16];
    for (int i = 0; i < 16; i += 4) {
        uint32_t v = rng_next();
        memcpy(nonce + i, &v, 4);
    }
    char key[32], query[64] = "", req[1024], expected[32];
    base64(nonce, sizeof nonce, key);
    if (o->fps || o->quality) {
        int n = 0;
        if (o->fps) n += snprintf(query + n, sizeof query - (size_t)n, "?fps=%d", o->fps);
        if (o->quality)
            snprintf(query + n, sizeof query - (size_t)n, "%cquality=%d", n ? '&' : '?',
                     o->quality);
    }
    int n = snprintf(req, sizeof req,
                     "GET %s/api/session/%s/stream%s HTTP/1.1\r\nHost: %s:%s\r\n"
                     "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
                     o->prefix, id, query, o->host, o->port, key);
    if (n < 0 || (size_t)n >= sizeof req) die(EXIT_USAGE, "request too long");
    send_all(r->fd, req, (size_t)n);
    char head[4096], accept[64];
    int status = read_http_head(r, head, sizeof head);
    if (status != 101) { /* a JSON error; the connection stays open, so read Content-Length */
        char body[1024] = "", length[16] = "0";
        size_t got = 0, want = 0;
        header_value(head, "Content-Length", length, sizeof length);
        want = (size_t)strtoul(length, NULL, 10);
        if (want > sizeof body - 1) want = sizeof body - 1;
        while (got < want && reader_fill(r)) {
            size_t take = r->len - r->pos;
            if (take > want - got) take = want - got;
            memcpy(body + got, r->buf + r->pos, take);
            r->pos += take;
            got += take;
        }
        body[got] = '\0';
        die(EXIT_NET, "stream refused (HTTP %d): %s", status, body);
    }
    /* Sec-WebSocket-Accept = base64(SHA-1(key + GUID)) proves a WebSocket server answered. */
    struct sha1 s;
    uint8_t digest[20];
    sha1_init(&s);
    sha1_update(&s, key, strlen(key));
    sha1_update(&s, "258EAFA5-E914-47DA-95CA-C5AB0DC85B11", 36);
    sha1_final(&s, digest);
    base64(digest, sizeof digest, expected);
    if (!header_value(head, "Sec-WebSocket-Accept", accept, sizeof accept) ||
        strcmp(accept, expected) != 0)
        die(EXIT_PROTO, "bad Sec-WebSocket-Accept in the handshake");
}

struct message { uint8_t *data; size_t len, cap; int opcode; };

static void message_reserve(struct message *m, size_t need) {
    if (need <= m->cap) return;
    if (need > MAX_MESSAGE) die(EXIT_PROTO, "message of %zu bytes is too large", need);
    size_t cap = m->cap ? m->cap : 65536;
    while (cap < need) cap *= 2;
    uint8_t *p = realloc(m->data, cap + 1);
    if (!p) die(EXIT_NET, "out of memory for a %zu-byte message", need);
    m->data = p;
    m->cap = cap;
}

/* Reads one whole message (data frames reassembled; pings answered on the way).
 * Returns its opcode, or -1 when the connection ended. Close frames are returned too. */
static int ws_read(struct reader *r, struct message *m) {
    m->len = 0;
    m->opcode = -1;
    for (;;) {
        uint8_t h[2];
        if (!read_exact(r, h, 2)) return -1;
        int fin = h[0] & 0x80, opcode = h[0] & 0x0F;
        if (h[1] & 0x80) die(EXIT_PROTO, "the server masked a frame");
        uint64_t len = h[1] & 0x7F;
        if (len == 126 || len == 127) {
            uint8_t ext[8];
            size_t n = len == 126 ? 2 : 8;
            if (!read_exact(r, ext, n)) return -1;
            len = 0;
            for (size_t i = 0; i < n; i++) len = len << 8 | ext[i];
        }
        if (opcode >= 8) { /* control frames: at most 125 bytes, never fragmented */
            uint8_t ctl[125];
            if (len > sizeof ctl || !fin) die(EXIT_PROTO, "bad control frame");
            if (!read_exact(r, ctl, (size_t)len)) return -1;
            if (opcode == OP_PING) {
                ws_send(r->fd, OP_PONG, ctl, (size_t)len);
                continue;
            }
            if (opcode == OP_PONG) continue;
            if (opcode == OP_CLOSE) {
                message_reserve(m, (size_t)len);
                memcpy(m->data, ctl, (size_t)len);
                m->len = (size_t)len;
                m->opcode = OP_CLOSE;
                return OP_CLOSE;
            }
            die(EXIT_PROTO, "unknown control opcode %d", opcode);
        }
        if (opcode == OP_CONT ? m->opcode < 0 : m->opcode >= 0)
            die(EXIT_PROTO, "bad fragmentation");
        if (opcode != OP_CONT) m->opcode = opcode;
        message_reserve(m, m->len + (size_t)len);
        if (!read_exact(r, m->data + m->len, (size_t)len)) return -1;
        m->len += (size_t)len;
        if (fin) {
            m->data[m->len] = '\0'; /* texts can be used as C strings */
            return m->opcode;
        }
    }
}

/* ------------------------------------------------------------------ frames */
struct frame { uint32_t seq; unsigned width, height, quality; uint64_t ts_ms;
               const uint8_t *jpeg; size_t jpeg_len; };

static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int parse_frame(const struct message *m, struct frame *f) {
    const uint8_t *p = m->data;
    if (m->len < FRAME_HEADER_MIN || memcmp(p, FRAME_MAGIC, 3) != 0 || p[3] != 1) return 0;
    size_t hlen = p[4];
    if (hlen < FRAME_HEADER_MIN || hlen + 2 > m->len) return 0;
    f->quality = p[5];
    f->seq = be32(p + 8);
    f->width = (unsigned)p[12] << 8 | p[13];
    f->height = (unsigned)p[14] << 8 | p[15];
    f->ts_ms = (uint64_t)be32(p + 16) << 32 | be32(p + 20);
    f->jpeg = p + hlen;
    f->jpeg_len = m->len - hlen;
    return f->jpeg[0] == 0xFF && f->jpeg[1] == 0xD8;
}

static void write_file(const char *path, const uint8_t *data, size_t len) {
    FILE *fp = fopen(path, "wb");
    if (!fp || fwrite(data, 1, len, fp) != len || fclose(fp) != 0)
        die(EXIT_NET, "cannot write %s: %s", path, strerror(errno));
}

static void save_frame(const struct options *o, const struct frame *f) {
    char path[4096], tmp[4200];
    if (o->latest_only) { /* replaced atomically: a viewer never reads half a picture */
        snprintf(path, sizeof path, "%s/latest.jpg", o->out_dir);
        snprintf(tmp, sizeof tmp, "%s.tmp", path);
        write_file(tmp, f->jpeg, f->jpeg_len);
        if (rename(tmp, path) != 0) die(EXIT_NET, "rename %s: %s", tmp, strerror(errno));
    } else {
        snprintf(path, sizeof path, "%s/frame-%06u.jpg", o->out_dir, f->seq);
        write_file(path, f->jpeg, f->jpeg_len);
    }
}

/* ------------------------------------------------------------------ optional display */
#ifdef JIOMOSA_SDL
static SDL_Window *g_win;
static SDL_Renderer *g_ren;
static SDL_Texture *g_tex;
static int g_tex_w, g_tex_h;

static void display_frame(const struct frame *f) {
    if (!g_win) {
        if (SDL_Init(SDL_INIT_VIDEO) != 0) die(EXIT_NET, "SDL: %s", SDL_GetError());
        IMG_Init(IMG_INIT_JPG);
        g_win = SDL_CreateWindow("Jiomosa", SDL_WINDOWPOS_UNDEFINED, SDL_WINDOWPOS_UNDEFINED,
                                 (int)f->width, (int)f->height, SDL_WINDOW_RESIZABLE);
        g_ren = g_win ? SDL_CreateRenderer(g_win, -1, 0) : NULL;
        if (!g_ren) die(EXIT_NET, "SDL: %s", SDL_GetError());
        SDL_RenderSetLogicalSize(g_ren, (int)f->width, (int)f->height);
        SDL_StartTextInput();
    }
    SDL_RWops *rw = SDL_RWFromConstMem(f->jpeg, (int)f->jpeg_len);
    SDL_Surface *img = rw ? IMG_LoadJPG_RW(rw) : NULL;
    if (rw) SDL_RWclose(rw);
    if (!img) return;
    if (!g_tex || g_tex_w != img->w || g_tex_h != img->h) {
        if (g_tex) SDL_DestroyTexture(g_tex);
        g_tex = SDL_CreateTexture(g_ren, SDL_PIXELFORMAT_RGB888, SDL_TEXTUREACCESS_STREAMING,
                                  img->w, img->h);
        g_tex_w = img->w;
        g_tex_h = img->h;
        SDL_RenderSetLogicalSize(g_ren, img->w, img->h);
    }
    SDL_Surface *rgb = SDL_ConvertSurfaceFormat(img, SDL_PIXELFORMAT_RGB888, 0);
    SDL_FreeSurface(img);
    if (!rgb) return;
    SDL_UpdateTexture(g_tex, NULL, rgb->pixels, rgb->pitch);
    SDL_FreeSurface(rgb);
    SDL_RenderClear(g_ren);
    SDL_RenderCopy(g_ren, g_tex, NULL, NULL);
    SDL_RenderPresent(g_ren);
}

static const char *sdl_key_name(SDL_Keycode k) {
    switch (k) {
    case SDLK_RETURN: return "Enter";       case SDLK_BACKSPACE: return "Backspace";
    case SDLK_TAB: return "Tab";            case SDLK_ESCAPE: return "Escape";
    case SDLK_DELETE: return "Delete";      case SDLK_UP: return "ArrowUp";
    case SDLK_DOWN: return "ArrowDown";     case SDLK_LEFT: return "ArrowLeft";
    case SDLK_RIGHT: return "ArrowRight";   case SDLK_HOME: return "Home";
    case SDLK_END: return "End";            case SDLK_PAGEUP: return "PageUp";
    case SDLK_PAGEDOWN: return "PageDown";
    default: return NULL;
    }
}

/* Window input goes to the remote page: coordinates are frame pixels (logical size). */
static void display_events(int fd) {
    SDL_Event ev;
    char msg[512], text[256];
    while (g_win && SDL_PollEvent(&ev)) {
        msg[0] = '\0';
        if (ev.type == SDL_QUIT) g_stop = 1;
        else if (ev.type == SDL_MOUSEBUTTONUP && ev.button.button == SDL_BUTTON_LEFT)
            snprintf(msg, sizeof msg, "{\"event\":\"input:click\",\"data\":{\"x\":%d,\"y\":%d}}",
                     ev.button.x, ev.button.y);
        else if (ev.type == SDL_MOUSEWHEEL)
            snprintf(msg, sizeof msg,
                     "{\"event\":\"input:scroll\",\"data\":{\"deltaX\":%d,\"deltaY\":%d}}",
                     -ev.wheel.x * 100, -ev.wheel.y * 100);
        else if (ev.type == SDL_KEYDOWN && sdl_key_name(ev.key.keysym.sym))
            snprintf(msg, sizeof msg, "{\"event\":\"input:key\",\"data\":{\"key\":\"%s\"}}",
                     sdl_key_name(ev.key.keysym.sym));
        else if (ev.type == SDL_TEXTINPUT) {
            json_escape(ev.text.text, text, sizeof text);
            snprintf(msg, sizeof msg, "{\"event\":\"input:text\",\"data\":{\"text\":\"%s\"}}",
                     text);
        }
        if (msg[0]) ws_send_text(fd, msg);
    }
}

static void display_close(void) {
    if (g_tex) SDL_DestroyTexture(g_tex);
    if (g_ren) SDL_DestroyRenderer(g_ren);
    if (g_win) SDL_DestroyWindow(g_win);
    if (g_win) { IMG_Quit(); SDL_Quit(); }
}
#endif

/* ------------------------------------------------------------------ main */
/* Peak RSS in KB: VmHWM of this process image. (getrusage's ru_maxrss is not used when /proc
 * is there: Linux carries it over from the parent across fork and exec, so a client started
 * from a big process would report the parent's size.) */
static long peak_rss_kb(void) {
    long kb = -1;
    FILE *fp = fopen("/proc/self/status", "r");
    char line[256];
    while (fp && fgets(line, sizeof line, fp)) {
        if (sscanf(line, "VmHWM: %ld kB", &kb) == 1) break;
    }
    if (fp) fclose(fp);
    if (kb < 0) {
        struct rusage ru;
        if (getrusage(RUSAGE_SELF, &ru) == 0) kb = ru.ru_maxrss;
    }
    return kb;
}

static void usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s [options] URL\n"
            "  -s BASE     streamer base URL (default http://127.0.0.1:5000)\n"
            "  -S ID       stream an existing session instead of creating one (URL optional)\n"
            "  -w WxH      viewport of the new session in CSS pixels (default: server's)\n"
            "  -o DIR      write each frame to DIR/frame-SEQ.jpg\n"
            "  -l          with -o: keep only DIR/latest.jpg (replaced atomically)\n"
            "  -n N        stop after N frames (and, with -c, the click's answer)\n"
            "  -t SECONDS  stop after SECONDS\n"
            "  -c X,Y      click at frame pixel X,Y once the first frame arrived\n"
            "  -q Q        fixed JPEG quality 10-90 (default: adaptive)\n"
            "  -f FPS      frame-rate cap 1-60\n"
            "  -k          keep the session open at exit (default: close it if created here)\n"
            "  -v          print every text message\n",
            argv0);
    exit(EXIT_USAGE);
}

static void parse_base(struct options *o, const char *base) {
    if (strncmp(base, "http://", 7) != 0)
        die(EXIT_USAGE, "only http:// bases are supported (terminate TLS in front): %s", base);
    const char *p = base + 7, *slash = strchr(p, '/');
    size_t hostlen = slash ? (size_t)(slash - p) : strlen(p);
    char hostport[300];
    if (hostlen == 0 || hostlen >= sizeof hostport) die(EXIT_USAGE, "bad base URL %s", base);
    memcpy(hostport, p, hostlen);
    hostport[hostlen] = '\0';
    const char *host = hostport, *colon;
    if (hostport[0] == '[') { /* [IPv6]:port */
        char *end = strchr(hostport, ']');
        if (!end) die(EXIT_USAGE, "bad base URL %s", base);
        *end = '\0';
        host = hostport + 1;
        colon = end[1] == ':' ? end + 1 : NULL;
    } else {
        colon = strrchr(hostport, ':');
        if (colon) hostport[colon - hostport] = '\0';
    }
    snprintf(o->host, sizeof o->host, "%s", host);
    snprintf(o->port, sizeof o->port, "%s", colon ? colon + 1 : "80");
    snprintf(o->prefix, sizeof o->prefix, "%s", slash ? slash : "");
    size_t pl = strlen(o->prefix);
    if (pl && o->prefix[pl - 1] == '/') o->prefix[pl - 1] = '\0';
}

int main(int argc, char **argv) {
    struct options o;
    memset(&o, 0, sizeof o);
    const char *base = "http://127.0.0.1:5000";
    int c;
    while ((c = getopt(argc, argv, "s:S:w:o:ln:t:c:q:f:kvh")) != -1) {
        switch (c) {
        case 's': base = optarg; break;
        case 'S': o.session_id = optarg; break;
        case 'w': if (sscanf(optarg, "%dx%d", &o.width, &o.height) != 2) usage(argv[0]); break;
        case 'o': o.out_dir = optarg; break;
        case 'l': o.latest_only = 1; break;
        case 'n': o.max_frames = atol(optarg); break;
        case 't': o.max_seconds = atof(optarg); break;
        case 'c':
            if (sscanf(optarg, "%ld,%ld", &o.click_x, &o.click_y) != 2) usage(argv[0]);
            o.click = 1;
            break;
        case 'q': o.quality = atoi(optarg); break;
        case 'f': o.fps = atoi(optarg); break;
        case 'k': o.keep = 1; break;
        case 'v': o.verbose = 1; break;
        default: usage(argv[0]);
        }
    }
    o.url = optind < argc ? argv[optind] : NULL;
    if (!o.url && !o.session_id) usage(argv[0]);
    parse_base(&o, base);
    rng_init();
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: a blocked recv returns EINTR */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    if (o.out_dir) mkdir(o.out_dir, 0755);

    char id[160];
    int created = 0;
    if (o.session_id) {
        snprintf(id, sizeof id, "%s", o.session_id);
    } else {
        create_session(&o, id, sizeof id);
        created = 1;
    }

    struct reader *r = calloc(1, sizeof *r);
    struct message m = {0};
    if (!r) die(EXIT_NET, "out of memory");
    r->fd = tcp_connect(&o);
    ws_connect(&o, r, id);

    double started = now_s();
    long frames = 0, click_id = 0;
    int click_done = 0; /* the click's acknowledgement (or error) has arrived */
    unsigned long long bytes = 0;
    int status = EXIT_OK, server_closed = 0;
    while (!g_stop) {
        if (o.max_seconds > 0 && now_s() - started >= o.max_seconds) break;
        if (r->pos >= r->len) { /* nothing buffered: wait for the socket (or the clock) */
            struct pollfd pfd = {r->fd, POLLIN, 0};
#ifdef JIOMOSA_SDL
            display_events(r->fd);
            int rc = poll(&pfd, 1, 10);
#else
            int rc = poll(&pfd, 1, 200);
#endif
            if (rc == 0 || (rc < 0 && errno == EINTR)) continue;
        }
        int op = ws_read(r, &m);
        if (op < 0) {
            if (!g_stop) { fprintf(stderr, "jiomosa-client: connection lost\n"); status = EXIT_NET; }
            break;
        }
        if (op == OP_CLOSE) {
            unsigned code = m.len >= 2 ? (unsigned)m.data[0] << 8 | m.data[1] : 1005;
            printf("closed code=%u reason=%.*s\n", code, m.len > 2 ? (int)(m.len - 2) : 0,
                   m.len > 2 ? (const char *)m.data + 2 : "");
            /* Echo the code; the server may already have gone, which is fine now. */
            ws_try_send(r->fd, OP_CLOSE, m.data, m.len >= 2 ? 2 : 0);
            server_closed = 1;
            break;
        }
        if (op == OP_TEXT) {
            char event[64] = "";
            json_string((const char *)m.data, "event", event, sizeof event);
            int is_ack = strcmp(event, "input:acknowledged") == 0;
            if (click_id && (is_ack || strcmp(event, "error") == 0) &&
                json_last_int((const char *)m.data, "id") == click_id) {
                click_done = 1;
                if (!is_ack) status = EXIT_PROTO; /* the click was refused */
            }
            if (o.verbose || strcmp(event, "input:acknowledged") == 0 ||
                strcmp(event, "error") == 0 || strcmp(event, "session:closed") == 0 ||
                strcmp(event, "subscribed") == 0)
                printf("event %s\n", (const char *)m.data);
            fflush(stdout);
            if (o.max_frames > 0 && frames >= o.max_frames && (!o.click || click_done)) break;
            continue;
        }
        struct frame f;
        if (op != OP_BINARY || !parse_frame(&m, &f)) {
            fprintf(stderr, "jiomosa-client: not a frame message (%zu bytes)\n", m.len);
            status = EXIT_PROTO;
            break;
        }
        frames++;
        bytes += f.jpeg_len;
        uint64_t at = epoch_ms();
        printf("frame seq=%u width=%u height=%u quality=%u bytes=%zu age_ms=%lld\n", f.seq,
               f.width, f.height, f.quality, f.jpeg_len,
               (long long)(at >= f.ts_ms ? at - f.ts_ms : 0));
        fflush(stdout);
        if (o.out_dir) save_frame(&o, &f);
#ifdef JIOMOSA_SDL
        display_frame(&f);
#endif
        if (o.click && !click_id) {
            char msg[160];
            click_id = 1;
            snprintf(msg, sizeof msg,
                     "{\"event\":\"input:click\",\"data\":{\"x\":%ld,\"y\":%ld},\"id\":%ld}",
                     o.click_x, o.click_y, click_id);
            ws_send_text(r->fd, msg);
        }
        if (o.max_frames > 0 && frames >= o.max_frames && (!o.click || click_done)) break;
    }

    if (!server_closed) { /* close handshake: send ours, wait (briefly) for the answer */
        uint8_t code[2] = {1000 >> 8, 1000 & 0xFF};
        ws_try_send(r->fd, OP_CLOSE, code, 2);
        struct timeval tv = {2, 0};
        setsockopt(r->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        double until = now_s() + 2.0;
        int op;
        while (now_s() < until && (op = ws_read(r, &m)) >= 0 && op != OP_CLOSE) {}
    }
    close(r->fd);
#ifdef JIOMOSA_SDL
    display_close();
#endif
    if (created && !o.keep && !server_closed) close_session(&o, id);
    printf("done frames=%ld bytes=%llu seconds=%.2f peak_rss_kb=%ld\n", frames, bytes,
           now_s() - started, peak_rss_kb());
    free(m.data);
    free(r);
    return status;
}
