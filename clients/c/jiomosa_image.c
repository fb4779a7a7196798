/*
 * jiomosa_image: libjpeg and libpng behind the row-by-row jm_image_reader (jiomosa_image.h).
 *
 * Both libraries leave an error by longjmp; each entry point sets its own setjmp, and after
 * an error the decoder is destroyed at once, so close() after a failure is a no-op. Memory:
 * libjpeg decodes a baseline JPEG with a few rows of buffers (a progressive one would need a
 * buffer for the whole image, so it is refused: the streamer sends baseline only); libpng
 * reads a non-interlaced PNG a row at a time.
 */
#define _POSIX_C_SOURCE 200809L
#include "jiomosa_image.h"

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <png.h>

struct codec {
    struct jm_image_reader rd; /* first: the reader's state points back here */
    int format;
    int live;                  /* a decoder is set up (close must destroy it) */
    /* JPEG */
    struct jpeg_decompress_struct jd;
    struct jpeg_error_mgr jerr;
    jmp_buf jmp;
    int started;
    /* PNG */
    png_structp png;
    png_infop info;
    const uint8_t *data;
    size_t len, pos;
    unsigned width;
    char msg[JMSG_LENGTH_MAX];
};

static void report(struct codec *c, const char *what, char *why, size_t cap) {
    if (cap) snprintf(why, cap, "%s: %s", what, c->msg);
}

/* ------------------------------------------------------------------ JPEG */
static void jpeg_fail(j_common_ptr cinfo) {
    struct codec *c = cinfo->client_data;
    cinfo->err->format_message(cinfo, c->msg);
    longjmp(c->jmp, 1);
}

/* libjpeg goes on after "corrupt data" warnings with made-up pixels: not here. */
static void jpeg_warn(j_common_ptr cinfo, int level) {
    if (level < 0) jpeg_fail(cinfo);
}

static void jpeg_end(struct codec *c) {
    jpeg_destroy_decompress(&c->jd);
    c->live = 0;
}

static int jpeg_open(struct codec *c, const uint8_t *data, size_t len, unsigned *w, unsigned *h,
                     char *why, size_t cap) {
    memset(&c->jd, 0, sizeof c->jd);
    c->jd.err = jpeg_std_error(&c->jerr);
    c->jerr.error_exit = jpeg_fail;
    c->jerr.emit_message = jpeg_warn;
    c->jd.client_data = c;
    c->started = 0;
    c->live = 1;
    if (setjmp(c->jmp)) {
        jpeg_end(c);
        report(c, "JPEG", why, cap);
        return -1;
    }
    jpeg_create_decompress(&c->jd);
    jpeg_mem_src(&c->jd, data, (unsigned long)len);
    jpeg_read_header(&c->jd, TRUE);
    if (c->jd.progressive_mode) {
        snprintf(c->msg, sizeof c->msg, "progressive JPEGs are not supported");
        longjmp(c->jmp, 1);
    }
    c->jd.out_color_space = JCS_RGB; /* grey and YCbCr convert; CMYK fails in start */
    jpeg_calc_output_dimensions(&c->jd);
    *w = c->jd.output_width;
    *h = c->jd.output_height;
    return 0;
}

static int jpeg_row(struct codec *c, uint8_t *row, char *why, size_t cap) {
    if (setjmp(c->jmp)) {
        jpeg_end(c);
        report(c, "JPEG", why, cap);
        return -1;
    }
    if (!c->started) {
        jpeg_start_decompress(&c->jd);
        c->started = 1;
        if (c->jd.output_components != 3) {
            snprintf(c->msg, sizeof c->msg, "%d components", c->jd.output_components);
            longjmp(c->jmp, 1);
        }
    }
    JSAMPROW rows[1] = {row};
    if (c->jd.output_scanline >= c->jd.output_height || jpeg_read_scanlines(&c->jd, rows, 1) != 1) {
        snprintf(c->msg, sizeof c->msg, "no more rows");
        longjmp(c->jmp, 1);
    }
    return 0;
}

/* ------------------------------------------------------------------ PNG */
static void png_fail(png_structp png, png_const_charp text) {
    struct codec *c = png_get_error_ptr(png);
    snprintf(c->msg, sizeof c->msg, "%s", text);
    png_longjmp(png, 1);
}

static void png_warn(png_structp png, png_const_charp text) { (void)png; (void)text; }

static void png_from_memory(png_structp png, png_bytep out, size_t n) {
    struct codec *c = png_get_io_ptr(png);
    if (n > c->len - c->pos) png_error(png, "PNG data ends early");
    memcpy(out, c->data + c->pos, n);
    c->pos += n;
}

static void png_end(struct codec *c) {
    png_destroy_read_struct(&c->png, &c->info, NULL);
    c->live = 0;
}

static int png_open(struct codec *c, const uint8_t *data, size_t len, unsigned *w, unsigned *h,
                    char *why, size_t cap) {
    c->data = data;
    c->len = len;
    c->pos = 0;
    c->info = NULL;
    c->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, c, png_fail, png_warn);
    if (c->png) c->info = png_create_info_struct(c->png);
    c->live = 1;
    if (!c->info) {
        png_end(c);
        if (cap) snprintf(why, cap, "PNG: out of memory");
        return -1;
    }
    if (setjmp(png_jmpbuf(c->png))) {
        png_end(c);
        report(c, "PNG", why, cap);
        return -1;
    }
    png_set_read_fn(c->png, c, png_from_memory);
    png_set_user_limits(c->png, 0xFFFF, 0xFFFF);
    png_set_chunk_malloc_max(c->png, 1u << 20);
    png_set_benign_errors(c->png, 0); /* "benign" errors (bad CRCs...) fail the image */
    png_read_info(c->png, c->info);
    if (png_get_interlace_type(c->png, c->info) != PNG_INTERLACE_NONE)
        png_error(c->png, "interlaced PNGs are not supported");
    png_set_expand(c->png);
    png_set_strip_16(c->png);
    png_set_strip_alpha(c->png);
    png_set_gray_to_rgb(c->png);
    png_read_update_info(c->png, c->info);
    c->width = png_get_image_width(c->png, c->info);
    if (png_get_channels(c->png, c->info) != 3 || png_get_bit_depth(c->png, c->info) != 8 ||
        png_get_rowbytes(c->png, c->info) != (size_t)c->width * 3)
        png_error(c->png, "PNG does not decode to 8-bit RGB");
    *w = c->width;
    *h = png_get_image_height(c->png, c->info);
    return 0;
}

static int png_row(struct codec *c, uint8_t *row, char *why, size_t cap) {
    if (setjmp(png_jmpbuf(c->png))) {
        png_end(c);
        report(c, "PNG", why, cap);
        return -1;
    }
    png_read_row(c->png, row, NULL);
    return 0;
}

/* ------------------------------------------------------------------ the reader */
static int codec_open(void *state, int format, const uint8_t *data, size_t len, unsigned *w,
                      unsigned *h, char *why, size_t cap) {
    struct codec *c = state;
    c->format = format;
    if (format == JM_IMG_JPEG) return jpeg_open(c, data, len, w, h, why, cap);
    if (format == JM_IMG_PNG) return png_open(c, data, len, w, h, why, cap);
    if (cap) snprintf(why, cap, "image format %d is not one this client decodes", format);
    return -1;
}

static int codec_row(void *state, uint8_t *row, char *why, size_t cap) {
    struct codec *c = state;
    if (!c->live) {
        if (cap) snprintf(why, cap, "no image open");
        return -1;
    }
    return c->format == JM_IMG_JPEG ? jpeg_row(c, row, why, cap) : png_row(c, row, why, cap);
}

static void codec_close(void *state) {
    struct codec *c = state;
    if (!c->live) return;
    if (c->format == JM_IMG_JPEG) jpeg_end(c);
    else png_end(c);
}

struct jm_image_reader *jm_image_reader_new(void) {
    struct codec *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->rd.open = codec_open;
    c->rd.read_row = codec_row;
    c->rd.close = codec_close;
    c->rd.state = c;
    return &c->rd;
}

void jm_image_reader_free(struct jm_image_reader *rd) {
    if (!rd) return;
    codec_close(rd->state);
    free(rd->state);
}
