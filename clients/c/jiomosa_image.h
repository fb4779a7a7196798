/*
 * jiomosa_image: the JPEG (libjpeg, Debian libjpeg62-turbo) and PNG (libpng) decoders of a
 * delta client, as a row-by-row jm_image_reader (jiomosa_delta.h). Built only with
 * `make DELTA=1`; the plain client needs no image library.
 *
 * Both libraries report errors by calling back; here every error (and every libjpeg warning
 * about corrupt data) ends the image with a reason instead of exiting or going on with a
 * damaged picture. Interlaced PNGs are refused (they cannot be decoded row by row).
 */
#ifndef JIOMOSA_IMAGE_H
#define JIOMOSA_IMAGE_H

#include "jiomosa_delta.h"

/* A reader over a new decoder state; jm_image_reader_free releases it. NULL out of memory. */
struct jm_image_reader *jm_image_reader_new(void);
void jm_image_reader_free(struct jm_image_reader *rd);

#endif
