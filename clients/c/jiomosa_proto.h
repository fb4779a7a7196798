/*
 * jiomosa_proto: everything jiomosa-client does with bytes from the network, without a socket.
 *
 * The WebSocket frame decoder (RFC 6455, server-to-client direction), the JMF frame header,
 * the HTTP upgrade response and the few JSON lookups the client needs. Nothing here reads a
 * socket, writes one, allocates more than the caller allowed or exits the process: every
 * length that comes from the wire is checked against a bound before it is used, and a bad
 * input is an error value with a reason. That is what lets fuzz/fuzz_client.c drive the same
 * code from a buffer (docs/clients.md, "Fuzzing").
 */
#ifndef JIOMOSA_PROTO_H
#define JIOMOSA_PROTO_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Largest WebSocket message (all fragments together) the client accepts by default; `-m`
 * changes it at run time. The biggest frame the streamer can make, a 3840x2160 viewport of
 * random pixels at JPEG quality 90, is about 7.4 MB; 16 MiB leaves room for it. */
#ifndef JIOMOSA_MAX_MESSAGE
#define JIOMOSA_MAX_MESSAGE (16u * 1024u * 1024u)
#endif
#define JM_MAX_MESSAGE_MIN 1024u                   /* -m below this cannot hold a frame */
#define JM_MAX_MESSAGE_CEILING (1024u * 1024u * 1024u) /* keeps size arithmetic far from wrapping */

enum { JM_OP_CONT = 0, JM_OP_TEXT = 1, JM_OP_BINARY = 2,
       JM_OP_CLOSE = 8, JM_OP_PING = 9, JM_OP_PONG = 10 };

/* Close codes the client sends when it fails the connection (RFC 6455 7.4.1). */
enum { JM_CLOSE_NORMAL = 1000, JM_CLOSE_PROTOCOL = 1002, JM_CLOSE_BAD_DATA = 1007,
       JM_CLOSE_TOO_BIG = 1009 };

enum { JM_WS_MORE = 0, JM_WS_MESSAGE = 1, JM_WS_ERROR = -1 };

/* One complete message. data stays valid until the next jm_ws_feed; a text message is also
 * NUL-terminated (it may contain NULs of its own, so len is the length). For a close frame,
 * close_code is its status code (1005 when it had none). */
struct jm_msg {
    int opcode;
    const uint8_t *data;
    size_t len;
    unsigned close_code;
};

/* Incremental decoder: feed it the bytes as they arrive, in pieces of any size. */
struct jm_ws {
    size_t max_message;
    uint8_t head[10];     /* the frame header being read */
    size_t head_have;
    int in_payload;       /* header read, `remaining` payload bytes to come */
    int fin, frame_op;
    uint64_t remaining;
    uint8_t *data;        /* the data message being reassembled; grows to the largest one */
    size_t len, cap;
    int opcode;           /* JM_OP_TEXT/BINARY while a message is open, -1 otherwise */
    int delivered;        /* the last feed returned the data message: start a new one */
    uint8_t ctl[126];     /* a control frame (may arrive between two fragments) */
    size_t ctl_len;
    int failed;
    unsigned fail_code;   /* close code to send after an error */
    char error[160];      /* why, for people */
};

/* max_message is clamped to [JM_MAX_MESSAGE_MIN, JM_MAX_MESSAGE_CEILING]. */
void jm_ws_init(struct jm_ws *d, size_t max_message);
void jm_ws_free(struct jm_ws *d);
/* Consumes bytes of `in` until a message is complete (JM_WS_MESSAGE, *out filled), the
 * input is used up (JM_WS_MORE) or the stream is invalid (JM_WS_ERROR: d->error says why and
 * d->fail_code is the close code to answer with; every later call fails too). *used is the
 * number of bytes consumed; call again with the rest. Pings, pongs and closes are returned
 * as messages (the caller answers pings). */
int jm_ws_feed(struct jm_ws *d, const uint8_t *in, size_t n, size_t *used, struct jm_msg *out);

/* RFC 3629 UTF-8 (no overlong forms, no surrogates, nothing above U+10FFFF). */
int jm_utf8_valid(const uint8_t *s, size_t len);
/* Writes s to fp with control characters (and NUL, DEL) as \u00XX, so a message can never
 * start a line of its own in the client's line-per-event output. */
void jm_print_text(FILE *fp, const uint8_t *s, size_t len);

/* ------------------------------------------------------------------ JMF frames */
#define JM_FRAME_MAGIC "JMF"
#define JM_FRAME_HEADER_MIN 24

struct jm_frame { uint32_t seq; unsigned width, height, quality, flags; uint64_t ts_ms;
                  const uint8_t *jpeg; size_t jpeg_len; };

/* 1 if (p, len) is a version-1 frame message whose header length fits and whose payload
 * starts like a JPEG; f points into p. */
int jm_frame_parse(const uint8_t *p, size_t len, struct jm_frame *f);

/* ------------------------------------------------------------------ HTTP */
/* Status code (100-599) of a NUL-terminated response head ("HTTP/1.x NNN ..."), else 0. */
int jm_http_status(const char *head);
/* Value of header `name` (case-insensitive) copied into out (truncated to cap-1), or NULL. */
const char *jm_header_value(const char *head, const char *name, char *out, size_t cap);
/* Content-Length as a number (0 when absent or not a plain decimal below 2^31). */
size_t jm_content_length(const char *head);
/* Sec-WebSocket-Accept for a Sec-WebSocket-Key: base64(SHA-1(key + GUID)), 28 chars. */
void jm_ws_accept_for(const char *key, char out[29]);
/* 0 if head is a valid answer to our upgrade request with `key` (101, Upgrade: websocket,
 * Connection: upgrade, the right accept, no extension or subprotocol we did not ask for);
 * otherwise -1 and why. */
int jm_ws_check_upgrade(const char *head, const char *key, char *why, size_t cap);
void jm_base64(const uint8_t *in, size_t n, char *out); /* out: 4*ceil(n/3)+1 bytes */

/* 1 if id has the server's session id form (SESSION_ID_RE in sessions/session.py: 1-128 of
 * A-Z a-z 0-9 _ . : -, not only dots), so it is safe in a request line and path. */
int jm_session_id_valid(const char *id);

/* ------------------------------------------------------------------ tiny JSON helpers */
/* The string value of "key" in a flat JSON text (enough for the server's answers). */
int jm_json_string(const char *json, const char *key, char *out, size_t cap);
/* The last integer value of "key" (the envelope's top-level "id" comes last), or -1. */
long jm_json_last_int(const char *json, const char *key);
/* in as the inside of a JSON string, truncated to fit cap. */
void jm_json_escape(const char *in, char *out, size_t cap);

#endif
