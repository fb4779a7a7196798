/*
 * jiomosa_delta: the JMD parser and the picture a delta client keeps (jiomosa_delta.h).
 *
 * The rules of jiomosa_proto.c hold here too: a count or length from the wire is compared
 * with what is left of the message before it is used; coordinates are u16 and summed in
 * unsigned/long (never wrapping), areas in uint64_t, and a byte size is only formed from an
 * area already bounded by JM_PICTURE_MAX_PIXELS, so nothing wraps with a 32-bit size_t.
 */
#define _POSIX_C_SOURCE 200809L
#include "jiomosa_delta.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ENTRY 12 /* bytes of one copy or rectangle: six 16-bit fields */

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static int say(char *why, size_t cap, const char *fmt, ...) {
    if (cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, cap, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static unsigned be16(const uint8_t *p) { return (unsigned)p[0] << 8 | p[1]; }
static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

void jm_picture_free(struct jm_picture *p) {
    free(p->rgb);
    free(p->scratch);
    free(p->row);
    free(p->order);
    memset(p, 0, sizeof *p);
}

/* Grow *buf to hold `need` bytes or entries (bounded by the caller). 0, or -1 out of memory. */
static int grow_bytes(uint8_t **buf, size_t *cap, size_t need) {
    if (*buf && need <= *cap) return 0;
    uint8_t *q = realloc(*buf, need ? need : 1);
    if (!q) return -1;
    *buf = q;
    *cap = need;
    return 0;
}

static int grow_order(uint32_t **buf, size_t *cap, size_t need) {
    if (*buf && need <= *cap) return 0;
    uint32_t *q = realloc(*buf, (need ? need : 1) * sizeof *q); /* need < 65536 */
    if (!q) return -1;
    *buf = q;
    *cap = need;
    return 0;
}

/* ------------------------------------------------------------------ parsing */
void jm_delta_copy_at(const struct jm_delta *d, unsigned i, struct jm_delta_copy *c) {
    const uint8_t *e = d->copies + (size_t)i * ENTRY;
    c->sx = be16(e);
    c->sy = be16(e + 2);
    c->w = be16(e + 4);
    c->h = be16(e + 6);
    c->dx = (int)(int16_t)be16(e + 8); /* i16: two's complement on every target we build for */
    c->dy = (int)(int16_t)be16(e + 10);
}

void jm_delta_rect_at(const struct jm_delta_image *img, unsigned i, struct jm_delta_rect *r) {
    const uint8_t *e = img->rects + (size_t)i * ENTRY;
    r->x = be16(e);
    r->y = be16(e + 2);
    r->w = be16(e + 4);
    r->h = be16(e + 6);
    r->ax = be16(e + 8);
    r->ay = be16(e + 10);
}

void jm_delta_image_at(const uint8_t **pos, struct jm_delta_image *img) {
    const uint8_t *p = *pos;
    img->format = p[0];
    img->n_rects = be16(p + 1);
    img->rects = p + 3;
    p += 3 + (size_t)img->n_rects * ENTRY;
    img->len = be32(p);
    img->data = p + 4;
    img->next = img->data + img->len;
    *pos = img->next;
}

int jm_delta_parse(const uint8_t *p, size_t len, struct jm_delta *d, char *why, size_t cap) {
    if (len < JM_DELTA_HEADER || memcmp(p, JM_DELTA_MAGIC, 3) != 0)
        return say(why, cap, "not a JMD message (%zu bytes)", len);
    if (p[3] != 1) return say(why, cap, "JMD version %u", p[3]);
    size_t hlen = be16(p + 4); /* later versions may append fields: skip what we do not know */
    if (hlen < JM_DELTA_HEADER || hlen > len)
        return say(why, cap, "JMD header length %zu in a message of %zu bytes", hlen, len);
    d->flags = be16(p + 6);
    d->seq = be32(p + 8);
    d->base_seq = be32(p + 12);
    d->width = be16(p + 16);
    d->height = be16(p + 18);
    d->ts_ms = (uint64_t)be32(p + 20) << 32 | be32(p + 24);
    unsigned W = d->width, H = d->height;
    uint64_t area = (uint64_t)W * H;
    if (!W || !H || area > JM_PICTURE_MAX_PIXELS)
        return say(why, cap, "JMD picture of %ux%u pixels", W, H);
    const uint8_t *pos = p + hlen, *end = p + len;
    d->end = end;
    if ((size_t)(end - pos) < 2) return say(why, cap, "JMD ends before its copy count");
    d->n_copies = be16(pos);
    pos += 2;
    if (d->n_copies > (size_t)(end - pos) / ENTRY)
        return say(why, cap, "JMD: %u copies do not fit in the message", d->n_copies);
    d->copies = pos;
    pos += (size_t)d->n_copies * ENTRY;
    d->copied_pixels = 0;
    for (unsigned i = 0; i < d->n_copies; i++) {
        struct jm_delta_copy c;
        jm_delta_copy_at(d, i, &c);
        long tx = (long)c.sx + c.dx, ty = (long)c.sy + c.dy;
        if (c.sx + c.w > W || c.sy + c.h > H || tx < 0 || ty < 0 || tx + (long)c.w > (long)W ||
            ty + (long)c.h > (long)H)
            return say(why, cap, "JMD copy %u (%u,%u %ux%u by %d,%d) leaves the %ux%u picture",
                       i, c.sx, c.sy, c.w, c.h, c.dx, c.dy, W, H);
        d->copied_pixels += (uint64_t)c.w * c.h;
    }
    if (d->copied_pixels > area) /* destinations never overlap: at most one picture */
        return say(why, cap, "JMD copies cover %llu pixels of a %ux%u picture",
                   (unsigned long long)d->copied_pixels, W, H);
    if ((size_t)(end - pos) < 2) return say(why, cap, "JMD ends before its image count");
    d->n_images = be16(pos);
    pos += 2;
    d->images = pos;
    d->drawn_pixels = 0;
    for (unsigned i = 0; i < d->n_images; i++) {
        if ((size_t)(end - pos) < 3) return say(why, cap, "JMD ends inside image %u", i);
        unsigned format = pos[0], n_rects = be16(pos + 1);
        if (format < JM_IMG_JPEG || format > JM_IMG_WEBP)
            return say(why, cap, "JMD image %u has format %u", i, format);
        pos += 3;
        if (n_rects > (size_t)(end - pos) / ENTRY)
            return say(why, cap, "JMD image %u: %u rectangles do not fit", i, n_rects);
        struct jm_delta_image img = {(int)format, n_rects, pos, NULL, 0, NULL};
        pos += (size_t)n_rects * ENTRY;
        for (unsigned k = 0; k < n_rects; k++) {
            struct jm_delta_rect r;
            jm_delta_rect_at(&img, k, &r);
            if (r.x + r.w > W || r.y + r.h > H)
                return say(why, cap, "JMD image %u rectangle %u (%u,%u %ux%u) leaves the %ux%u "
                           "picture", i, k, r.x, r.y, r.w, r.h, W, H);
            d->drawn_pixels += (uint64_t)r.w * r.h;
        }
        if ((size_t)(end - pos) < 4) return say(why, cap, "JMD ends before image %u's length", i);
        uint32_t ilen = be32(pos);
        pos += 4;
        if (ilen > (size_t)(end - pos))
            return say(why, cap, "JMD image %u of %lu bytes, %zu left in the message", i,
                       (unsigned long)ilen, (size_t)(end - pos));
        pos += ilen;
    }
    if (d->drawn_pixels > area)
        return say(why, cap, "JMD images cover %llu pixels of a %ux%u picture",
                   (unsigned long long)d->drawn_pixels, W, H);
    if (pos != end)
        return say(why, cap, "JMD has %zu bytes after its last image", (size_t)(end - pos));
    return 0;
}

/* ------------------------------------------------------------------ applying */
/* Opens an image and checks its size; the reader is open only if this returns 0. */
static int open_image(const struct jm_image_reader *rd, const struct jm_delta_image *img,
                      unsigned *iw, unsigned *ih, char *why, size_t cap) {
    if (rd->open(rd->state, img->format, img->data, img->len, iw, ih, why, cap) != 0) return -1;
    if (!*iw || !*ih || *iw > 0xFFFFu || *ih > 0xFFFFu ||
        (uint64_t)*iw * *ih > JM_PICTURE_MAX_PIXELS) {
        rd->close(rd->state);
        return say(why, cap, "an image of %ux%u pixels", *iw, *ih);
    }
    return 0;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Draws one image's rectangles, decoding its rows one by one up to the last one needed. The
 * rectangles were checked against the image by the caller. The rectangles that cover the
 * current row are kept together in order[first, started): each is visited once per row it
 * covers, so the work is bounded by the area drawn, whatever the rectangles are. */
static int draw_image(struct jm_picture *p, const struct jm_image_reader *rd,
                      const struct jm_delta_image *img, char *why, size_t cap) {
    unsigned iw, ih, n = 0, last_row = 0, last_col = 0;
    for (unsigned k = 0; k < img->n_rects; k++) {
        struct jm_delta_rect r;
        jm_delta_rect_at(img, k, &r);
        if (r.w && r.h) {
            p->order[n++] = (uint32_t)r.ay << 16 | k; /* k < 65536 */
            if (r.ay + r.h > last_row) last_row = r.ay + r.h;
            if (r.ax + r.w > last_col) last_col = r.ax + r.w;
        }
    }
    if (!n) return 0; /* nothing to draw: no need to decode it */
    qsort(p->order, n, sizeof *p->order, cmp_u32);
    if (open_image(rd, img, &iw, &ih, why, cap) != 0) return -1;
    if (last_row > ih || last_col > iw || grow_bytes(&p->row, &p->row_cap, (size_t)iw * 3) != 0) {
        rd->close(rd->state); /* the same bytes decoded twice gave another size */
        return say(why, cap, "image changed size or out of memory");
    }
    unsigned first = 0, started = 0;
    for (unsigned y = 0; y < last_row; y++) {
        if (rd->read_row(rd->state, p->row, why, cap) != 0) {
            rd->close(rd->state);
            return -1;
        }
        while (started < n && (p->order[started] >> 16) <= y) started++;
        for (unsigned i = first; i < started; i++) {
            struct jm_delta_rect r;
            jm_delta_rect_at(img, p->order[i] & 0xFFFFu, &r);
            if (r.ay + r.h <= y) { /* finished: out of the active range */
                uint32_t t = p->order[first];
                p->order[first++] = p->order[i];
                p->order[i] = t;
                continue;
            }
            size_t dst = ((size_t)(r.y + (y - r.ay)) * p->width + r.x) * 3;
            memcpy(p->rgb + dst, p->row + (size_t)r.ax * 3, (size_t)r.w * 3);
        }
    }
    rd->close(rd->state);
    return 0;
}

int jm_delta_apply(struct jm_picture *p, const struct jm_delta *d,
                   const struct jm_image_reader *rd, char *why, size_t cap) {
    if (!p->valid) return say(why, cap, "no picture to apply JMD %lu to", (unsigned long)d->seq);
    if (d->base_seq != p->seq)
        return say(why, cap, "JMD %lu is based on %lu, the picture is %lu",
                   (unsigned long)d->seq, (unsigned long)d->base_seq, (unsigned long)p->seq);
    if (d->width != p->width || d->height != p->height)
        return say(why, cap, "JMD of %ux%u for a picture of %ux%u", d->width, d->height,
                   p->width, p->height);
    /* Everything that can be checked is checked before the first pixel changes. */
    unsigned most_rects = 0;
    const uint8_t *pos = d->images;
    for (unsigned i = 0; i < d->n_images; i++) {
        struct jm_delta_image img;
        jm_delta_image_at(&pos, &img);
        if (img.n_rects > most_rects) most_rects = img.n_rects;
        unsigned iw, ih, drawn = 0;
        for (unsigned k = 0; k < img.n_rects; k++) {
            struct jm_delta_rect r;
            jm_delta_rect_at(&img, k, &r);
            drawn |= r.w && r.h;
        }
        if (!drawn) continue;
        if (open_image(rd, &img, &iw, &ih, why, cap) != 0) return JM_DELTA_REJECTED;
        rd->close(rd->state);
        for (unsigned k = 0; k < img.n_rects; k++) {
            struct jm_delta_rect r;
            jm_delta_rect_at(&img, k, &r);
            if (r.ax + r.w > iw || r.ay + r.h > ih) {
                say(why, cap, "JMD image %u rectangle %u (%u,%u %ux%u) leaves the %ux%u image",
                    i, k, r.ax, r.ay, r.w, r.h, iw, ih);
                return JM_DELTA_REJECTED;
            }
        }
    }
    /* copied_pixels <= width * height <= JM_PICTURE_MAX_PIXELS (jm_delta_parse). */
    if (grow_bytes(&p->scratch, &p->scratch_cap, (size_t)d->copied_pixels * 3) != 0 ||
        grow_order(&p->order, &p->order_cap, most_rects) != 0) {
        say(why, cap, "out of memory for JMD %lu", (unsigned long)d->seq);
        return JM_DELTA_REJECTED;
    }
    /* Copies read the picture as it was before this message: all sources first. */
    size_t off = 0, stride = (size_t)p->width * 3;
    for (int pass = 0; pass < 2; pass++) {
        off = 0;
        for (unsigned i = 0; i < d->n_copies; i++) {
            struct jm_delta_copy c;
            jm_delta_copy_at(d, i, &c);
            size_t row = (size_t)c.w * 3;
            for (unsigned y = 0; y < c.h; y++) {
                uint8_t *src = p->rgb + (size_t)(c.sy + y) * stride + (size_t)c.sx * 3;
                uint8_t *dst = p->rgb + (size_t)((long)(c.sy + y) + c.dy) * stride +
                               (size_t)((long)c.sx + c.dx) * 3;
                if (pass == 0) memcpy(p->scratch + off, src, row);
                else memcpy(dst, p->scratch + off, row);
                off += row;
            }
        }
    }
    pos = d->images;
    for (unsigned i = 0; i < d->n_images; i++) {
        struct jm_delta_image img;
        jm_delta_image_at(&pos, &img);
        if (draw_image(p, rd, &img, why, cap) != 0) {
            p->valid = 0;
            return JM_DELTA_BROKEN;
        }
    }
    p->seq = d->seq;
    return JM_DELTA_OK;
}

int jm_picture_load(struct jm_picture *p, const struct jm_image_reader *rd, int format,
                    const uint8_t *data, size_t len, unsigned width, unsigned height,
                    uint32_t seq, char *why, size_t cap) {
    struct jm_delta_image img = {format, 0, NULL, data, len, NULL};
    unsigned iw, ih;
    if (open_image(rd, &img, &iw, &ih, why, cap) != 0) return JM_DELTA_REJECTED;
    if (iw != width || ih != height) {
        rd->close(rd->state);
        say(why, cap, "key frame of %ux%u pixels says it is %ux%u", iw, ih, width, height);
        return JM_DELTA_REJECTED;
    }
    if (grow_bytes(&p->rgb, &p->rgb_cap, (size_t)iw * ih * 3) != 0) {
        rd->close(rd->state);
        say(why, cap, "out of memory for a %ux%u picture", iw, ih);
        return JM_DELTA_REJECTED;
    }
    p->valid = 0; /* from here on the old picture is gone */
    p->width = iw;
    p->height = ih;
    for (unsigned y = 0; y < ih; y++) {
        if (rd->read_row(rd->state, p->rgb + (size_t)y * iw * 3, why, cap) != 0) {
            rd->close(rd->state);
            return JM_DELTA_BROKEN;
        }
    }
    rd->close(rd->state);
    p->seq = seq;
    p->valid = 1;
    return JM_DELTA_OK;
}
