/*
 * jiomosa_delta: delta frames (issue 14, docs/protocol.md "Delta frames") for jiomosa-client.
 *
 * A delta client holds the picture of the last frame it applied, as 24-bit RGB, and brings it
 * to the next frame with a `JMD` message: regions copied from elsewhere in the picture (a
 * scroll) and regions drawn from small JPEG/PNG images. A key frame (an ordinary `JMF` frame)
 * replaces the whole picture.
 *
 * The server is not trusted (docs/security.md): jm_delta_parse checks every count and length
 * against the message and every rectangle against the picture before anything is drawn, and
 * jm_delta_apply checks the image side of every rectangle against the decoded image's size.
 * A message that fails a check leaves the picture as it was; only an image whose compressed
 * data turns out to be broken half-way through decoding leaves it half-drawn, and then the
 * picture is marked invalid (it must not be shown or written) until the next key frame. In
 * both cases the client asks for a key frame. Like jiomosa_proto.c, nothing here reads a
 * socket or exits, so fuzz/fuzz_client.c drives it from a buffer.
 *
 * Memory: the picture (3 bytes a pixel), a scratch buffer holding the source pixels of one
 * message's copies (at most one picture's worth), one decoded image row and an index of the
 * rectangles of one image. Images are decoded row by row, never whole.
 */
#ifndef JIOMOSA_DELTA_H
#define JIOMOSA_DELTA_H

#include <stddef.h>
#include <stdint.h>

/* The largest picture (and decoded image) accepted, in pixels: the streamer's largest
 * viewport (3840x2160) is 25 MB of RGB. */
#ifndef JM_PICTURE_MAX_PIXELS
#define JM_PICTURE_MAX_PIXELS (3840u * 2160u)
#endif

#define JM_DELTA_MAGIC "JMD"
#define JM_DELTA_HEADER 28 /* version 1; a longer header is skipped */
#define JM_FRAME_FLAG_KEY 0x0001u /* JMF flags bit 0: a key frame of a delta stream */

enum { JM_IMG_JPEG = 1, JM_IMG_PNG = 2, JM_IMG_WEBP = 3 };

/* What jm_delta_apply and jm_picture_load return. */
enum { JM_DELTA_OK = 0,
       JM_DELTA_REJECTED = -1, /* refused before a pixel changed: the picture is as it was */
       JM_DELTA_BROKEN = -2 }; /* failed while drawing: the picture is now invalid */

/* The picture a delta client holds. Zero-initialise it; jm_picture_free releases it. */
struct jm_picture {
    unsigned width, height;
    uint32_t seq;
    int valid;              /* 0 until a key frame was loaded, and after a broken update */
    uint8_t *rgb;           /* width * height * 3 bytes, rows top to bottom */
    size_t rgb_cap;
    uint8_t *scratch;       /* the copies' source pixels */
    size_t scratch_cap;
    uint8_t *row;           /* one decoded image row */
    size_t row_cap;
    uint32_t *order;        /* an image's rectangles by first image row: ay << 16 | index */
    size_t order_cap;       /* entries */
};

void jm_picture_free(struct jm_picture *p);

/* A parsed JMD message; the pointers point into the message. */
struct jm_delta {
    uint32_t seq, base_seq;
    unsigned width, height, flags;
    uint64_t ts_ms;
    unsigned n_copies, n_images;
    const uint8_t *copies;  /* n_copies entries of 12 bytes */
    const uint8_t *images;  /* the first image entry */
    const uint8_t *end;     /* the end of the message */
    uint64_t copied_pixels, drawn_pixels;
};

struct jm_delta_copy { unsigned sx, sy, w, h; int dx, dy; };
struct jm_delta_rect { unsigned x, y, w, h, ax, ay; };
struct jm_delta_image {
    int format;
    unsigned n_rects;
    const uint8_t *rects;   /* n_rects entries of 12 bytes */
    const uint8_t *data;    /* the compressed image */
    size_t len;
    const uint8_t *next;    /* where the next image entry starts */
};

/* 0 if (p, len) is a well-formed version-1 JMD message: every count and length within the
 * message, no bytes left over, every copy's source and destination and every image rectangle
 * within width x height, width x height within JM_PICTURE_MAX_PIXELS and the copied and drawn
 * areas each at most one picture (rectangles never overlap). Otherwise -1 and why. */
int jm_delta_parse(const uint8_t *p, size_t len, struct jm_delta *d, char *why, size_t cap);

/* The entries of a parsed message (valid only after jm_delta_parse returned 0). */
void jm_delta_copy_at(const struct jm_delta *d, unsigned i, struct jm_delta_copy *c);
/* The image entry at *pos (start with d->images); moves *pos to the next one. */
void jm_delta_image_at(const uint8_t **pos, struct jm_delta_image *img);
void jm_delta_rect_at(const struct jm_delta_image *img, unsigned i, struct jm_delta_rect *r);

/* An image decoder, row by row (jiomosa_image.c has the libjpeg and libpng ones). */
struct jm_image_reader {
    /* Reads the header of one image: its size in *w, *h. 0, or -1 and why. */
    int (*open)(void *state, int format, const uint8_t *data, size_t len, unsigned *w,
                unsigned *h, char *why, size_t cap);
    /* Decodes the next row as RGB (3 * w bytes into row). 0, or -1 and why. */
    int (*read_row)(void *state, uint8_t *row, char *why, size_t cap);
    /* Ends the image (also after an error, or before its last row). */
    void (*close)(void *state);
    void *state;
};

/* Replaces the picture with a whole image (a key frame): it must be width x height pixels
 * (the frame header's size). JM_DELTA_OK, REJECTED (bad header or size: picture unchanged)
 * or BROKEN (bad image data: picture invalid). */
int jm_picture_load(struct jm_picture *p, const struct jm_image_reader *rd, int format,
                    const uint8_t *data, size_t len, unsigned width, unsigned height,
                    uint32_t seq, char *why, size_t cap);

/* Applies a parsed message to the picture, which must be valid, of the message's size and
 * at base_seq: every image's header is read and every rectangle checked against its size
 * before any pixel changes; then the copies (from a snapshot of their sources) and the
 * images are drawn. On success the picture is at d->seq. */
int jm_delta_apply(struct jm_picture *p, const struct jm_delta *d,
                   const struct jm_image_reader *rd, char *why, size_t cap);

#endif
