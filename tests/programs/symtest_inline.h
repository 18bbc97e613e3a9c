/* Inline helpers in a header: their frames have this file, their callers'
 * DW_AT_call_file the .c file. */
static inline unsigned mix(unsigned x)
{
    x ^= x >> 13;
    x *= 0x5bd1e995u;
    return x ^ (x >> 15);
}

static inline unsigned mix_twice(unsigned x, unsigned y)
{
    return mix(x) + mix(y ^ x);
}
