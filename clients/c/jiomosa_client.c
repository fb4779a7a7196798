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
 * hundred KB; -m bounds it, 16 MiB by default) plus a 16 KB socket buffer; nothing is queued.
 * Peak RSS is printed at exit.
 *
 * Delta frames (issue 14; built with `make DELTA=1`, which links libjpeg and libpng): with -d
 * the client asks for them (?delta=1&formats=jpeg,png), keeps the picture as RGB (3 bytes a
 * pixel) and applies each JMD update to it (jiomosa_delta.c); -o then writes that picture as
 * a PPM. A message that fails any check is not applied: the client asks for a key frame
 * ({"event":"frame:key"}) and ignores updates until it comes.
 *
 * Everything that parses bytes from the network (WebSocket frames, the JMF header, the HTTP
 * upgrade answer, JSON lookups) is in jiomosa_proto.c, which never touches a socket, so
 * fuzz/fuzz_client.c can drive it from a buffer.
 *
 * Output (stdout, one line each, for people and scripts):
 *   session ID
 *   frame seq=N width=W height=H quality=Q bytes=B age_ms=A [key=1]
 *   delta seq=N base=B copies=C images=I pixels=P bytes=B age_ms=A    (with -d)
 *   rejected seq=N reason=...        (with -d: a message not applied; a key frame is asked)
 *   event {...json text message...}
 *   done frames=N bytes=B seconds=S [deltas=D keys=K rejected=R] peak_rss_kb=K
 * Exit status: 0 finished (frame/time limit, or the server ended the session), 1 usage,
 * 2 network/HTTP error, 3 protocol error (a frame the client cannot accept: it prints why,
 * sends the matching close code and closes the connection).
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

#include "jiomosa_proto.h"
#ifdef JIOMOSA_DELTA
#include "jiomosa_delta.h"
#include "jiomosa_image.h"
#endif

#ifdef JIOMOSA_SDL
#include <SDL.h>
#include <SDL_image.h>
#endif

#define HTTP_MAX (64u * 1024u) /* largest REST answer read */
#define HTTP_HEAD_MAX 4096     /* largest HTTP response head accepted */

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
    int delta;          /* -d: ask for delta frames and rebuild the picture */
    size_t max_message; /* -m: largest WebSocket message accepted */
};

static volatile sig_atomic_t g_stop = 0;
static void on_signal(int sig) { (void)sig; g_stop = 1; }

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3), noreturn))
#endif
static void die(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("jiomosa-client: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(code);
}

/* die() for messages that quote bytes from the server: control characters are escaped, so an
 * answer cannot forge lines of output or send terminal escapes. */
static void die_with_text(int code, const char *what, const char *text, size_t len) {
    fprintf(stderr, "jiomosa-client: %s: ", what);
    jm_print_text(stderr, (const uint8_t *)text, len);
    fputc('\n', stderr);
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

/* Reads HTTP response headers (up to the blank line) into out; returns the status code, or 0
 * if the connection ended first. A head that does not fit is refused: its tail would
 * otherwise be taken for the body (or for WebSocket frames). */
static int read_http_head(struct reader *r, char *out, size_t cap) {
    size_t n = 0;
    for (;;) {
        if (n + 1 >= cap) die(EXIT_PROTO, "HTTP answer head longer than %zu bytes", cap - 1);
        if (!read_exact(r, out + n, 1)) {
            out[n] = '\0';
            return 0;
        }
        n++;
        if (n >= 4 && memcmp(out + n - 4, "\r\n\r\n", 4) == 0) break;
    }
    out[n] = '\0';
    return jm_http_status(out);
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
    char rhead[HTTP_HEAD_MAX], value[64];
    int status = read_http_head(r, rhead, sizeof rhead);
    if (jm_header_value(rhead, "Transfer-Encoding", value, sizeof value))
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
    jm_json_escape(o->url, url, sizeof url);
    if (o->width && o->height)
        snprintf(body, sizeof body, "{\"url\":\"%s\",\"width\":%d,\"height\":%d,\"mobile\":%s}",
                 url, o->width, o->height, o->width < 800 ? "true" : "false");
    else
        snprintf(body, sizeof body, "{\"url\":\"%s\"}", url);
    int status = http_json(o, "POST", "/api/session/create", body, resp, sizeof resp);
    if (status == 201 && jm_json_string(resp, "session_id", id, cap) &&
        !jm_session_id_valid(id)) /* it goes into request lines: no CR/LF, '/' or '?' */
        die(EXIT_PROTO, "the server answered with an invalid session id");
    if (status != 201 || !jm_json_string(resp, "session_id", id, cap)) {
        char what[64];
        snprintf(what, sizeof what, "session create failed (HTTP %d)", status);
        die_with_text(EXIT_NET, what, resp, strlen(resp));
    }
    printf("session %s\n", id);
    fflush(stdout);
}

static void close_session(const struct options *o, const char *id) {
    char path[512], resp[4096];
    snprintf(path, sizeof path, "/api/session/%s/close", id);
    int status = http_json(o, "POST", path, "{}", resp, sizeof resp);
    if (o->verbose) {
        fprintf(stderr, "close: HTTP %d ", status);
        jm_print_text(stderr, (const uint8_t *)resp, strlen(resp));
        fputc('\n', stderr);
    }
}

/* ------------------------------------------------------------------ WebSocket */
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

static void ws_send_text(int fd, const char *text) { ws_send(fd, JM_OP_TEXT, text, strlen(text)); }

static void ws_connect(const struct options *o, struct reader *r, const char *id) {
    uint8_t nonce[16];
    for (int i = 0; i < 16; i += 4) {
        uint32_t v = rng_next();
        memcpy(nonce + i, &v, 4);
    }
    char key[32], query[128] = "", req[1024];
    jm_base64(nonce, sizeof nonce, key);
    int qn = 0; /* each value is an int or a constant: the query always fits */
    if (o->fps) qn += snprintf(query + qn, sizeof query - (size_t)qn, "?fps=%d", o->fps);
    if (o->quality)
        qn += snprintf(query + qn, sizeof query - (size_t)qn, "%cquality=%d", qn ? '&' : '?',
                       o->quality);
    if (o->delta) /* only the formats this client decodes (jiomosa_image.c) */
        snprintf(query + qn, sizeof query - (size_t)qn, "%cdelta=1&formats=jpeg,png",
                 qn ? '&' : '?');
    int n = snprintf(req, sizeof req,
                     "GET %s/api/session/%s/stream%s HTTP/1.1\r\nHost: %s:%s\r\n"
                     "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
                     o->prefix, id, query, o->host, o->port, key);
    if (n < 0 || (size_t)n >= sizeof req) die(EXIT_USAGE, "request too long");
    send_all(r->fd, req, (size_t)n);
    char head[HTTP_HEAD_MAX], why[128];
    int status = read_http_head(r, head, sizeof head);
    if (status != 101) { /* a JSON error; the connection stays open, so read Content-Length */
        char body[1024] = "";
        size_t got = 0, want = jm_content_length(head);
        if (want > sizeof body - 1) want = sizeof body - 1;
        while (got < want && reader_fill(r)) {
            size_t take = r->len - r->pos;
            if (take > want - got) take = want - got;
            memcpy(body + got, r->buf + r->pos, take);
            r->pos += take;
            got += take;
        }
        char what[64];
        snprintf(what, sizeof what, "stream refused (HTTP %d)", status);
        die_with_text(EXIT_NET, what, body, got);
    }
    /* Sec-WebSocket-Accept = base64(SHA-1(key + GUID)) proves a WebSocket server answered. */
    if (jm_ws_check_upgrade(head, key, why, sizeof why) != 0) die(EXIT_PROTO, "%s", why);
}


/* Reads until one whole message is there (data frames reassembled by jiomosa_proto.c, pings
 * answered on the way, pongs dropped). Returns its opcode (close frames included), WS_GONE when
 * the connection ended, or WS_FAILED when the server sent something the decoder refuses
 * (d->error says what, d->fail_code is the close code to answer with). */
enum { WS_GONE = -1, WS_FAILED = -2 };

static int ws_read(struct reader *r, struct jm_ws *d, struct jm_msg *m) {
    for (;;) {
        if (!reader_fill(r)) return WS_GONE;
        size_t used;
        int rc = jm_ws_feed(d, r->buf + r->pos, r->len - r->pos, &used, m);
        r->pos += used;
        if (rc == JM_WS_ERROR) return WS_FAILED;
        if (rc == JM_WS_MORE) continue;
        if (m->opcode == JM_OP_PING) {
            if (ws_try_send(r->fd, JM_OP_PONG, m->data, m->len) != 0) return WS_GONE;
            continue;
        }
        if (m->opcode == JM_OP_PONG) continue;
        return m->opcode;
    }
}

static void write_file(const char *path, const uint8_t *data, size_t len) {
    FILE *fp = fopen(path, "wb");
    if (!fp || fwrite(data, 1, len, fp) != len || fclose(fp) != 0)
        die(EXIT_NET, "cannot write %s: %s", path, strerror(errno));
}

static void save_frame(const struct options *o, const struct jm_frame *f) {
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

/* ------------------------------------------------------------------ delta frames */
#ifndef JIOMOSA_DELTA
struct delta_state { int unused; };
#else
struct delta_state {
    struct jm_picture pic;
    struct jm_image_reader *rd;
    int want_key;     /* a key frame was asked for: updates are ignored until it comes */
    double asked_at;
    long deltas, keys, rejected, ignored;
};

#define KEY_RETRY_S 2.0 /* ask again if updates still come this long after asking */

static void ask_key_frame(int fd, struct delta_state *s) {
    if (s->want_key && now_s() - s->asked_at < KEY_RETRY_S) return;
    ws_send_text(fd, "{\"event\":\"frame:key\"}");
    s->want_key = 1;
    s->asked_at = now_s();
}

static void reject(int fd, struct delta_state *s, uint32_t seq, const char *why) {
    s->rejected++;
    printf("rejected seq=%lu reason=", (unsigned long)seq);
    jm_print_text(stdout, (const uint8_t *)why, strlen(why)); /* may quote server numbers */
    putchar('\n');
    fflush(stdout);
    ask_key_frame(fd, s);
}

/* The picture as a binary PPM (P6), replaced atomically like latest.jpg. */
static void save_picture(const struct options *o, const struct jm_picture *p) {
    char path[4096], tmp[4200], head[64];
    if (o->latest_only) snprintf(path, sizeof path, "%s/latest.ppm", o->out_dir);
    else snprintf(path, sizeof path, "%s/frame-%06lu.ppm", o->out_dir, (unsigned long)p->seq);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int hn = snprintf(head, sizeof head, "P6\n%u %u\n255\n", p->width, p->height);
    FILE *fp = fopen(tmp, "wb");
    size_t n = (size_t)p->width * p->height * 3;
    if (!fp || fwrite(head, 1, (size_t)hn, fp) != (size_t)hn || fwrite(p->rgb, 1, n, fp) != n ||
        fclose(fp) != 0)
        die(EXIT_NET, "cannot write %s: %s", tmp, strerror(errno));
    if (rename(tmp, path) != 0) die(EXIT_NET, "rename %s: %s", tmp, strerror(errno));
}

#endif

/* ------------------------------------------------------------------ optional display */
#ifdef JIOMOSA_SDL
static SDL_Window *g_win;
static SDL_Renderer *g_ren;
static SDL_Texture *g_tex;
static int g_tex_w, g_tex_h;

static void display_open(unsigned width, unsigned height) {
    if (!g_win) {
        if (SDL_Init(SDL_INIT_VIDEO) != 0) die(EXIT_NET, "SDL: %s", SDL_GetError());
        IMG_Init(IMG_INIT_JPG);
        g_win = SDL_CreateWindow("Jiomosa", SDL_WINDOWPOS_UNDEFINED, SDL_WINDOWPOS_UNDEFINED,
                                 (int)width, (int)height, SDL_WINDOW_RESIZABLE);
        g_ren = g_win ? SDL_CreateRenderer(g_win, -1, 0) : NULL;
        if (!g_ren) die(EXIT_NET, "SDL: %s", SDL_GetError());
        SDL_RenderSetLogicalSize(g_ren, (int)width, (int)height);
        SDL_StartTextInput();
    }
}

/* Shows w x h pixels of 24-bit RGB (rows `pitch` bytes apart). */
static void display_pixels(const void *pixels, int pitch, int w, int h) {
    display_open((unsigned)w, (unsigned)h);
    if (!g_tex || g_tex_w != w || g_tex_h != h) {
        if (g_tex) SDL_DestroyTexture(g_tex);
        g_tex = SDL_CreateTexture(g_ren, SDL_PIXELFORMAT_RGB24, SDL_TEXTUREACCESS_STREAMING,
                                  w, h);
        g_tex_w = w;
        g_tex_h = h;
        SDL_RenderSetLogicalSize(g_ren, w, h);
    }
    SDL_UpdateTexture(g_tex, NULL, pixels, pitch);
    SDL_RenderClear(g_ren);
    SDL_RenderCopy(g_ren, g_tex, NULL, NULL);
    SDL_RenderPresent(g_ren);
}

static void display_frame(const struct jm_frame *f) {
    SDL_RWops *rw = SDL_RWFromConstMem(f->jpeg, (int)f->jpeg_len);
    SDL_Surface *img = rw ? IMG_LoadJPG_RW(rw) : NULL;
    if (rw) SDL_RWclose(rw);
    if (!img) return;
    SDL_Surface *rgb = SDL_ConvertSurfaceFormat(img, SDL_PIXELFORMAT_RGB24, 0);
    SDL_FreeSurface(img);
    if (!rgb) return;
    display_pixels(rgb->pixels, rgb->pitch, rgb->w, rgb->h);
    SDL_FreeSurface(rgb);
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
            jm_json_escape(ev.text.text, text, sizeof text);
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

/* ------------------------------------------------------------------ binary messages */
static void print_frame(const struct jm_frame *f) {
    uint64_t at = epoch_ms();
    printf("frame seq=%u width=%u height=%u quality=%u bytes=%zu age_ms=%lld%s\n", f->seq,
           f->width, f->height, f->quality, f->jpeg_len,
           (long long)(at >= f->ts_ms ? at - f->ts_ms : 0), f->flags & 1u ? " key=1" : "");
    fflush(stdout);
}

#ifdef JIOMOSA_DELTA
/* The picture changed: write it (-o) and show it (SDL), then print its line, so a script that
 * reads the line finds the file. */
static void show_picture(const struct options *o, const struct delta_state *s) {
    if (o->out_dir) save_picture(o, &s->pic);
#ifdef JIOMOSA_SDL
    display_pixels(s->pic.rgb, (int)s->pic.width * 3, (int)s->pic.width, (int)s->pic.height);
#endif
}

static void print_delta(const struct jm_delta *d, size_t len) {
    uint64_t at = epoch_ms();
    printf("delta seq=%lu base=%lu copies=%u images=%u pixels=%llu bytes=%zu age_ms=%lld\n",
           (unsigned long)d->seq, (unsigned long)d->base_seq, d->n_copies, d->n_images,
           (unsigned long long)(d->copied_pixels + d->drawn_pixels), len,
           (long long)(at >= d->ts_ms ? at - d->ts_ms : 0));
    fflush(stdout);
}

/* A binary message with -d: a JMD update, or a JMF frame (key frame or not, a whole picture
 * that replaces the one held). 0, or -1 if it is neither. */
static int delta_message(const struct options *o, int fd, struct delta_state *s,
                         const uint8_t *data, size_t len, unsigned long long *bytes) {
    char why[256];
    if (len >= 3 && memcmp(data, JM_DELTA_MAGIC, 3) == 0) {
        struct jm_delta d;
        *bytes += len;
        if (jm_delta_parse(data, len, &d, why, sizeof why) != 0) {
            reject(fd, s, len >= 12 ? (uint32_t)data[8] << 24 | (uint32_t)data[9] << 16 |
                                          (uint32_t)data[10] << 8 | data[11] : 0, why);
        } else if (s->want_key) { /* based on a picture we may not hold: wait for the key */
            s->ignored++;
            print_delta(&d, len);
            ask_key_frame(fd, s);
        } else if (jm_delta_apply(&s->pic, &d, s->rd, why, sizeof why) != JM_DELTA_OK) {
            print_delta(&d, len);
            reject(fd, s, d.seq, why);
        } else {
            s->deltas++;
            show_picture(o, s);
            print_delta(&d, len);
        }
        return 0;
    }
    struct jm_frame f;
    if (!jm_frame_parse(data, len, &f)) return -1;
    *bytes += f.jpeg_len;
    s->want_key = 0; /* the answer came: if it is unusable, reject() asks again at once */
    int rc = jm_picture_load(&s->pic, s->rd, JM_IMG_JPEG, f.jpeg, f.jpeg_len, f.width, f.height,
                             f.seq, why, sizeof why);
    if (rc == JM_DELTA_OK) {
        s->keys++;
        show_picture(o, s);
    }
    print_frame(&f);
    if (rc != JM_DELTA_OK) reject(fd, s, f.seq, why);
    return 0;
}
#endif

/* A binary message from the stream: a JMF frame, or with -d also a JMD update. 0, or -1 if
 * it is none of these (a protocol error). A delta message that fails its checks is not an
 * error: it is rejected and a key frame asked for. */
static int on_binary(const struct options *o, int fd, const struct jm_msg *m,
                     struct delta_state *ds, unsigned long long *bytes) {
#ifdef JIOMOSA_DELTA
    if (o->delta) return delta_message(o, fd, ds, m->data, m->len, bytes);
#else
    (void)fd;
    (void)ds;
#endif
    struct jm_frame f;
    if (!jm_frame_parse(m->data, m->len, &f)) return -1;
    *bytes += f.jpeg_len;
    if (o->out_dir) save_frame(o, &f);
#ifdef JIOMOSA_SDL
    display_frame(&f);
#endif
    print_frame(&f);
    return 0;
}

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
            "  -v          print every text message\n"
            "  -m BYTES    largest WebSocket message accepted, K/M suffixes allowed\n"
            "              (default %uM; a larger one ends the connection, exit 3)\n"
            "  -d          delta frames: rebuild the picture from updates; -o writes it as\n"
            "              DIR/frame-SEQ.ppm (-l: DIR/latest.ppm)%s\n",
            argv0, (unsigned)(JIOMOSA_MAX_MESSAGE >> 20),
#ifdef JIOMOSA_DELTA
            ""
#else
            " (not in this build: make DELTA=1)"
#endif
            );
    exit(EXIT_USAGE);
}

/* -m BYTES[K|M]: a whole number within the decoder's bounds. */
static size_t parse_size(const char *s) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    unsigned long long unit = *end == 'K' || *end == 'k' ? 1024u
                             : *end == 'M' || *end == 'm' ? 1024u * 1024u : 1u;
    if (unit > 1) end++;
    if (errno || end == s || *end || s[0] == '-' || v > JM_MAX_MESSAGE_CEILING / unit ||
        v * unit < JM_MAX_MESSAGE_MIN)
        die(EXIT_USAGE, "-m wants %u to %u bytes (K and M suffixes allowed): %s",
            JM_MAX_MESSAGE_MIN, JM_MAX_MESSAGE_CEILING, s);
    return (size_t)(v * unit);
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
    o.max_message = JIOMOSA_MAX_MESSAGE;
    const char *base = "http://127.0.0.1:5000";
    int c;
    while ((c = getopt(argc, argv, "s:S:w:o:ln:t:c:q:f:kvm:dh")) != -1) {
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
        case 'm': o.max_message = parse_size(optarg); break;
        case 'd': o.delta = 1; break;
        default: usage(argv[0]);
        }
    }
    o.url = optind < argc ? argv[optind] : NULL;
    if (!o.url && !o.session_id) usage(argv[0]);
    if (o.session_id && !jm_session_id_valid(o.session_id))
        die(EXIT_USAGE, "not a session id: %s", o.session_id);
    struct delta_state ds;
    memset(&ds, 0, sizeof ds);
#ifdef JIOMOSA_DELTA
    if (o.delta && !(ds.rd = jm_image_reader_new())) die(EXIT_NET, "out of memory");
#else
    if (o.delta) die(EXIT_USAGE, "-d: this client was built without delta frames (make DELTA=1)");
#endif
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
    struct jm_ws ws;
    struct jm_msg m = {0, NULL, 0, 0};
    if (!r) die(EXIT_NET, "out of memory");
    jm_ws_init(&ws, o.max_message);
    r->fd = tcp_connect(&o);
    ws_connect(&o, r, id);

    double started = now_s();
    long frames = 0, click_id = 0;
    int click_done = 0; /* the click's acknowledgement (or error) has arrived */
    unsigned long long bytes = 0;
    int status = EXIT_OK, server_closed = 0, failed = 0;
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
        int op = ws_read(r, &ws, &m);
        if (op == WS_FAILED) { /* RFC 6455 7.1.7: fail the connection, with the reason why */
            fprintf(stderr, "jiomosa-client: protocol error: %s\n", ws.error);
            uint8_t code[2] = {(uint8_t)(ws.fail_code >> 8), (uint8_t)ws.fail_code};
            ws_try_send(r->fd, JM_OP_CLOSE, code, 2);
            status = EXIT_PROTO;
            failed = 1;
            break;
        }
        if (op < 0) {
            if (!g_stop) { fprintf(stderr, "jiomosa-client: connection lost\n"); status = EXIT_NET; }
            break;
        }
        if (op == JM_OP_CLOSE) {
            printf("closed code=%u reason=", m.close_code);
            if (m.len > 2) jm_print_text(stdout, m.data + 2, m.len - 2);
            putchar('\n');
            /* Echo the code; the server may already have gone, which is fine now. */
            ws_try_send(r->fd, JM_OP_CLOSE, m.data, m.len >= 2 ? 2 : 0);
            server_closed = 1;
            break;
        }
        if (op == JM_OP_TEXT) {
            char event[64] = "";
            jm_json_string((const char *)m.data, "event", event, sizeof event);
            int is_ack = strcmp(event, "input:acknowledged") == 0;
            if (click_id && (is_ack || strcmp(event, "error") == 0) &&
                jm_json_last_int((const char *)m.data, "id") == click_id) {
                click_done = 1;
                if (!is_ack) status = EXIT_PROTO; /* the click was refused */
            }
            if (o.verbose || strcmp(event, "input:acknowledged") == 0 ||
                strcmp(event, "error") == 0 || strcmp(event, "session:closed") == 0 ||
                strcmp(event, "subscribed") == 0) {
                fputs("event ", stdout); /* escaped: a message cannot forge output lines */
                jm_print_text(stdout, m.data, m.len);
                putchar('\n');
            }
            fflush(stdout);
            if (o.max_frames > 0 && frames >= o.max_frames && (!o.click || click_done)) break;
            continue;
        }
        if (op != JM_OP_BINARY || on_binary(&o, r->fd, &m, &ds, &bytes) != 0) {
            fprintf(stderr, "jiomosa-client: not a frame message (%zu bytes)\n", m.len);
            status = EXIT_PROTO;
            break;
        }
        frames++;
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

    if (!server_closed && !failed) { /* close handshake: send ours, wait briefly for the answer */
        uint8_t code[2] = {JM_CLOSE_NORMAL >> 8, JM_CLOSE_NORMAL & 0xFF};
        ws_try_send(r->fd, JM_OP_CLOSE, code, 2);
        struct timeval tv = {2, 0};
        setsockopt(r->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        double until = now_s() + 2.0;
        int op;
        while (now_s() < until && (op = ws_read(r, &ws, &m)) >= 0 && op != JM_OP_CLOSE) {}
    }
    close(r->fd);
#ifdef JIOMOSA_SDL
    display_close();
#endif
    if (created && !o.keep && !server_closed) close_session(&o, id);
    printf("done frames=%ld bytes=%llu seconds=%.2f", frames, bytes, now_s() - started);
#ifdef JIOMOSA_DELTA
    if (o.delta)
        printf(" deltas=%ld keys=%ld rejected=%ld ignored=%ld", ds.deltas, ds.keys, ds.rejected,
               ds.ignored);
    jm_image_reader_free(ds.rd);
    jm_picture_free(&ds.pic);
#endif
    printf(" peak_rss_kb=%ld\n", peak_rss_kb());
    jm_ws_free(&ws);
    free(r);
    return status;
}
