/*
 * jiomosa_proto: the parsers of jiomosa-client, fed from buffers (jiomosa_proto.h says why).
 *
 * Rules every function here keeps: a length read from the wire is compared with a bound
 * before it is added to anything or used to size a copy; sums are of values already bounded
 * far below SIZE_MAX (JM_MAX_MESSAGE_CEILING); nothing exits or touches a socket.
 */
#define _POSIX_C_SOURCE 200809L
#include "jiomosa_proto.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ------------------------------------------------------------------ WebSocket decoder */
void jm_ws_init(struct jm_ws *d, size_t max_message) {
    memset(d, 0, sizeof *d);
    if (max_message < JM_MAX_MESSAGE_MIN) max_message = JM_MAX_MESSAGE_MIN;
    if (max_message > JM_MAX_MESSAGE_CEILING) max_message = JM_MAX_MESSAGE_CEILING;
    d->max_message = max_message;
    d->opcode = -1;
}

void jm_ws_free(struct jm_ws *d) {
    free(d->data);
    d->data = NULL;
    d->len = d->cap = 0;
}

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static int fail(struct jm_ws *d, unsigned code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->error, sizeof d->error, fmt, ap);
    va_end(ap);
    d->failed = 1;
    d->fail_code = code;
    return JM_WS_ERROR;
}

/* Grows the message buffer to hold `need` bytes (+1 for a NUL). need <= max_message is
 * checked by the caller, and cap never exceeds max_message, so cap * 2 cannot wrap. */
static int reserve(struct jm_ws *d, size_t need) {
    if (d->data && need <= d->cap) return 0;
    size_t cap = d->cap ? d->cap : 65536;
    if (cap > d->max_message) cap = d->max_message;
    while (cap < need) cap = cap > d->max_message / 2 ? d->max_message : cap * 2;
    uint8_t *p = realloc(d->data, cap + 1);
    if (!p) return fail(d, JM_CLOSE_TOO_BIG, "out of memory for a message of %zu bytes", need);
    d->data = p;
    d->cap = cap;
    return 0;
}

static size_t head_size(const struct jm_ws *d) {
    if (d->head_have < 2) return 2;
    unsigned l = d->head[1] & 0x7Fu;
    return l == 126 ? 4 : l == 127 ? 10 : 2;
}

/* The header is complete: check it against RFC 6455 5.2 and the size limit. */
static int start_frame(struct jm_ws *d) {
    uint8_t b0 = d->head[0], b1 = d->head[1];
    d->fin = (b0 & 0x80) != 0;
    d->frame_op = b0 & 0x0F;
    if (b0 & 0x70) return fail(d, JM_CLOSE_PROTOCOL, "reserved bits set (no extension agreed)");
    if (b1 & 0x80) return fail(d, JM_CLOSE_PROTOCOL, "the server masked a frame");
    uint64_t len = b1 & 0x7Fu;
    if (len == 126) {
        len = (uint64_t)d->head[2] << 8 | d->head[3];
    } else if (len == 127) {
        len = 0;
        for (int i = 2; i < 10; i++) len = len << 8 | d->head[i];
        if (len >> 63) return fail(d, JM_CLOSE_PROTOCOL, "64-bit frame length with the top bit set");
    }
    if (d->frame_op >= 8) { /* control frames: at most 125 bytes, never fragmented */
        if (d->frame_op > JM_OP_PONG)
            return fail(d, JM_CLOSE_PROTOCOL, "reserved control opcode %d", d->frame_op);
        if (!d->fin || len > 125) return fail(d, JM_CLOSE_PROTOCOL, "bad control frame");
        d->ctl_len = 0;
    } else {
        if (d->frame_op > JM_OP_BINARY)
            return fail(d, JM_CLOSE_PROTOCOL, "reserved data opcode %d", d->frame_op);
        if (d->frame_op == JM_OP_CONT ? d->opcode < 0 : d->opcode >= 0)
            return fail(d, JM_CLOSE_PROTOCOL, "bad fragmentation");
        if (d->frame_op != JM_OP_CONT) d->opcode = d->frame_op;
        /* The root of the old overflow: compare before adding (d->len <= max_message). */
        if (len > d->max_message - d->len)
            return fail(d, JM_CLOSE_TOO_BIG,
                        "message of %llu bytes or more is larger than the limit of %zu (-m)",
                        (unsigned long long)(d->len + len), d->max_message);
        /* Room for the whole frame at once, as announced (bounded just above): growing it
         * piece by piece would copy it on each doubling and raise the client's peak RSS. */
        if (reserve(d, d->len + (size_t)len) != 0) return JM_WS_ERROR;
    }
    d->remaining = len;
    return 0;
}

static int close_code_valid(unsigned code) { /* RFC 6455 7.4 and the IANA registry */
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
           (code >= 3000 && code <= 4999);
}

/* The frame's payload is all there. JM_WS_MESSAGE, JM_WS_MORE (a fragment) or an error. */
static int finish_frame(struct jm_ws *d, struct jm_msg *out) {
    if (d->frame_op >= 8) {
        out->opcode = d->frame_op;
        out->data = d->ctl;
        out->len = d->ctl_len;
        out->close_code = 0;
        d->ctl[d->ctl_len] = '\0'; /* ctl_len <= 125 < sizeof ctl */
        if (d->frame_op == JM_OP_CLOSE) {
            if (d->ctl_len == 1) return fail(d, JM_CLOSE_PROTOCOL, "close frame of 1 byte");
            out->close_code = d->ctl_len ? (unsigned)d->ctl[0] << 8 | d->ctl[1] : 1005;
            if (d->ctl_len && !close_code_valid(out->close_code))
                return fail(d, JM_CLOSE_PROTOCOL, "invalid close code %u", out->close_code);
            if (d->ctl_len > 2 && !jm_utf8_valid(d->ctl + 2, d->ctl_len - 2))
                return fail(d, JM_CLOSE_BAD_DATA, "close reason is not UTF-8");
        }
        return JM_WS_MESSAGE;
    }
    if (!d->fin) return JM_WS_MORE;
    if (reserve(d, d->len) != 0) return JM_WS_ERROR; /* an empty message has no buffer yet */
    d->data[d->len] = '\0';
    if (d->opcode == JM_OP_TEXT && !jm_utf8_valid(d->data, d->len))
        return fail(d, JM_CLOSE_BAD_DATA, "text message is not UTF-8");
    out->opcode = d->opcode;
    out->data = d->data;
    out->len = d->len;
    out->close_code = 0;
    d->delivered = 1;
    return JM_WS_MESSAGE;
}

int jm_ws_feed(struct jm_ws *d, const uint8_t *in, size_t n, size_t *used, struct jm_msg *out) {
    size_t i = 0;
    *used = 0;
    if (d->failed) return JM_WS_ERROR;
    if (d->delivered) { /* the caller is done with the last message */
        d->len = 0;
        d->opcode = -1;
        d->delivered = 0;
    }
    for (;;) {
        if (!d->in_payload) {
            while (d->head_have < head_size(d) && i < n) d->head[d->head_have++] = in[i++];
            if (d->head_have < head_size(d)) break;
            if (start_frame(d) != 0) break;
            d->in_payload = 1;
        }
        size_t avail = n - i;
        size_t take = (uint64_t)avail < d->remaining ? avail : (size_t)d->remaining;
        if (take && d->frame_op >= 8) {
            memcpy(d->ctl + d->ctl_len, in + i, take); /* remaining <= 125 - ctl_len */
            d->ctl_len += take;
        } else if (take) {
            if (reserve(d, d->len + take) != 0) break; /* reserved already: no-op */
            memcpy(d->data + d->len, in + i, take);
            d->len += take;
        }
        i += take;
        d->remaining -= take;
        if (d->remaining) break;
        d->in_payload = 0;
        d->head_have = 0;
        int rc = finish_frame(d, out);
        if (rc != JM_WS_MORE) {
            *used = i;
            return rc;
        }
    }
    *used = i;
    return d->failed ? JM_WS_ERROR : JM_WS_MORE;
}

/* ------------------------------------------------------------------ text */
int jm_utf8_valid(const uint8_t *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        size_t more;
        uint32_t cp;
        if (c < 0x80) { i++; continue; }
        if (c >= 0xC2 && c <= 0xDF) { more = 1; cp = c & 0x1Fu; }
        else if (c >= 0xE0 && c <= 0xEF) { more = 2; cp = c & 0x0Fu; }
        else if (c >= 0xF0 && c <= 0xF4) { more = 3; cp = c & 0x07u; }
        else return 0;
        if (len - i <= more) return 0;
        for (size_t k = 1; k <= more; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = cp << 6 | (s[i + k] & 0x3Fu);
        }
        if ((more == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
            (more == 3 && (cp < 0x10000 || cp > 0x10FFFF)))
            return 0;
        i += more + 1;
    }
    return 1;
}

void jm_print_text(FILE *fp, const uint8_t *s, size_t len) {
    for (size_t i = 0; i < len; i++) {
        uint8_t c = s[i];
        if (c < 0x20 || c == 0x7F) {
            fprintf(fp, "\\u%04x", c);
        } else if (c == 0xC2 && i + 1 < len && s[i + 1] >= 0x80 && s[i + 1] <= 0x9F) {
            fprintf(fp, "\\u%04x", s[i + 1]); /* C1 controls (U+0080-009F), e.g. CSI */
            i++;
        } else {
            fputc(c, fp);
        }
    }
}

/* ------------------------------------------------------------------ JMF frames */
static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

int jm_frame_parse(const uint8_t *p, size_t len, struct jm_frame *f) {
    if (len < JM_FRAME_HEADER_MIN || memcmp(p, JM_FRAME_MAGIC, 3) != 0 || p[3] != 1) return 0;
    size_t hlen = p[4]; /* later versions may append fields: skip what we do not know */
    if (hlen < JM_FRAME_HEADER_MIN || hlen > len || len - hlen < 2) return 0;
    f->quality = p[5];
    f->flags = (unsigned)p[6] << 8 | p[7];
    f->seq = be32(p + 8);
    f->width = (unsigned)p[12] << 8 | p[13];
    f->height = (unsigned)p[14] << 8 | p[15];
    f->ts_ms = (uint64_t)be32(p + 16) << 32 | be32(p + 20);
    f->jpeg = p + hlen;
    f->jpeg_len = len - hlen;
    return f->jpeg[0] == 0xFF && f->jpeg[1] == 0xD8;
}

/* ------------------------------------------------------------------ SHA-1 and base64 */
struct sha1 { uint32_t h[5]; uint64_t len; uint8_t buf[64]; size_t n; };

static uint32_t rol(uint32_t v, int b) { return (v << b) | (v >> (32 - b)); }

static void sha1_block(struct sha1 *s, const uint8_t *p) {
    uint32_t w[80], a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3], e = s->h[4];
    for (int i = 0; i < 16; i++) w[i] = be32(p + 4 * i);
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

static void sha1_update(struct sha1 *s, const void *data, size_t len) {
    const uint8_t *p = data;
    s->len += len;
    while (len--) {
        s->buf[s->n++] = *p++;
        if (s->n == 64) { sha1_block(s, s->buf); s->n = 0; }
    }
}

static void sha1(const void *a, size_t alen, const void *b, size_t blen, uint8_t out[20]) {
    static const uint32_t h0[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    struct sha1 s;
    memcpy(s.h, h0, sizeof h0);
    s.len = 0;
    s.n = 0;
    sha1_update(&s, a, alen);
    sha1_update(&s, b, blen);
    uint64_t bits = s.len * 8;
    uint8_t pad = 0x80, zero = 0, lenbuf[8];
    sha1_update(&s, &pad, 1);
    while (s.n != 56) sha1_update(&s, &zero, 1);
    for (int i = 0; i < 8; i++) lenbuf[i] = (uint8_t)(bits >> (56 - 8 * i));
    sha1_update(&s, lenbuf, 8);
    for (int i = 0; i < 20; i++) out[i] = (uint8_t)(s.h[i / 4] >> (24 - 8 * (i % 4)));
}

void jm_base64(const uint8_t *in, size_t n, char *out) {
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

/* ------------------------------------------------------------------ HTTP */
static int is_digit(char c) { return c >= '0' && c <= '9'; }

int jm_http_status(const char *head) {
    if (strncmp(head, "HTTP/1.", 7) != 0 || !is_digit(head[7]) || head[8] != ' ') return 0;
    const char *p = head + 9;
    if (p[0] < '1' || p[0] > '5' || !is_digit(p[1]) || !is_digit(p[2])) return 0; /* 100-599 */
    if (p[3] != ' ' && p[3] != '\r') return 0;
    return (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
}

const char *jm_header_value(const char *head, const char *name, char *out, size_t cap) {
    size_t nl = strlen(name);
    if (cap == 0) return NULL;
    for (const char *line = strstr(head, "\r\n"); line && line[2]; line = strstr(line + 2, "\r\n")) {
        const char *h = line + 2;
        if (strncasecmp(h, name, nl) == 0 && h[nl] == ':') {
            h += nl + 1;
            while (*h == ' ' || *h == '\t') h++;
            size_t i = 0;
            while (h[i] && h[i] != '\r' && h[i] != '\n' && i + 1 < cap) { out[i] = h[i]; i++; }
            while (i > 0 && (out[i - 1] == ' ' || out[i - 1] == '\t')) i--;
            out[i] = '\0';
            return out;
        }
    }
    return NULL;
}

size_t jm_content_length(const char *head) {
    char v[32];
    if (!jm_header_value(head, "Content-Length", v, sizeof v) || !v[0]) return 0;
    size_t n = 0;
    for (const char *p = v; *p; p++) {
        if (!is_digit(*p) || p - v >= 9) return 0; /* 9 digits: < 2^31, no overflow */
        n = n * 10 + (size_t)(*p - '0');
    }
    return n;
}

/* 1 if the comma-separated header value lists token (case-insensitive). */
static int has_token(const char *value, const char *token) {
    size_t tl = strlen(token);
    for (const char *p = value; *p;) {
        while (*p == ' ' || *p == '\t' || *p == ',') p++;
        const char *end = p;
        while (*end && *end != ',') end++;
        const char *last = end;
        while (last > p && (last[-1] == ' ' || last[-1] == '\t')) last--;
        if ((size_t)(last - p) == tl && strncasecmp(p, token, tl) == 0) return 1;
        p = end;
    }
    return 0;
}

void jm_ws_accept_for(const char *key, char out[29]) {
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    uint8_t digest[20];
    sha1(key, strlen(key), guid, sizeof guid - 1, digest);
    jm_base64(digest, sizeof digest, out);
}

int jm_ws_check_upgrade(const char *head, const char *key, char *why, size_t cap) {
    char value[256], expected[29];
    const char *problem = NULL;
    if (jm_http_status(head) != 101)
        problem = "not a 101 answer";
    else if (!jm_header_value(head, "Upgrade", value, sizeof value) || !has_token(value, "websocket"))
        problem = "no Upgrade: websocket in the handshake";
    else if (!jm_header_value(head, "Connection", value, sizeof value) || !has_token(value, "upgrade"))
        problem = "no Connection: upgrade in the handshake";
    else if (jm_header_value(head, "Sec-WebSocket-Extensions", value, sizeof value) ||
             jm_header_value(head, "Sec-WebSocket-Protocol", value, sizeof value))
        problem = "the server chose an extension or subprotocol we did not offer";
    else {
        jm_ws_accept_for(key, expected);
        if (!jm_header_value(head, "Sec-WebSocket-Accept", value, sizeof value) ||
            strcmp(value, expected) != 0)
            problem = "bad Sec-WebSocket-Accept in the handshake";
    }
    if (problem && cap) snprintf(why, cap, "%s", problem);
    return problem ? -1 : 0;
}

int jm_session_id_valid(const char *id) {
    size_t n = 0, dots = 0;
    for (; id[n]; n++) {
        char c = id[n];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || is_digit(c) || c == '_' ||
              c == '.' || c == ':' || c == '-') || n >= 128)
            return 0;
        dots += c == '.';
    }
    return n > 0 && dots < n;
}

/* ------------------------------------------------------------------ tiny JSON helpers */
int jm_json_string(const char *json, const char *key, char *out, size_t cap) {
    char pat[80];
    if (cap == 0) return 0;
    out[0] = '\0';
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

long jm_json_last_int(const char *json, const char *key) {
    char pat[80];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = NULL;
    for (const char *q = strstr(json, pat); q; q = strstr(q + 1, pat)) p = q;
    return p ? strtol(p + strlen(pat), NULL, 10) : -1;
}

void jm_json_escape(const char *in, char *out, size_t cap) {
    size_t i = 0;
    if (cap == 0) return;
    for (; *in && i + 7 < cap; in++) { /* room for the longest escape (\u00XX) and the NUL */
        unsigned char c = (unsigned char)*in;
        if (c == '"' || c == '\\') { out[i++] = '\\'; out[i++] = (char)c; }
        else if (c < 0x20) i += (size_t)snprintf(out + i, cap - i, "\\u%04x", c);
        else out[i++] = (char)c;
    }
    out[i] = '\0';
}
