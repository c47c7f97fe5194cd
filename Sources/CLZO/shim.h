#include <stddef.h>
#include <lzo/lzo1x.h>

/* lzo_init() is a macro with arguments, which Swift cannot call: wrap it. */
static inline int warden_lzo_init(void) { return lzo_init(); }

/* LZO1X decompression with bounds checks on input and output (liblzo2's _safe variant).
   Returns LZO_E_OK (0) or a negative LZO_E_* code; *out_len holds the bytes written. */
static inline int warden_lzo1x_decompress_safe(const unsigned char *in, size_t in_len,
                                               unsigned char *out, size_t *out_len) {
    lzo_uint n = (lzo_uint)*out_len;
    int r = lzo1x_decompress_safe(in, (lzo_uint)in_len, out, &n, NULL);
    *out_len = (size_t)n;
    return r;
}
